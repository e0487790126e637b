"""The synthesis summary as terminal tables: rows kept and eliminated, and what each role spent."""

from __future__ import annotations

from rich.table import Table


def summary_tables(summary: dict) -> list[Table]:
    """Rows kept and eliminated (by reason), and what each role spent in this process (new vs from the ledger; the
    dollars are the new calls', a call the ledger answered costs nothing)."""
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
    columns = ("role", "purpose", "new", "cached", "prompt tok", "completion tok", "errors", "calls / kept row", "USD")
    for name in columns:
        calls.add_column(name, justify="left" if name in ("role", "purpose") else "right")
    kept = max(summary["rows"], 1)
    for entry in summary["calls"]:
        total = entry["new"] + entry["cached"]
        calls.add_row(
            entry["role"],
            entry["purpose"],
            str(entry["new"]),
            str(entry["cached"]),
            f"{entry['prompt_tokens']:,}",
            f"{entry['completion_tokens']:,}",
            str(entry["errors"]),
            f"{total / kept:.2f}",
            "unpriced" if entry.get("usd") is None else f"${entry['usd']:,.4f}",
        )
    return [rows, calls]
