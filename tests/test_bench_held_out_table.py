"""The bench's held-out explore-table comparison: exact expectations, paired over seeds, no LLM call."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from teams_rl.env.build import select_actions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("held_out_table", ROOT / "bench" / "held_out_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(path: Path, kept_by_action: dict[str, list[int]]) -> Path:
    """Explore rows for seeds s0..s{n-1}: action a is kept on seed i iff kept_by_action[a][i]; plus a train seed."""
    rows = []
    n = len(next(iter(kept_by_action.values())))
    for i in [*range(n), 99]:
        for action, kept in kept_by_action.items():
            for sample in range(2):
                rows.append(
                    {
                        "state": f"s{i}/0",
                        "seed_id": f"s{i}",
                        "depth": 0,
                        "action": action,
                        "sample": sample,
                        "kept": bool(kept[i]) if i < n else False,
                        "reward": 0.0,
                    }
                )
    path.mkdir(parents=True, exist_ok=True)
    (path / "table.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_held_out_table_scores_each_policy_exactly_on_held_out_seeds_only(bench, tmp_path):
    actions = select_actions(None)
    names = [a.name for a in actions]
    # in_breadth is kept on every held-out seed, every other action on none: random keeps 1/6 per state
    kept = {a: [int(a == "in_breadth")] * 8 for a in names}
    explore = _table(tmp_path / "explore", kept)
    held = {f"s{i}" for i in range(8)}
    table = bench.on_held_out_table(
        {"random": "random", "best_single": "action:in_breadth", "worst": "action:deepen"}, explore, actions, held
    )
    assert table["random"]["states"] == 8  # the training seed s99 is not scored
    assert table["random"]["keep_rate"] == pytest.approx(1 / 6)
    assert table["best_single"]["keep_rate"] == pytest.approx(1.0)
    # rows per call: p / (1 + p) -> 1/2 against (1/6) / (7/6) = 1/7
    assert table["best_single"]["rows_ratio"] == pytest.approx((1 / 2) / (1 / 7))
    assert table["random"]["rows_ratio"] == pytest.approx(1.0)
    assert table["worst"]["keep_rate"] == 0.0 and table["worst"]["rows_ratio"] == 0.0
    best = table["best_single"]
    assert best["rows_ratio_ci_lo"] == pytest.approx(best["rows_ratio_ci_hi"])  # every seed agrees: no spread
    assert best["share_of_draws_at_or_below_1"] == 0.0


def test_held_out_table_interval_widens_when_seeds_disagree(bench, tmp_path):
    actions = select_actions(None)
    names = [a.name for a in actions]
    kept = {a: [0] * 10 for a in names}
    kept["in_breadth"] = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]  # in_breadth helps on half the seeds
    kept["deepen"] = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]  # deepen on the other half
    explore = _table(tmp_path / "explore", kept)
    table = bench.on_held_out_table(
        {"random": "random", "best_single": "action:in_breadth"}, explore, actions, {f"s{i}" for i in range(10)}
    )
    best = table["best_single"]
    assert best["rows_ratio_ci_lo"] < best["rows_ratio"] < best["rows_ratio_ci_hi"]


def test_held_out_table_is_none_without_held_out_cells(bench, tmp_path):
    actions = select_actions(None)
    explore = _table(tmp_path / "explore", {a.name: [1] for a in actions})
    assert bench.on_held_out_table({"random": "random"}, explore, actions, {"elsewhere"}) is None
