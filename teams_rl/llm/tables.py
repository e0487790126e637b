"""The per-role ledger table (calls, tokens, latency, errors) in the terminal, and ``teams-rl ledger``."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.layout import LEDGER_FILE, ledger_path
from teams_rl.llm.ledger import ROLES, Ledger


def ledger_table(ledger: Ledger, title: str = "LLM calls per role (ledger)") -> Table:
    totals = ledger.totals()
    table = Table(title=title)
    for name in ("role", "calls", "prompt tokens", "completion tokens", "mean latency s", "errors"):
        table.add_column(name, justify="left" if name == "role" else "right")
    roles = [r for r in ROLES if r in totals] + sorted(r for r in totals if r not in ROLES)
    for role in roles:
        t = totals[role]
        mean = t.latency_s / t.calls if t.calls else 0.0
        table.add_row(
            role, f"{t.calls:,}", f"{t.prompt_tokens:,}", f"{t.completion_tokens:,}", f"{mean:.3f}", f"{t.errors:,}"
        )
    return table


def print_ledger(run_dir: str | Path, console: Console | None = None) -> None:
    path = ledger_path(run_dir)
    if not path.exists():
        raise TeamsRLError("no ledger.sqlite here: is this a run folder?", file=str(run_dir))
    ledger = Ledger(path)
    try:
        (console or Console()).print(ledger_table(ledger))
    finally:
        ledger.close()


def ledger_markdown(path: str | Path) -> str:
    """The ledger table of ``path`` as GitHub Markdown, for cards and reports."""
    from teams_rl.core.markdown import markdown_table

    ledger = Ledger(path)
    try:
        return markdown_table(ledger_table(ledger))
    finally:
        ledger.close()


def cli(argv: list[str]) -> None:
    """``teams-rl ledger RUN_DIR``."""
    parser = argparse.ArgumentParser(
        prog="teams-rl ledger",
        description="Print the LLM calls, tokens and latency per role recorded in a run folder.",
    )
    parser.add_argument("run_dir", help=f"A run folder holding {LEDGER_FILE}.")
    print_ledger(parser.parse_args(argv).run_dir)
