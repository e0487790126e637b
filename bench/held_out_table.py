"""The bench's held-out explore-table comparison: each policy's exact expected rows per expert call on the held-out
seeds' explore cells (depth-0 rows of ``explore/table.jsonl``), paired over seeds, no LLM call.

A policy is named by a ref: ``random``, ``action:NAME`` (always that action), ``category:`` (for each state, the
action with the best keep rate on the training seeds of its category: ``best_per_category``), a trained policy
folder (its actions drawn from P(action | state), as ``--policy_sample true`` acts) or ``argmax:FOLDER`` (its most
likely action on each state, as ``teams-rl synthesize`` acts by default).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Set
from pathlib import Path

from teams_rl.core.files import read_jsonl
from teams_rl.env.environment import State
from teams_rl.evaluate.intervals import Interval, paired_bootstrap_rate_ratio
from teams_rl.policy.headroom import best_action, best_by_category

PER_CATEGORY = "category:"
ARGMAX = "argmax:"


@functools.cache
def depth0_table(explore: Path) -> tuple[dict, ...]:
    return tuple(r for r in read_jsonl(explore / "table.jsonl") if r["depth"] == 0)


@functools.cache
def policy_of(ref: str):
    """Each trained policy is loaded once, for the spread and for the explore-table expectation."""
    from teams_rl.env.build import select_actions
    from teams_rl.policy import load_policy

    return load_policy(ref, select_actions(None))


def best_single(explore: Path, held_out: Set[str]) -> str:
    """The action with the best keep rate on the explore table's seeds outside the held-out fold."""
    return best_action(r for r in depth0_table(explore) if r["seed_id"] not in held_out)


def best_per_category(explore: Path, held_out: Set[str]) -> dict[str, str]:
    """state -> the action with the best keep rate on the training seeds (outside the held-out fold) of the state's
    category, or on all training seeds (``best_single``) when no training seed has that category: the choice
    ``teams_rl.policy.headroom`` scores as the best action per category."""
    rows = depth0_table(explore)
    single, chosen = best_by_category(r for r in rows if r["seed_id"] not in held_out)
    return {r["state"]: chosen.get(r.get("category", ""), single) for r in rows}


def probs_on(
    ref: str, states: list[str], names: list[str], *, explore: Path | None = None, held: Set[str] = frozenset()
) -> dict[str, dict[str, float]]:
    """P(action | state) of a policy on explore-table depth-0 states (``seed_id/0``); the ``category:`` ref also
    needs the explore folder and the held-out seeds (it chooses on the others)."""
    from teams_rl.env.seeds import BUILTIN, load_seeds

    if ref == "random":
        return {s: dict.fromkeys(names, 1 / len(names)) for s in states}
    if ref.startswith("action:"):
        return {s: {a: float(a == ref[7:]) for a in names} for s in states}
    if ref == PER_CATEGORY:
        if explore is None:
            raise ValueError(f"the {PER_CATEGORY!r} ref needs the explore folder")
        chosen = best_per_category(explore, held)
        return {s: {a: float(a == chosen[s]) for a in names} for s in states}
    if ref.startswith(ARGMAX):
        drawn = probs_on(ref[len(ARGMAX) :], states, names)
        # the first most likely action in the policy's menu order, as the instructor's argmax takes it
        return {s: {a: float(a == max(p, key=p.__getitem__)) for a in names} for s, p in drawn.items()}
    seeds = {s.id: s for s in load_seeds(BUILTIN)}
    policy = policy_of(ref)
    probs = policy.probabilities([State.from_seed(seeds[s.split("/")[0]]) for s in states])
    return {s: dict(zip(policy.format.names, map(float, p), strict=True)) for s, p in zip(states, probs, strict=True)}


