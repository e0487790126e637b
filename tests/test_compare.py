"""Policy-comparison statistics against known answers: bootstrap intervals, diversity at n, entropy, spread."""

import math
import time

import numpy as np
import pytest

from teams_rl.evaluate.compare import (
    action_entropy,
    diversity_at_n,
    near_duplicate_rate,
    plot_ratios,
    rows_at_budget,
    state_spread,
)
from teams_rl.evaluate.intervals import Interval, paired_bootstrap_rate_ratio, paired_bootstrap_ratio


def _one_hot_embedder(calls: list | None = None):
    """Equal texts share a one-hot vector; different texts are orthogonal."""
    vocab: dict[str, int] = {}

    def embed(texts: list[str]) -> np.ndarray:
        if calls is not None:
            calls.append(len(texts))
        ids = [vocab.setdefault(t, len(vocab)) for t in texts]
        return np.eye(max(len(vocab), 1))[ids]

    return embed


def _units(values) -> dict[str, float]:
    return {f"seed-{i:03d}": float(v) for i, v in enumerate(values)}


def test_identical_sides_give_one_with_a_zero_width_interval():
    base = _units(np.random.default_rng(1).integers(0, 6, size=50))
    iv = paired_bootstrap_ratio(base, dict(base), n_boot=2000)
    assert (iv.estimate, iv.lo, iv.hi) == (1.0, 1.0, 1.0)
    assert iv.n_units == 50 and iv.n_boot == 2000 and iv.share_below_one == 1.0 and not iv.excludes_one


def test_the_same_policy_computed_another_way_counts_as_no_better():
    """An exactly uniform instructor's keep rates come through a softmax (1/6 +- 1e-9): its ratio to random is 1 up
    to rounding, and every draw must count as <= 1, not as a win."""
    base = {k: float(v) for k, v in _units(np.random.default_rng(3).integers(1, 6, size=30)).items()}
    ours = {k: v * (1 + 1e-9) for k, v in base.items()}
    iv = paired_bootstrap_rate_ratio(ours, dict.fromkeys(base, 1.0), base, dict.fromkeys(base, 1.0), n_boot=500)
    assert iv.share_below_one == 1.0 and not iv.excludes_one


def test_twice_the_base_per_unit_gives_exactly_two():
    base = _units(np.random.default_rng(2).integers(1, 9, size=40))
    iv = paired_bootstrap_ratio({k: 2 * v for k, v in base.items()}, base, n_boot=2000)
    assert (iv.estimate, iv.lo, iv.hi) == (2.0, 2.0, 2.0)
    assert iv.excludes_one and iv.share_below_one == 0.0
    assert iv.as_dict()["excludes_one"] is True


