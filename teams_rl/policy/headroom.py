"""What any policy can gain over uniform-random Evol-Instruct with these models: the headroom summary of an explore
table (every action on every state, k rewriter samples each).

Rows at an equal expert budget: each rewrite costs one expert call and each kept rewrite one more for its answer,
so a budget of B calls buys B / (1 + p) rewrites and B * p / (1 + p) rows, where p is the policy's keep rate. Every
ratio below is rows per call of a policy over rows per call of uniform random, on the same states.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

Cell = tuple[str, str]  # (state key, action)


def rows_per_call(p: float) -> float:
    """Rows per expert call at keep rate ``p`` (a kept rewrite also pays for its answer)."""
    return p / (1.0 + p) if p > 0 else 0.0


def _ratio(p: float, base: float) -> float:
    return rows_per_call(p) / rows_per_call(base) if base > 0 else float("nan")


def keep_table(rows: Sequence[Mapping]) -> dict[str, dict[str, float]]:
    """state -> action -> keep rate over its samples."""
    cells: dict[Cell, list[float]] = defaultdict(list)
    for r in rows:
        cells[(r["state"], r["action"])].append(float(r["kept"]))
    table: dict[str, dict[str, float]] = defaultdict(dict)
    for (state, action), kept in cells.items():
        table[state][action] = sum(kept) / len(kept)
    return dict(table)


def best_action(rows: Iterable[Mapping]) -> str:
    """The action with the best keep rate over ``rows`` (kept / tried, pooled over states and samples); a tie goes
    to the later action name, so the choice does not depend on row order."""
    kept: Counter[str] = Counter()
    tried: Counter[str] = Counter()
    for row in rows:
        tried[row["action"]] += 1
        kept[row["action"]] += int(row["kept"])
    if not tried:
        raise ValueError("no rows to choose an action on")
    return max(tried, key=lambda a: (kept[a] / tried[a], a))


def best_by_category(rows: Iterable[Mapping]) -> tuple[str, dict[str, str]]:
    """The choices a policy that reads nothing, or only the seed's category, can learn from ``rows`` (the training
    seeds' explore cells): the best single action, and category -> its best action. A category the rows do not
    hold gets the best single action (``choices.get(category, single)``)."""
    rows = list(rows)
    by_category: dict[str, list[Mapping]] = defaultdict(list)
    for r in rows:
        by_category[r.get("category", "")].append(r)
    return best_action(rows), {c: best_action(rs) for c, rs in by_category.items()}


def summarize(rows: Sequence[Mapping], actions: Sequence[str], folds: Mapping[str, int]) -> dict:
    """The headroom of an explore table.

    Args:
        rows: one per (state, action, sample) with ``state``, ``seed_id``, ``category``, ``action``, ``kept``,
            ``reward``.
        actions: the enabled actions (the uniform policy draws among them).
        folds: seed id -> fold; the best single action (and the best action per category) is chosen on the
            other folds and scored on the seed's own, so neither is credited with what it saw.
    """
    table = keep_table(rows)
    states = sorted(s for s in table if all(a in table[s] for a in actions))
    meta = {r["state"]: (r["seed_id"], r.get("category", "")) for r in rows}
    known, enabled = set(states), set(actions)
    complete = [r for r in rows if r["state"] in known and r["action"] in enabled]
    if not states:
        raise ValueError("the explore table holds no state with every action tried")
    per_action = {}
    for a in actions:
        picked = [r for r in complete if r["action"] == a]
        per_action[a] = {
            "keep_rate": sum(float(r["kept"]) for r in picked) / len(picked),
            "mean_reward": sum(float(r["reward"]) for r in picked) / len(picked),
            "rewrites": len(picked),
        }
    uniform = sum(sum(table[s][a] for a in actions) / len(actions) for s in states) / len(states)
    reward_uniform = sum(v["mean_reward"] for v in per_action.values()) / len(actions)

    fold_of = {s: folds.get(meta[s][0]) for s in states}
    if len(set(fold_of.values())) < 2:
        raise ValueError("the headroom needs explored seeds in at least two folds (it chooses on the others)")

    def chosen(by_category: bool) -> float:
        # each fold's states take the action chosen on the other folds' cells (of the state's category if asked)
        total = 0.0
        for fold in set(fold_of.values()):
            single, per_category = best_by_category(r for r in complete if fold_of[r["state"]] != fold)
            for s in (t for t in states if fold_of[t] == fold):
                total += table[s][per_category.get(meta[s][1], single) if by_category else single]
        return total / len(states)

    best_single, best_category = chosen(False), chosen(True)
    oracle = sum(max(table[s][a] for a in actions) for s in states) / len(states)
    cross_fit = oracle_cross_fit(rows, actions, states)
    in_sample_best = best_action(complete)
    return {
        "states": len(states),
        "samples_per_cell": round(len(rows) / max(1, len(table) * len(actions)), 2),
        "per_action": per_action,
        "uniform_keep_rate": uniform,
        "uniform_expected_reward": reward_uniform,
        "best_single_action_in_sample": in_sample_best,
        "keep_rates": {
            "uniform": uniform,
            "best_single": best_single,
            "best_per_category": best_category,
            "oracle": oracle,
            **({"oracle_cross_fit": cross_fit} if cross_fit is not None else {}),
            "keep_all": 1.0,
        },
        "rows_ratio": {
            "best_single": _ratio(best_single, uniform),
            "best_per_category": _ratio(best_category, uniform),
            "oracle": _ratio(oracle, uniform),
            **({"oracle_cross_fit": _ratio(cross_fit, uniform)} if cross_fit is not None else {}),
            "keep_all": _ratio(1.0, uniform),
        },
    }


def oracle_cross_fit(rows: Sequence[Mapping], actions: Sequence[str], states: Sequence[str]) -> float | None:
    """The per-state oracle scored on a sample it did not choose with, or None with one sample per cell.

    The in-sample oracle takes the best of each state's noisy cells, so with one Bernoulli sample per cell it is
    close to "some action was kept", which no policy can reach. Here, for each state and each of its samples j,
    the actions with the best keep rate over the state's other samples share the choice and are scored on sample
    j alone: what a policy that knew every state's cells (from k - 1 samples) would keep. A lower bound on the
    true per-state oracle, as the in-sample one is an upper bound.
    """
    kept: dict[Cell, dict[int, float]] = defaultdict(dict)
    for r in rows:
        kept[(r["state"], r["action"])][int(r.get("sample", 0))] = float(r["kept"])
    scores = []
    for s in states:
        common = set.intersection(*(set(kept[(s, a)]) for a in actions))
        if len(common) < 2:
            return None
        per_sample = []
        for j in sorted(common):
            others = common - {j}
            means = {a: sum(kept[(s, a)][i] for i in others) / len(others) for a in actions}
            top = max(means.values())
            best = [a for a in actions if means[a] == top]
            per_sample.append(sum(kept[(s, a)][j] for a in best) / len(best))
        scores.append(sum(per_sample) / len(per_sample))
    return sum(scores) / len(scores) if scores else None


def per_state_keep(rows: Sequence[Mapping], probs: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """state -> a policy's expected keep rate there: sum over actions of P(action | state) times the cell's keep
    rate over its samples. Exact for the table (no action is drawn), so two policies on the same table differ only
    by their choices; summed over states it gives rows (and, with one call per rewrite plus one per kept row,
    expert calls) per state for a paired comparison."""
    table = keep_table(rows)
    return {s: sum(p * table[s][a] for a, p in probs[s].items()) for s in table if s in probs}


def expected_reward(rows: Sequence[Mapping], probs: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The expected reward and keep rate of a policy on the explore table's states: for each state, its P(action)
    (``probs[state][action]``) times the table's mean reward / keep rate of that cell, averaged over states."""
    reward: dict[Cell, list[float]] = defaultdict(list)
    for r in rows:
        reward[(r["state"], r["action"])].append(float(r["reward"]))
    table = keep_table(rows)
    states = [s for s in table if s in probs]
    if not states:
        raise ValueError("no explore state has policy probabilities")
    mean = {cell: sum(v) / len(v) for cell, v in reward.items()}
    return {
        "expected_reward": sum(sum(p * mean[(s, a)] for a, p in probs[s].items()) for s in states) / len(states),
        "keep_rate": sum(sum(p * table[s][a] for a, p in probs[s].items()) for s in states) / len(states),
        "states": len(states),
    }
