"""PNG plots of a policy's training: the reward curve and the action mix over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from teams_rl.core.plotting import pyplot, save

PLOT_FILES = ("reward.png", "action_mix.png")  # what plot_training writes, in this order


def _smooth(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_training(history: Sequence[dict], out_dir: str | Path, title: str = "") -> list[Path]:
    """``history``: one ``StepStats.log_dict(prefix="")`` per step. Writes reward.png and action_mix.png."""
    plt = pyplot()
    out_dir = Path(out_dir)
    if not history:
        return []
    steps = list(range(1, len(history) + 1))
    window = max(1, len(history) // 10)

    fig, ax = plt.subplots(figsize=(7, 4))
    reward = [h.get("reward_mean", 0.0) for h in history]
    ax.plot(steps, reward, color="#9bb7d4", lw=1, label="reward (per step)")
    ax.plot(steps, _smooth(reward, window), color="#1f4e79", lw=2, label=f"reward (mean of {window})")
    accept = [h.get("acceptance_rate", 0.0) for h in history]
    ax.plot(steps, _smooth(accept, window), color="#2e7d32", lw=1.5, ls="--", label="acceptance rate")
    ax.set_xlabel("training step")
    ax.set_ylabel("reward / rate")
    ax.set_title(f"Reward {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    written = [save(fig, out_dir / PLOT_FILES[0])]

    names = sorted({k[len("action_") :] for h in history for k in h if k.startswith("action_")})
    if names:
        fig, ax = plt.subplots(figsize=(7, 4))
        mix = [[h.get(f"action_{n}", 0.0) for h in history] for n in names]
        ax.stackplot(
            steps, *[_smooth(m, window) for m in mix], labels=[n.replace("_", " ") for n in names], alpha=0.85
        )
        ax.set_xlabel("training step")
        ax.set_ylabel("share of parsed answers")
        ax.set_ylim(0, 1)
        ax.set_title(f"Action mix {title}".strip())
        ax.legend(loc="upper left", fontsize=7, ncol=2)
        written.append(save(fig, out_dir / PLOT_FILES[1]))
    return written


def plot_headroom(summary: dict, path: str | Path) -> Path:
    """Keep rate per action (bars) against uniform random, the best single action and the per-state oracle."""
    plt = pyplot()
    per_action = summary["per_action"]
    names = list(per_action)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(range(len(names)), [per_action[n]["keep_rate"] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=20, ha="right")
    rates = summary["keep_rates"]
    for key, style in (("uniform", "k--"), ("best_single", "g:"), ("oracle", "r-.")):
        ax.axhline(rates[key], linestyle=style[1:], color=style[0], label=f"{key.replace('_', ' ')} {rates[key]:.2f}")
    ax.set_ylim(0, 1)
    ax.set_ylabel("keep rate")
    ax.set_title(f"Headroom: {summary['states']} states, {summary['samples_per_cell']} samples per action")
    ax.legend(loc="upper right", fontsize=8)
    return save(fig, path)