def _percentile(sorted_values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, by hand."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def test_matches_a_slow_pure_python_bootstrap_on_the_same_draws():
    rng = np.random.default_rng(3)
    base = _units(rng.integers(0, 5, size=25))
    ours = {k: float(v + rng.integers(0, 3)) for k, v in base.items()}
    n_boot, seed = 700, 11
    keys = sorted(ours)
    idx = np.random.default_rng(seed).integers(0, len(keys), size=(n_boot, len(keys)))
    ratios = []
    for row in idx.tolist():
        sb = sum(base[keys[i]] for i in row)
        if sb > 0:
            ratios.append(sum(ours[keys[i]] for i in row) / sb)
    ratios.sort()
    iv = paired_bootstrap_ratio(ours, base, n_boot=n_boot, seed=seed, level=0.9)
    assert iv.estimate == pytest.approx(sum(ours.values()) / sum(base.values()))
    assert iv.lo == pytest.approx(_percentile(ratios, 0.05))
    assert iv.hi == pytest.approx(_percentile(ratios, 0.95))
    assert iv.n_boot == len(ratios) and iv.level == 0.9
    assert iv.share_below_one == pytest.approx(sum(r <= 1 for r in ratios) / len(ratios))


def test_95_percent_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    true_ratio, covered, trials = 1.2, 0, 200
    start = time.perf_counter()
    for t in range(trials):
        rate = rng.gamma(2.0, 1.5, size=120)  # per-seed difficulty, drawn afresh: units are iid
        base = _units(rng.poisson(rate))
        ours = _units(rng.poisson(true_ratio * rate))
        iv = paired_bootstrap_ratio(ours, base, n_boot=2000, seed=t)
        covered += iv.lo <= true_ratio <= iv.hi
    assert 0.90 <= covered / trials <= 0.99
    assert time.perf_counter() - start < 10


def test_full_size_bootstrap_is_fast():
    rng = np.random.default_rng(5)
    base, ours = _units(rng.poisson(3, size=400)), _units(rng.poisson(4, size=400))
    start = time.perf_counter()
    iv = paired_bootstrap_ratio(ours, base)
    assert time.perf_counter() - start < 1.0
    assert iv.n_boot == 10_000 and iv.lo < iv.estimate < iv.hi


def test_fixed_seed_is_deterministic_and_seeds_differ():
    rng = np.random.default_rng(6)
    base, ours = _units(rng.poisson(2, size=30)), _units(rng.poisson(3, size=30))
    a = paired_bootstrap_ratio(ours, base, n_boot=500, seed=7)
    assert a == paired_bootstrap_ratio(ours, base, n_boot=500, seed=7)
    assert a != paired_bootstrap_ratio(ours, base, n_boot=500, seed=8)
    # Key order does not matter: units are sorted.
    assert a == paired_bootstrap_ratio(dict(reversed(ours.items())), base, n_boot=500, seed=7)


def test_mismatched_keys_raise_naming_them():
    with pytest.raises(ValueError, match=r"missing from base: \['b'\].*missing from ours: \['c'\]"):
        paired_bootstrap_ratio({"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        paired_bootstrap_ratio({"a": -1.0}, {"a": 1.0})


def test_draws_with_a_zero_base_sum_are_dropped():
    # Resamples: (a, a) -> 1, (a, b) -> 2, (b, b) -> base 0, dropped.
    iv = paired_bootstrap_ratio({"a": 1.0, "b": 1.0}, {"a": 1.0, "b": 0.0}, n_boot=4000)
    assert iv.estimate == 2.0 and 2800 < iv.n_boot < 3200
    assert iv.lo == 1.0 and iv.hi == 2.0 and iv.share_below_one == pytest.approx(1 / 3, abs=0.05)


def test_zero_base_total_gives_nan():
    iv = paired_bootstrap_ratio({"a": 3.0}, {"a": 0.0})
    assert math.isnan(iv.estimate) and math.isnan(iv.lo) and iv.n_boot == 0 and not iv.excludes_one
    assert math.isnan(paired_bootstrap_ratio({}, {}).estimate)


def test_diversity_at_n_distinct_vs_duplicate_texts():
    distinct = [f"write about topic {i} with care" for i in range(30)]
    calls: list = []
    out = diversity_at_n(distinct, 10, embed=_one_hot_embedder(calls), draws=5)
    assert calls == [30]  # embedded once, then subsampled
    assert out["n"] == 10 and out["draws"] == 5
    assert out["vendi"] == pytest.approx(10.0) and out["vendi_sd"] == pytest.approx(0.0, abs=1e-9)
    assert out["distinct_2"] == pytest.approx(23 / 50)  # per text 5 bigrams; 3 are shared by all ten
    dup = diversity_at_n(["the same instruction"] * 30, 10, embed=_one_hot_embedder(), draws=5)
    assert dup["vendi"] == pytest.approx(1.0)
    assert dup["distinct_2"] == pytest.approx(2 / 20)  # 2 bigrams, 20 in all


def test_diversity_at_n_edges():
    texts = ["a b", "c d", "e f"]
    out = diversity_at_n(texts, 3, embed=_one_hot_embedder(), draws=20)
    assert out["draws"] == 1 and out["vendi"] == pytest.approx(3.0) and out["distinct_2"] == 1.0
    no_embed = diversity_at_n(texts, 2, embed=None)
    assert no_embed["vendi"] is None and no_embed["distinct_2"] == 1.0
    with pytest.raises(ValueError):
        diversity_at_n(texts, 4, embed=None)
    with pytest.raises(ValueError):
        diversity_at_n(texts, 0, embed=None)
    a = diversity_at_n([f"x {i} {i % 3}" for i in range(20)], 5, embed=None, seed=3)
    assert a == diversity_at_n([f"x {i} {i % 3}" for i in range(20)], 5, embed=None, seed=3)


def test_near_duplicate_rate_with_a_fake_embedder():
    texts = ["alpha", "beta", "alpha", "gamma", "delta"]
    assert near_duplicate_rate(texts, _one_hot_embedder()) == pytest.approx(2 / 5)
    assert near_duplicate_rate(["alpha", "beta"], _one_hot_embedder()) == 0.0
    assert near_duplicate_rate(["alpha"], _one_hot_embedder()) == 0.0

    def tilted(texts):  # rows 0 and 1 at cosine 0.8, row 2 orthogonal
        return np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 2.0]])

    assert near_duplicate_rate(["a", "b", "c"], tilted, threshold=0.9) == 0.0
    assert near_duplicate_rate(["a", "b", "c"], tilted, threshold=0.8) == pytest.approx(2 / 3)


