"""The held-out table's best_per_category reference (chosen on the training seeds of each state's category) and
every policy's paired interval of its ratio to best_single, on hand-built explore tables."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from teams_rl.env.build import select_actions

ROOT = Path(__file__).resolve().parents[1]
ACTIONS = select_actions(None)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table_mod():
    return _load("held_out_table")


def _explore(path: Path, seeds: dict[str, tuple[str, dict[str, list[int]]]]) -> Path:
    """Explore rows: seed id -> (category, action -> kept per sample); an action not named is never kept."""
    rows = []
    for seed, (category, kept) in seeds.items():
        for a in ACTIONS:
            for sample, k in enumerate(kept.get(a.name, [0, 0])):
                rows.append(
                    {
                        "state": f"{seed}/0",
                        "seed_id": seed,
                        "category": category,
                        "depth": 0,
                        "action": a.name,
                        "sample": sample,
                        "kept": bool(k),
                        "reward": 0.0,
                    }
                )
    path.mkdir(parents=True, exist_ok=True)
    (path / "table.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# Training seeds: math prefers deepen (4/4 against in_breadth's 2/4); overall in_breadth wins (6/8 against 4/8), so
# best_single is in_breadth. The held-out seeds' own cells point the other way in every category (a choice that
# peeked at them would differ); cooking has no training seed, so it falls back to best_single.
SEEDS = {
    "t0": ("math", {"deepen": [1, 1], "in_breadth": [1, 0]}),
    "t1": ("math", {"deepen": [1, 1], "in_breadth": [0, 1]}),
    "t2": ("writing", {"in_breadth": [1, 1]}),
    "t3": ("writing", {"in_breadth": [1, 1]}),
    "h0": ("math", {"deepen": [1, 0], "in_breadth": [1, 1]}),
    "h1": ("math", {"deepen": [1, 0], "in_breadth": [1, 1]}),
    "h2": ("writing", {"deepen": [1, 1], "in_breadth": [1, 0]}),
    "h3": ("cooking", {"deepen": [1, 1]}),
}
HELD = {"h0", "h1", "h2", "h3"}
REFS = {"random": "random", "best_single": "action:in_breadth", "best_per_category": "category:"}


def test_best_per_category_chooses_on_the_training_seeds_of_each_category(table_mod, tmp_path):
    explore = _explore(tmp_path / "explore", SEEDS)
    assert table_mod.best_single(explore, HELD) == "in_breadth"
    chosen = table_mod.best_per_category(explore, HELD)
    assert {s: chosen[f"{s}/0"] for s in sorted(HELD)} == {
        "h0": "deepen",  # math's training seeds
        "h1": "deepen",
        "h2": "in_breadth",  # writing's
        "h3": "in_breadth",  # cooking has no training seed: best_single over all of them
    }


def test_best_per_category_on_the_held_out_table_exactly(table_mod, tmp_path):
    explore = _explore(tmp_path / "explore", SEEDS)
    table = table_mod.on_held_out_table(REFS, explore, ACTIONS, HELD)
    cat, single = table["best_per_category"], table["best_single"]
    assert cat["states"] == 4
    # per-state keeps: deepen on h0, h1 (1/2 each), in_breadth on h2 (1/2) and h3 (0): 1.5 over 4 states
    assert cat["keep_rate"] == pytest.approx(1.5 / 4)
    # in_breadth everywhere: 1, 1, 1/2, 0
    assert single["keep_rate"] == pytest.approx(2.5 / 4)
    # rows per call, kept / (rewrites + kept answers): (1.5 / 5.5) / (2.5 / 6.5)
    assert cat["vs_best_single_ratio"] == pytest.approx(39 / 55)
    # random: (1/2 + 1) / 6 on h0, h1, h2 and 1 / 6 on h3
    assert table["random"]["keep_rate"] == pytest.approx(5.5 / 24)
    assert cat["rows_ratio"] == pytest.approx((1.5 / 5.5) / ((5.5 / 6) / (4 + 5.5 / 6)))


def test_best_single_against_itself_is_exactly_one_with_no_spread(table_mod, tmp_path):
    explore = _explore(tmp_path / "explore", SEEDS)
    single = table_mod.on_held_out_table(REFS, explore, ACTIONS, HELD)["best_single"]
    assert single["vs_best_single_ratio"] == 1.0
    assert single["vs_best_single_ci_lo"] == 1.0 and single["vs_best_single_ci_hi"] == 1.0
    assert single["vs_best_single_share_at_or_below_1"] == 1.0


def test_a_policy_worse_than_best_single_on_every_seed_has_its_interval_below_one(table_mod, tmp_path):
    # in_breadth is kept on every sample of every held-out seed; deepen on one of two samples or on none
    seeds = {f"h{i}": ("math", {"in_breadth": [1, 1], "deepen": [1, 0] if i % 2 else [0, 0]}) for i in range(10)}
    seeds["t0"] = ("math", {"in_breadth": [1, 1]})
    held = {f"h{i}" for i in range(10)}
    explore = _explore(tmp_path / "explore", seeds)
    refs = {"random": "random", "best_single": "action:in_breadth", "worse": "action:deepen"}
    worse = table_mod.on_held_out_table(refs, explore, ACTIONS, held)["worse"]
    # deepen keeps 1/4 per state against 1: (2.5 / 12.5) / (10 / 20)
    assert worse["vs_best_single_ratio"] == pytest.approx(0.4)
    assert worse["vs_best_single_ci_lo"] < worse["vs_best_single_ratio"] < worse["vs_best_single_ci_hi"] < 1.0
    assert worse["vs_best_single_share_at_or_below_1"] == 1.0


def test_without_best_single_there_is_no_comparison_to_it(table_mod, tmp_path):
    explore = _explore(tmp_path / "explore", SEEDS)
    table = table_mod.on_held_out_table({"random": "random"}, explore, ACTIONS, HELD)
    assert not any(k.startswith("vs_best_single") for k in table["random"])


def test_the_category_ref_needs_the_explore_table(table_mod):
    with pytest.raises(ValueError, match="explore folder"):
        table_mod.probs_on("category:", ["h0/0"], [a.name for a in ACTIONS])


def test_report_prints_the_ratio_to_best_single_and_the_entries_write_as_json(tmp_path, capsys):
    bench = _load("policy_vs_random")
    explore = _explore(tmp_path / "explore", SEEDS)
    table = bench.on_held_out_table(REFS, explore, ACTIONS, HELD)
    plain = {k: bench.plain_entry(v) for k, v in table.items()}
    assert all("interval" not in v for v in plain.values())
    result = {
        "held_out_seeds": 4,
        "best_single_action": "in_breadth",
        "held_out_table": json.loads(json.dumps(plain)),
        "headroom": {
            "samples_per_cell": 2,
            "states": 8,
            "best_single_rows_ratio": 1.5,
            "best_per_category_rows_ratio": 1.2,
            "oracle_rows_ratio": 2.0,
        },
        "across_folds": {
            "best_per_category_vs_best_single": {
                "ratio": 1.058,
                "ci_lo": 0.958,
                "ci_hi": 1.179,
                "share_at_or_below_1": 0.143,
                "seeds": 80,
            }
        },
        "wall_s": 1.0,
    }
    bench.report(result, SimpleNamespace(fold=0, folds=3), tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert "vs best1" in next(line for line in lines if line.startswith("policy"))
    single = next(line for line in lines if line.startswith("best_single "))
    assert single.split()[-4:] == ["1.00", "[1.00,", "1.00]", "1.000"]
    every = next(line for line in lines if line.startswith("every fold"))
    assert "(80 seeds" in every and "1.058x [0.958, 1.179], P(<=1) 0.143" in every
    cat = next(line for line in lines if line.startswith("best_per_category"))
    assert f"{39 / 55:.2f}" in cat.split()


class _FakePolicy:
    """A trained policy's surface as the held-out table reads it: the menu order and P(action | state)."""

    def __init__(self, probs: dict[str, dict[str, float]]):
        self.format = SimpleNamespace(names=[a.name for a in ACTIONS])
        self._probs = probs

    def probabilities(self, states):
        return [[self._probs[s.seed_id].get(a, 0.0) for a in self.format.names] for s in states]


