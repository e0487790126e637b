"""Statistics for comparing policies' synthesized datasets: rows per expert call over seed instructions (its
bootstrap interval is ``intervals``'), diversity at an equal row count, near-duplicate rate, action entropy, state
dependence, and a ratio plot."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from teams_rl.core.plotting import pyplot, save
from teams_rl.evaluate.intervals import BLOCK_ENTRIES, Interval, paired_bootstrap_rate_ratio
from teams_rl.evaluate.metrics import distinct_n, vendi_score


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _embed(texts: Sequence[str], embed: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    x = np.asarray(embed(list(texts)), dtype=np.float64)
    if x.ndim != 2 or len(x) != len(texts):
        raise ValueError(f"embed must return a ({len(texts)}, d) array, got shape {x.shape}")
    return x


def diversity_at_n(
    texts: Sequence[str],
    n: int,
    *,
    embed: Callable[[list[str]], np.ndarray] | None,
    draws: int = 20,
    seed: int = 0,
) -> dict:
    """Vendi (cosine kernel) and distinct-2 averaged over ``draws`` random subsets of exactly ``n`` texts.

    Vendi grows with the number of items, so compare two datasets at the same ``n`` (the smaller row count).
    Subsets are drawn without replacement; ``n == len(texts)`` needs one draw. Texts are embedded once; with
    ``embed=None`` only distinct-2 is computed (``vendi`` is None). Returns n, draws, vendi, vendi_sd, distinct_2.
    """
    if not 1 <= n <= len(texts):
        raise ValueError(f"n must be in [1, {len(texts)}], got {n}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    draws = 1 if n == len(texts) else draws
    x = _embed(texts, embed) if embed is not None else None
    rng = np.random.default_rng(seed)
    vendi, distinct = [], []
    for _ in range(draws):
        pick = np.sort(rng.choice(len(texts), size=n, replace=False))
        distinct.append(distinct_n([texts[i] for i in pick], 2))
        if x is not None:
            vendi.append(vendi_score(x[pick]))
    return {
        "n": n,
        "draws": draws,
        "vendi": float(np.mean(vendi)) if vendi else None,
        "vendi_sd": float(np.std(vendi)) if vendi else None,
        "distinct_2": float(np.mean(distinct)),
    }


def near_duplicate_rate(
    texts: Sequence[str], embed: Callable[[list[str]], np.ndarray], threshold: float = 0.9
) -> float:
    """Share of texts whose highest cosine similarity to any other text is >= ``threshold`` (0 under two texts)."""
    if len(texts) < 2:
        return 0.0
    x = _unit_rows(_embed(texts, embed))
    step = max(1, BLOCK_ENTRIES // len(x))
    dup = np.zeros(len(x), dtype=bool)
    for start in range(0, len(x), step):
        cosine = x[start : start + step] @ x.T
        rows = np.arange(len(cosine))
        cosine[rows, start + rows] = -np.inf
        dup[start : start + step] = cosine.max(axis=1) >= threshold
    return float(dup.mean())


def action_entropy(actions: Sequence[str], n_actions: int) -> float:
    """Entropy of the empirical action distribution over log(n_actions): 1 for uniform use, 0 for one action."""
    counts = Counter(actions)
    if len(counts) > n_actions:
        raise ValueError(f"{len(counts)} distinct actions but n_actions={n_actions}")
    if n_actions <= 1 or not counts:
        return 0.0
    p = np.asarray(list(counts.values()), dtype=np.float64) / len(actions)
    return float(-np.sum(p * np.log(p)) / np.log(n_actions))


def state_spread(probs: np.ndarray) -> float:
    """Mean over states of KL(p_s || p_bar) in nats, ``probs`` an (n_states, n_actions) array of P(action | state).

    p_bar is the mean row, so this is the mutual information between a uniformly drawn state and the action: 0 for
    a policy that ignores the state, at most log(n_actions). Rows are renormalised to sum to 1.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.size == 0:
        raise ValueError(f"probs must be a non-empty (n_states, n_actions) array, got shape {p.shape}")
    if (p < 0).any() or not np.isfinite(p).all() or (p.sum(axis=1) <= 0).any():
        raise ValueError("probs must be finite, non-negative, with positive row sums")
    p = p / p.sum(axis=1, keepdims=True)
    p_bar = p.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / p_bar), 0.0)
    return float(max(terms.sum(axis=1).mean(), 0.0))