def test_action_entropy():
    names = ["breadth", "deepen", "concretize", "reasoning"]
    assert action_entropy(names * 5, 4) == pytest.approx(1.0)
    assert action_entropy(["deepen"] * 9, 4) == 0.0
    assert action_entropy(["a", "b"], 4) == pytest.approx(0.5)  # log 2 / log 4
    assert action_entropy([], 4) == 0.0
    with pytest.raises(ValueError):
        action_entropy(["a", "b", "c"], 2)


def test_state_spread():
    assert state_spread(np.tile([0.2, 0.3, 0.5], (6, 1))) == pytest.approx(0.0, abs=1e-12)
    assert state_spread(np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(math.log(2))
    assert state_spread(np.eye(4)) == pytest.approx(math.log(4))
    assert state_spread(np.array([[2.0, 2.0], [1.0, 1.0]])) == pytest.approx(0.0, abs=1e-12)  # renormalised
    with pytest.raises(ValueError):
        state_spread(np.array([0.5, 0.5]))


def test_rows_at_budget():
    assert rows_at_budget(1.0) == 0.5 and rows_at_budget(0.0) == 0.0
    assert rows_at_budget(0.25) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        rows_at_budget(1.5)


def test_plot_ratios_writes_a_png(tmp_path):
    rows = {
        "rl": Interval(1.3, 1.1, 1.5, 200, 10_000, 0.95, 0.001),
        "greedy": Interval(0.95, 0.8, 1.1, 200, 10_000, 0.95, 0.7),
        "broken": Interval(math.nan, math.nan, math.nan, 0, 0, 0.95, math.nan),
    }
    path = plot_ratios(rows, tmp_path / "ratios.png", "Rows per expert call vs random")
    assert path == tmp_path / "ratios.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
    assert plot_ratios({}, tmp_path / "empty.png", "nothing").stat().st_size > 0


def test_rate_ratio_is_rows_per_call_over_rows_per_call():
    from teams_rl.evaluate.intervals import paired_bootstrap_rate_ratio

    units = [f"s{i}" for i in range(30)]
    base_rows = {u: float(i % 3) for i, u in enumerate(units)}
    base_calls = dict.fromkeys(units, 4.0)
    # twice the rows at the same calls, and the same rows at half the calls: both exactly 2x random's rate
    doubled = paired_bootstrap_rate_ratio({u: 2 * v for u, v in base_rows.items()}, base_calls, base_rows, base_calls)
    cheaper = paired_bootstrap_rate_ratio(base_rows, dict.fromkeys(units, 2.0), base_rows, base_calls)
    for interval in (doubled, cheaper):
        assert interval.estimate == pytest.approx(2.0)
        assert interval.lo == pytest.approx(2.0) and interval.hi == pytest.approx(2.0)
    same = paired_bootstrap_rate_ratio(base_rows, base_calls, base_rows, base_calls)
    assert (same.estimate, same.lo, same.hi) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        paired_bootstrap_rate_ratio(base_rows, {"x": 1.0}, base_rows, base_calls)


def test_compare_datasets_counts_calls_per_seed_and_says_what_the_interval_means():
    from teams_rl.evaluate.compare import compare_datasets, per_seed_yield, verdict

    def dataset(kept_per_seed: int, rejected_per_seed: int, seeds: int = 40):
        rows = [{"seed_id": f"s{i}"} for i in range(seeds) for _ in range(kept_per_seed)]
        rejected = [{"seed_id": f"s{i}", "stage": "rewrite"} for i in range(seeds) for _ in range(rejected_per_seed)]
        return rows, rejected

    rows, rejected = dataset(1, 1, seeds=2)
    rejected.append({"seed_id": "s9", "stage": "answer"})
    assert per_seed_yield(rows, rejected) == ({"s0": 1, "s1": 1}, {"s0": 3, "s1": 3, "s9": 2})
    better = compare_datasets(dataset(2, 0), dataset(1, 1))  # 2 rows / 4 calls vs 1 row / 3 calls
    assert better.estimate == pytest.approx((2 / 4) / (1 / 3)) and better.lo > 1.0
    assert "kept more rows per expert call" in verdict(better)
    same = compare_datasets(dataset(1, 1), dataset(1, 1))
    assert "cannot tell" in verdict(same) and "includes 1" in verdict(same)
    assert "fewer" in verdict(compare_datasets(dataset(1, 1), dataset(2, 0)))
