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
    if "spread" in before and "spread" in after:  # does it read the instruction? 0 = one answer for every state
        table.add_row("spread (mean KL to the mean)", f"{before['spread']:.3f}", f"{after['spread']:.3f}")
    return table


GAIN_LABELS = {
    "best_single": "best single action",
    "best_per_category": "best action per category",
    "oracle": "per-state oracle (in sample: optimistic)",
    "oracle_cross_fit": "per-state oracle (chosen on other samples)",
    "keep_all": "keep every rewrite",
}


def headroom_tables(summary: dict) -> list[Table]:
    """The explore summary: keep rate and reward per action, then what each policy class would gain."""
    actions = Table(title=f"Headroom: {summary['states']} states x {len(summary['per_action'])} actions")
    for column in ("action", "keep rate", "mean reward", "rewrites"):
        actions.add_column(column, justify="left" if column == "action" else "right")
    for name, v in summary["per_action"].items():
        actions.add_row(name, f"{v['keep_rate']:.3f}", f"{v['mean_reward']:.3f}", str(v["rewrites"]))
    actions.add_row(
        "uniform random", f"{summary['uniform_keep_rate']:.3f}", f"{summary['uniform_expected_reward']:.3f}"
    )
    gains = Table(
        title="Rows per expert call vs uniform random (chosen on the other folds, scored on each seed's own)"
    )
    for column in ("policy", "keep rate", "rows ratio"):
        gains.add_column(column, justify="left" if column == "policy" else "right")
    gains.add_row("uniform random", f"{summary['keep_rates']['uniform']:.3f}", "1.000")
    for key, ratio in summary["rows_ratio"].items():
        gains.add_row(GAIN_LABELS.get(key, key), f"{summary['keep_rates'][key]:.3f}", f"{ratio:.3f}")
    return [actions, gains]
