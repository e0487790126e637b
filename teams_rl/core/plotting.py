"""Matplotlib without a window, and PNGs written atomically: the one way every stage saves a plot."""

from __future__ import annotations

from pathlib import Path

from teams_rl.core.files import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, never a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as a PNG (atomically) and close it."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.tight_layout()
            fig.savefig(tmp, dpi=110)
    finally:
        pyplot().close(fig)
    return path