def test_argmax_ref_takes_the_first_most_likely_action_and_ties_best_single_where_sampling_falls_short(
    table_mod, tmp_path, monkeypatch
):
    from teams_rl.env.seeds import BUILTIN, load_seeds

    ids = [s.id for s in load_seeds(BUILTIN)[:6]]
    # mostly in_breadth, kept on every sample; on the first seed deepen ties it and comes first in menu order
    probs = {i: {"in_breadth": 0.9, "deepen": 0.1} for i in ids}
    probs[ids[0]] = {"deepen": 0.45, "in_breadth": 0.45, "concretize": 0.1}
    monkeypatch.setattr(table_mod, "policy_of", lambda ref: _FakePolicy(probs))
    names = [a.name for a in ACTIONS]
    states = [f"{i}/0" for i in ids]
    greedy = table_mod.probs_on("argmax:runs/p", states, names)
    assert greedy[states[0]] == {a: float(a == "deepen") for a in names}
    assert all(greedy[s] == {a: float(a == "in_breadth") for a in names} for s in states[1:])

    seeds = {i: ("math", {"in_breadth": [1, 1], "deepen": [1, 1] if i == ids[0] else [0, 0]}) for i in ids}
    seeds["t0"] = ("math", {"in_breadth": [1, 1]})
    explore = _explore(tmp_path / "explore", seeds)
    refs = {"random": "random", "best_single": "action:in_breadth", "p": "runs/p", "p_argmax": "argmax:runs/p"}
    table = table_mod.on_held_out_table(refs, explore, ACTIONS, set(ids))
    assert table["p_argmax"]["vs_best_single_ratio"] == 1.0
    assert table["p_argmax"]["vs_best_single_ci_lo"] == table["p_argmax"]["vs_best_single_ci_hi"] == 1.0
    # sampled, every state keeps 0.9 of the time (the first one loses concretize's 0.1): 5.4 / 11.4 over 6 / 12
    assert table["p"]["vs_best_single_ratio"] == pytest.approx((5.4 / 11.4) / (6 / 12))
    assert table["p"]["vs_best_single_ci_hi"] < 1.0


