"""The per-role ledger table (calls, tokens, latency, errors, dollars) in the terminal, and ``teams-rl ledger``.

A run folder's calls are in ``ledger.sqlite`` and, for a Ray run, in one ledger per shard
(``shards/*/ledger.sqlite``); the table sums them all."""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from rich.console import Console
from rich.table import Table

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.layout import LEDGER_FILE, SHARDS_DIR, ledger_path
from teams_rl.llm.ledger import ROLES, Ledger, RoleTotals
from teams_rl.llm.prices import Price, load_price_table


def ledger_files(run_dir: str | Path) -> list[Path]:
    """The run folder's ledger and its shards' ledgers (a Ray run keeps one per shard), those that exist."""
    run_dir = Path(run_dir)
    found = [ledger_path(run_dir)] if ledger_path(run_dir).is_file() else []
    return found + sorted(run_dir.glob(f"{SHARDS_DIR}/*/{LEDGER_FILE}"))


def run_totals(
    run_dir: str | Path, prices: Mapping[str, Price] | None = None
) -> tuple[dict[str, RoleTotals], dict[str, int]]:
    """Each role's spend over every ledger of the run folder, and the calls per model that no price covers.

    Dollars are those recorded with each call (the role's price when it was made, the Batch discount applied);
    with ``prices`` (a price table by model) every model the table names is priced by the table instead."""
    totals, unpriced, _ = _read(run_dir, prices)
    return totals, unpriced


def _read(
    run_dir: str | Path, prices: Mapping[str, Price] | None
) -> tuple[dict[str, RoleTotals], dict[str, int], Counter]:
    """``run_totals`` plus the Batch jobs by status, opening each ledger once."""
    totals: dict[str, RoleTotals] = {}
    unpriced: Counter = Counter()
    jobs: Counter = Counter()
    for path in ledger_files(run_dir):
        ledger = Ledger(path)
        try:
            for role, t in ledger.totals().items():
                into = totals.setdefault(role, RoleTotals())
                into.calls += t.calls
                into.prompt_tokens += t.prompt_tokens
                into.completion_tokens += t.completion_tokens
                into.latency_s += t.latency_s
                into.errors += t.errors
            for group in ledger.spend_by_model():
                into = totals[group["role"]]
                price = (prices or {}).get(group["model"])
                if price is not None:
                    into.usd += price.cost(group["prompt_tokens"], group["completion_tokens"], group["batch"])
                else:
                    into.usd += group["usd"]
                    into.unpriced_calls += group["unpriced_calls"]
                    if group["unpriced_calls"]:
                        unpriced[group["model"]] += group["unpriced_calls"]
            jobs.update(job["status"] for job in ledger.batch_jobs())
        finally:
            ledger.close()
    return totals, dict(unpriced), jobs


def ledger_table(totals: Mapping[str, RoleTotals], title: str = "LLM calls per role (ledger)") -> Table:
    table = Table(title=title)
    for name in ("role", "calls", "prompt tokens", "completion tokens", "mean latency s", "errors", "USD"):
        table.add_column(name, justify="left" if name == "role" else "right")
    roles = [r for r in ROLES if r in totals] + sorted(r for r in totals if r not in ROLES)
    for role in roles:
        t = totals[role]
        mean = t.latency_s / t.calls if t.calls else 0.0
        table.add_row(
            role,
            f"{t.calls:,}",
            f"{t.prompt_tokens:,}",
            f"{t.completion_tokens:,}",
            f"{mean:.3f}",
            f"{t.errors:,}",
            dollars(t.usd, t.calls, t.unpriced_calls),
        )
    if len(roles) > 1:
        calls, unpriced = sum(t.calls for t in totals.values()), sum(t.unpriced_calls for t in totals.values())
        table.add_row(
            "total",
            f"{calls:,}",
            f"{sum(t.prompt_tokens for t in totals.values()):,}",
            f"{sum(t.completion_tokens for t in totals.values()):,}",
            "",
            f"{sum(t.errors for t in totals.values()):,}",
            dollars(sum(t.usd for t in totals.values()), calls, unpriced),
        )
    return table


def dollars(usd: float, calls: int, unpriced: int) -> str:
    """``$0.0123``; ``unpriced`` when no call had a price; a partial sum says how many calls it leaves out."""
    if calls == 0:
        return "-"
    if unpriced >= calls:
        return "unpriced"
    amount = f"${usd:,.2f}" if usd >= 100 else f"${usd:,.4f}"
    return amount if unpriced == 0 else f"{amount} + {unpriced:,} unpriced calls"


def print_ledger(
    run_dir: str | Path, console: Console | None = None, prices: Mapping[str, Price] | None = None
) -> None:
    if not ledger_files(run_dir):
        raise TeamsRLError(
            f"no {LEDGER_FILE} here (nor under {SHARDS_DIR}/*/): is this a run folder?", file=str(run_dir)
        )
    console = console or Console()
    totals, unpriced, jobs = _read(run_dir, prices)
    console.print(ledger_table(totals))
    if unpriced:
        models = ", ".join(f"{m} ({n:,} calls)" for m, n in sorted(unpriced.items()))
        console.print(
            f"No price for {models}: set <role>_usd_per_mtok_in/out in the recipe, or pass --prices with these ids."
        )
    if jobs:
        console.print(f"Batch jobs: {sum(jobs.values())} ({', '.join(f'{n} {s}' for s, n in sorted(jobs.items()))})")


def has_ledger(run_dir: str | Path) -> bool:
    return bool(ledger_files(run_dir))


def ledger_markdown(run_dir: str | Path) -> str:
    """The ledger table of the run folder ``run_dir`` (its shards' ledgers included) as GitHub Markdown."""
    from teams_rl.core.markdown import markdown_table

    return markdown_table(ledger_table(run_totals(run_dir)[0]))


def cli(argv: list[str]) -> None:
    """``teams-rl ledger RUN_DIR [--prices FILE]``."""
    parser = argparse.ArgumentParser(
        prog="teams-rl ledger",
        description="Print the LLM calls, tokens, latency and dollars per role recorded in a run folder (its "
        "shards' ledgers included).",
    )
    parser.add_argument("run_dir", help=f"A run folder holding {LEDGER_FILE} (or {SHARDS_DIR}/*/{LEDGER_FILE}).")
    parser.add_argument(
        "--prices",
        metavar="FILE",
        help="A price table (YAML: model id -> input, output in USD per million tokens, batch_discount) that "
        "prices the models it names, e.g. a run made before its recipe had prices. Model ids as the ledger "
        "records them (the note under the table lists those without a price).",
    )
    args = parser.parse_args(argv)
    print_ledger(args.run_dir, prices=load_price_table(args.prices) if args.prices else None)