def rows_at_budget(p_keep: float) -> float:
    """Rows per expert call when a fraction ``p_keep`` of rewrites is kept.

    Every rewrite costs one expert call and every kept one a second (its answer), so a budget of B calls buys
    B / (1 + p) rewrites and B * p / (1 + p) rows: p / (1 + p) per call.
    """
    if not 0.0 <= p_keep <= 1.0:
        raise ValueError(f"p_keep must be in [0, 1], got {p_keep}")
    return p_keep / (1.0 + p_keep)


def plot_ratios(rows: Mapping[str, Interval], path: Path, title: str) -> Path:
    """One PNG: each policy's ratio to random as a point with its interval, a dashed line at 1.0, values labelled."""
    plt = pyplot()
    names = list(rows) or ["(none)"]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(names)))
    for y, name in enumerate(names):
        iv = rows.get(name)
        if iv is None or math.isnan(iv.estimate):
            ax.text(1.0, y, "  n/a", va="center", fontsize=8)
            continue
        lo = iv.lo if not math.isnan(iv.lo) else iv.estimate
        hi = iv.hi if not math.isnan(iv.hi) else iv.estimate
        color = "tab:green" if iv.lo > 1.0 else "tab:red" if iv.hi < 1.0 else "tab:blue"
        ax.errorbar(iv.estimate, y, xerr=[[iv.estimate - lo], [hi - iv.estimate]], fmt="o", color=color, capsize=4)
        ax.annotate(
            f"{iv.estimate:.2f} [{lo:.2f}, {hi:.2f}]",
            (hi, y),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ends = [1.0] + [v for iv in rows.values() for v in (iv.lo, iv.hi, iv.estimate) if not math.isnan(v)]
    span = max(max(ends) - min(ends), 0.1)
    ax.set_xlim(min(ends) - 0.1 * span, max(ends) + 0.45 * span)  # room on the right for the labels
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("ratio to random")
    ax.set_title(title, fontsize=10)
    return save(fig, path)


def per_seed_yield(rows: Sequence[Mapping], rejected: Sequence[Mapping]) -> tuple[dict[str, int], dict[str, int]]:
    """Rows kept and expert calls spent per seed id, from a synthesis dataset's rows and rejected rows: a kept row
    cost its rewrite and its answer, a rewrite eliminated before answering one call, an eliminated answer two."""
    kept: Counter = Counter()
    calls: Counter = Counter()
    for r in rows:
        kept[r["seed_id"]] += 1
        calls[r["seed_id"]] += 2
    for r in rejected:
        calls[r["seed_id"]] += 2 if r.get("stage") == "answer" else 1
    return dict(kept), dict(calls)


def compare_datasets(
    ours: tuple[Sequence[Mapping], Sequence[Mapping]],
    base: tuple[Sequence[Mapping], Sequence[Mapping]],
    *,
    n_boot: int = 10_000,
    seed: int = 0,
) -> Interval:
    """Rows per expert call of ``ours`` over ``base`` (each ``(rows, rejected)``), paired over the seeds either
    touched (a seed one side never reached counts 0 rows at 0 calls there)."""
    ours_rows, ours_calls = per_seed_yield(*ours)
    base_rows, base_calls = per_seed_yield(*base)
    units = set(ours_calls) | set(base_calls)

    def full(d: Mapping[str, int]) -> dict[str, float]:
        return {u: float(d.get(u, 0)) for u in units}

    return paired_bootstrap_rate_ratio(
        full(ours_rows), full(ours_calls), full(base_rows), full(base_calls), n_boot=n_boot, seed=seed
    )


def verdict(interval: Interval, name: str = "the policy") -> str:
    """One plain sentence on what an interval of a rows-per-call ratio says."""
    if not math.isfinite(interval.lo):
        return "Too few rows to compare."
    where = (
        f"{interval.estimate:.2f}x random (95% interval {interval.lo:.2f}-{interval.hi:.2f}, {interval.n_units} seeds)"
    )
    subject = name[:1].upper() + name[1:]
    if interval.lo > 1.0:
        return f"{subject} kept more rows per expert call than random: {where}."
    if interval.hi < 1.0:
        return f"{subject} kept fewer rows per expert call than random: {where}."
    return f"This run cannot tell {name} from random: {where}; the interval includes 1."