def test_across_folds_scores_every_seed_with_the_choice_made_on_the_other_folds(table_mod, tmp_path):
    seeds = {
        "a0": ("math", {"deepen": [1, 1]}),
        "a1": ("writing", {"in_breadth": [1, 1]}),
        "b0": ("math", {"deepen": [1, 1]}),
        "b1": ("writing", {"in_breadth": [1, 1]}),
        "b2": ("writing", {"in_breadth": [1, 1]}),
    }
    explore = _explore(tmp_path / "explore", seeds)
    out = table_mod.across_folds(explore, {0: {"a0", "a1"}, 1: {"b0", "b1", "b2"}}, ACTIONS)
    # fold 0 chooses on b*: in_breadth (4/6) overall, deepen for math; fold 1 on a*: a 2/4 tie goes to in_breadth.
    # best_single keeps 3 of 5 states, per category all 5, random 1/6 of each: rows per call 3/8, 5/10, (5/6)/(35/6)
    assert out["best_per_category_vs_best_single"]["ratio"] == pytest.approx((5 / 10) / (3 / 8))
    assert out["best_single_vs_random"]["ratio"] == pytest.approx((3 / 8) / (5 / 35))
    assert out["best_per_category_vs_random"]["ratio"] == pytest.approx((5 / 10) / (5 / 35))
    assert all(v["seeds"] == 5 and v["ci_lo"] <= v["ratio"] <= v["ci_hi"] for v in out.values())


def test_a_synthesis_bench_refuses_an_out_folder_whose_ledgers_already_spent_the_budget(tmp_path, capsys):
    bench = _load("policy_vs_random")
    (tmp_path / "out" / "random" / "seed-1").mkdir(parents=True)
    (tmp_path / "out" / "random" / "seed-1" / "ledger.sqlite").write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--explore", str(tmp_path / "explore"), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "whose ledgers count against the budget: pass a new --out" in capsys.readouterr().err
