"""The versions of the frameworks a result was made with, for cards and results files."""

from __future__ import annotations

import importlib.metadata

FRAMEWORKS = (
    "teams-rl",
    "trl",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "torch",
    "deepspeed",
    "bitsandbytes",
)


def framework_versions() -> dict[str, str]:
    """Installed version of each framework in ``FRAMEWORKS`` (those not installed are left out)."""
    out = {}
    for name in FRAMEWORKS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out
