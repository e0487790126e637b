"""Terminal tables: the synthesis summary and the per-role ledger table (rich)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from teams_rl.errors import TeamsRLError
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
        table.add_row(role, f"{t.calls:,}", f"{t.prompt_tokens:,}", f"{t.completion_tokens:,}", f"{mean:.3f}",
                      f"{t.errors:,}")
    return table


def print_ledger(run_dir: str | Path, console: Console | None = None) -> None:
    path = Path(run_dir) / "ledger.sqlite"
    if not path.exists():
        raise TeamsRLError("no ledger.sqlite here: is this a run folder?", file=str(run_dir))
    ledger = Ledger(path)
    try:
        (console or Console()).print(ledger_table(ledger))
    finally:
        ledger.close()


def summary_tables(summary: dict) -> list[Table]:
    """Rows kept and eliminated (by reason), and what each role spent in this process (new vs from the ledger)."""
    rows = Table(title=f"Synthesis: {summary['dataset']}")
    rows.add_column("", justify="left")
    rows.add_column("count", justify="right")
    rows.add_row("seeds processed", f"{summary['seeds_done']} / {summary['seeds_total']}")
    rows.add_row("rewrites tried", str(summary["steps"]))
    rows.add_row("[bold]rows kept[/bold]", f"[bold]{summary['rows']}[/bold]")
    for reason, n in sorted(summary["eliminated"].items(), key=lambda kv: -kv[1]):
        rows.add_row(f"  eliminated: {reason}", str(n))
    rows.add_row("wall time", f"{summary['wall_s']:.1f} s")
    if summary.get("stopped"):
        rows.add_row("[yellow]stopped early[/yellow]", f"[yellow]{summary['stopped']}[/yellow]")

    calls = Table(title="LLM calls this run (new = paid now, cached = answered by the ledger)")
    for name in ("role", "purpose", "new", "cached", "prompt tok", "completion tok", "errors", "calls / kept row"):
        calls.add_column(name, justify="left" if name in ("role", "purpose") else "right")
    kept = max(summary["rows"], 1)
    for entry in summary["calls"]:
        total = entry["new"] + entry["cached"]
        calls.add_row(entry["role"], entry["purpose"], str(entry["new"]), str(entry["cached"]),
                      f"{entry['prompt_tokens']:,}", f"{entry['completion_tokens']:,}", str(entry["errors"]),
                      f"{total / kept:.2f}")
    return [rows, calls]


def policy_table(meta: dict) -> Table:
    """A trained policy at a glance: how it trained and, where probed, P(action) before and after."""
    title = f"Policy: {meta.get('algorithm', meta.get('kind'))}"
    facts = {k: meta[k] for k in ("steps", "episodes", "stopped") if meta.get(k) is not None}
    rewards = meta.get("reward_per_update")
    if rewards:
        facts.update(updates=len(rewards), reward=f"{rewards[0]:.3f} -> {rewards[-1]:.3f}")
    if facts:
        title += " (" + ", ".join(f"{k} {v}" for k, v in facts.items()) + ")"
    table = Table(title=title)
    table.add_column("action")
    before, after = meta.get("probe_before") or {}, meta.get("probe_after") or {}
    if before and after:
        table.add_column("P before", justify="right")
        table.add_column("P after", justify="right")
    for name in meta.get("actions", []):
        cells = [f"{before[name]:.3f}", f"{after[name]:.3f}"] if name in before and name in after else []
        table.add_row(name, *cells)
    return table
