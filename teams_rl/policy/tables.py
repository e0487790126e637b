"""A trained policy at a glance, as a terminal table (cards and reports turn it into Markdown)."""

from __future__ import annotations

from rich.table import Table


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
