"""The saved-weights check: an adapter or model folder must hold real, non-empty tensors (the LoRA + ZeRO-3 trap)."""

from __future__ import annotations

import json
from pathlib import Path

from teams_rl.core.errors import TeamsRLError

ADAPTER_FILE, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
ZERO3_FIX = (
    "with DeepSpeed ZeRO-3 the weights are partitioned and were not gathered at save time: set "
    "`zero3_save_16bit_model: true` under deepspeed_config in the accelerate config (DeepSpeed's "
    "`stage3_gather_16bit_weights_on_model_save`; see TRL #4416 / PEFT #2892), or train with ZeRO-2, "
    "then re-run the same command: it resumes from the last checkpoint"
)


def _tensor_sizes(path: Path) -> dict[str, int]:
    """Element count per tensor of a safetensors file, read from its header (no tensor is loaded)."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    sizes = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in meta["shape"]:
            count *= dim
        sizes[name] = count
    return sizes


def verify_weights(folder: str | Path) -> int:
    """Check that a saved adapter (or full model) holds real tensors; returns the number of parameters.

    LoRA under ZeRO-3 can save a valid but empty ``adapter_model.safetensors`` (40 bytes, no tensors) or tensors
    of shape ``[0]``; training then looks fine and the result is silently the base model. Fail loudly instead.
    """
    folder = Path(folder)
    files = [folder / ADAPTER_FILE] if (folder / ADAPTER_CONFIG).exists() else sorted(folder.glob("*.safetensors"))
    files = [f for f in files if f.exists()]
    if not files:
        raise TeamsRLError(f"no weights were saved; {ZERO3_FIX}", file=str(folder))
    sizes: dict[str, int] = {}
    for path in files:
        sizes.update(_tensor_sizes(path))
    empty = sorted(name for name, n in sizes.items() if n == 0)
    if not sizes or empty:
        what = "holds no tensors" if not sizes else f"has {len(empty)} empty tensors (e.g. {empty[0]})"
        raise TeamsRLError(f"the saved weights are empty: {files[0].name} {what}; {ZERO3_FIX}", file=str(folder))
    return sum(sizes.values())