def _rows_ratio(keep: Mapping[str, float], base: Mapping[str, float]) -> Interval:
    """Rows per expert call of ``keep`` over ``base`` (per-state expected keeps), paired over states: each state
    costs a rewrite, plus an answer if kept."""
    calls, base_calls = ({s: 1 + v for s, v in d.items()} for d in (keep, base))
    return paired_bootstrap_rate_ratio(keep, calls, base, base_calls)


def on_held_out_table(refs: dict[str, str], explore: Path, actions, held: Set[str]) -> dict | None:
    """Each policy's rows per expert call on the held-out seeds' explore cells (every action x k samples), as an
    exact expectation over its P(action | state), with a paired bootstrap interval of the ratio to random (the
    seed as the unit) and, when ``refs`` holds ``best_single``, of the ratio to it. All policies are scored on the
    same rewrites, so only their choices differ: a far tighter interval than sampled synthesis runs give, for one
    rewrite step. None when the table holds no held-out seed."""
    from teams_rl.policy.headroom import per_state_keep

    names = [a.name for a in actions]
    rows = [r for r in depth0_table(explore) if r["seed_id"] in held]
    cells = {(r["state"], r["action"]) for r in rows}
    states = sorted({s for s, _ in cells if all((s, a) in cells for a in names)})
    if not states:
        return None
    rows = [r for r in rows if r["state"] in states]
    keep = {
        name: per_state_keep(rows, probs_on(ref, states, names, explore=explore, held=held))
        for name, ref in refs.items()
    }
    out = {}
    for name, k in keep.items():
        ratio = _rows_ratio(k, keep["random"])
        p = sum(k.values()) / len(k)
        out[name] = {
            "keep_rate": p,
            "rows_per_call": p / (1 + p),
            "rows_ratio": ratio.estimate,
            "rows_ratio_ci_lo": ratio.lo,
            "rows_ratio_ci_hi": ratio.hi,
            "share_of_draws_at_or_below_1": ratio.share_below_one,
            "states": len(k),
            "interval": ratio,
        }
        if "best_single" in keep:
            vs = _rows_ratio(k, keep["best_single"])
            out[name].update(
                vs_best_single_ratio=vs.estimate,
                vs_best_single_ci_lo=vs.lo,
                vs_best_single_ci_hi=vs.hi,
                vs_best_single_share_at_or_below_1=vs.share_below_one,
            )
    return out


def across_folds(explore: Path, folds: Mapping[int, Set[str]], actions) -> dict[str, dict[str, float]]:
    """What reading nothing, or only the category, earns on every seed of the explore table, each fold's seeds
    scored with the choice made on the other folds (``folds``: fold name -> its held-out seed ids): paired
    intervals over all seeds of best_single and best_per_category against random, and of best_per_category against
    best_single: whether any policy that reads only the category can be shown to beat the best single action.
    Needs no trained policy (one would be trained per fold), so it covers every fold."""
    from teams_rl.policy.headroom import per_state_keep

    names = [a.name for a in actions]
    keep: dict[str, dict[str, float]] = {"random": {}, "best_single": {}, "best_per_category": {}}
    for held in folds.values():
        rows = [r for r in depth0_table(explore) if r["seed_id"] in held]
        states = sorted({r["state"] for r in rows})
        single = f"action:{best_single(explore, held)}"
        refs = {"random": "random", "best_single": single, "best_per_category": PER_CATEGORY}
        for name, ref in refs.items():
            keep[name].update(per_state_keep(rows, probs_on(ref, states, names, explore=explore, held=held)))
    pairs = {
        "best_single_vs_random": ("best_single", "random"),
        "best_per_category_vs_random": ("best_per_category", "random"),
        "best_per_category_vs_best_single": ("best_per_category", "best_single"),
    }
    out = {}
    for key, (a, b) in pairs.items():
        ratio = _rows_ratio(keep[a], keep[b])
        out[key] = {
            "ratio": ratio.estimate,
            "ci_lo": ratio.lo,
            "ci_hi": ratio.hi,
            "share_at_or_below_1": ratio.share_below_one,
            "seeds": len(keep[a]),
        }
    return out
