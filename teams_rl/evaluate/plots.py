"""PNG plots for the evaluation stage: dataset histograms, length distributions, action mix, reviewer scores,
benchmark bars (base vs tuned) and membership-inference ROC curves. Each file is written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from teams_rl.core.plotting import pyplot, save
from teams_rl.env.chat import user_content


def _bars(ax, counts: dict, title: str, color: str = "tab:blue", ylabel: str = "rows") -> None:
    labels = [str(k) for k in counts] or ["(none)"]
    values = list(counts.values()) or [0]
    bars = ax.bar(range(len(labels)), values, color=color)
    ax.bar_label(bars, fontsize=8)
    ax.margins(y=0.12)
    ax.set_xticks(
        range(len(labels)),
        labels,
        rotation=30 if max(map(len, labels)) > 6 else 0,
        ha="right" if max(map(len, labels)) > 6 else "center",
        fontsize=8,
    )
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)


def action_mix(metrics: dict, path: Path) -> Path:
    """Kept vs eliminated rewrites per action (stacked)."""
    plt = pyplot()
    kept, dropped = metrics["actions"]["kept"], metrics["actions"]["eliminated"]
    names = sorted(set(kept) | set(dropped)) or ["(none)"]
    fig, ax = plt.subplots(figsize=(7, 4))
    k = [kept.get(n, 0) for n in names]
    d = [dropped.get(n, 0) for n in names]
    ax.bar(names, k, label="kept (last action of a row)", color="tab:green")
    ax.bar(names, d, bottom=k, label="eliminated", color="tab:red", alpha=0.7)
    ax.set_ylabel("rewrites")
    ax.set_title("Action mix")
    ax.margins(y=0.12)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.legend(fontsize=8)
    return save(fig, path)


def lengths(rows: Sequence[dict], path: Path) -> Path:
    """Histograms of instruction (with input) and response lengths in words."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    series = {
        "instruction + input": [
            len(user_content(r.get("instruction", ""), r.get("input") or "").split()) for r in rows
        ],
        "response": [len(str(r.get("response", "")).split()) for r in rows],
    }
    for ax, (name, values) in zip(axes, series.items(), strict=True):
        ax.hist(values or [0], bins=min(30, max(5, len(values) // 3)), color="tab:blue", edgecolor="white")
        ax.set_title(f"{name} length (n={len(values)})", fontsize=10)
        ax.set_xlabel("words")
        ax.set_ylabel("rows")
    return save(fig, path)


def overview(metrics: dict, path: Path) -> Path:
    """Depth histogram and elimination reasons side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    _bars(axes[0], metrics["depth"], "Rows by evolution depth")
    axes[0].set_xlabel("depth (kept rewrites)")
    _bars(
        axes[1],
        metrics["eliminated"],
        "Eliminated rewrites and answers by reason",
        color="tab:red",
        ylabel="eliminated",
    )
    return save(fig, path)


def scores(rows: Sequence[dict], path: Path) -> Path | None:
    """Histogram of each reviewer score column of the kept rows (None when the rows carry no scores)."""
    columns = sorted({k for r in rows for k in r if k.startswith("score_")})
    if not columns:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        values = [r[column] for r in rows if r.get(column) is not None]
        ax.hist(values or [0], bins=20, range=(0, 1), color="tab:purple", edgecolor="white")
        ax.set_title(f"{column.removeprefix('score_')} (kept rows)", fontsize=10)
        ax.set_xlabel("score")
        ax.set_ylabel("rows")
    return save(fig, path)


def dataset_plots(metrics: dict, rows: Sequence[dict], folder: Path) -> list[Path]:
    """Every dataset plot into ``folder``."""
    written = [
        action_mix(metrics, folder / "actions.png"),
        lengths(rows, folder / "lengths.png"),
        overview(metrics, folder / "depth_and_eliminations.png"),
        scores(rows, folder / "scores.png"),
    ]
    return [p for p in written if p is not None]


def benchmarks(rows: Sequence[dict], path: Path) -> Path:
    """Base vs tuned score per task and metric, with stderr bars."""
    import numpy as np

    plt = pyplot()
    labels = [f"{r['task']}\n{r['metric']}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(rows)), 3.8))
    for offset, key, color in ((-0.2, "base", "tab:gray"), (0.2, "tuned", "tab:blue")):
        if all(r[key] is None for r in rows):  # base only
            continue
        values = [r[key] if r[key] is not None else 0 for r in rows]
        errors = [r[f"{key}_stderr"] or 0 for r in rows]
        ax.bar(x + offset, values, 0.4, yerr=errors, capsize=3, label=key, color=color)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("score")
    top = max([(r[k] or 0) + (r[f"{k}_stderr"] or 0) for r in rows for k in ("base", "tuned")] + [1.0])
    ax.set_ylim(0, top * 1.18)  # headroom for the legend above the bars
    ax.set_title("lm-eval: base vs tuned (± stderr)")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    return save(fig, path)


def roc(curves: dict[str, dict], path: Path, title: str = "Membership inference ROC") -> Path:
    """ROC curves: ``{label: {"roc": {"fpr": [...], "tpr": [...]}, "auc": x}}``, with the chance diagonal."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="chance (AUC 0.5)")
    for label, curve in curves.items():
        ax.plot(curve["roc"]["fpr"], curve["roc"]["tpr"], linewidth=1.6, label=f"{label} (AUC {curve['auc']:.3f})")
    ax.set_xlabel("false positive rate (non-members flagged)")
    ax.set_ylabel("true positive rate (members flagged)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower right")
    return save(fig, path)


def action_mix_by_policy(metrics_by_policy: dict[str, dict], path: Path) -> Path:
    """Actions each policy chose (kept + eliminated) and kept, side by side: what the trained policy changed."""
    import numpy as np

    plt = pyplot()
    names = sorted(
        {a for m in metrics_by_policy.values() for part in ("kept", "eliminated") for a in m["actions"][part]}
    )
    names = names or ["(none)"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    x, width = np.arange(len(names)), 0.8 / max(len(metrics_by_policy), 1)
    for i, (label, m) in enumerate(metrics_by_policy.items()):
        kept, dropped = m["actions"]["kept"], m["actions"]["eliminated"]
        chosen = [kept.get(n, 0) + dropped.get(n, 0) for n in names]
        for ax, values in zip(axes, (chosen, [kept.get(n, 0) for n in names]), strict=True):
            ax.bar(x + (i - (len(metrics_by_policy) - 1) / 2) * width, values, width, label=label)
    for ax, title in zip(axes, ("Rewrites chosen (last action)", "Rows kept"), strict=True):
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("rewrites")
    fig.suptitle("Action mix per policy (same seeds, same models)")
    return save(fig, path)
