"""What the SFT stage leaves behind: the saved-weights check, the loss plot and the model card."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml

from teams_rl.errors import TeamsRLError
from teams_rl.models import EMBEDDED, is_embedded, upstream_id

ADAPTER_FILE, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"
ZERO3_FIX = ("with DeepSpeed ZeRO-3 the weights are partitioned and were not gathered at save time: set "
             "`zero3_save_16bit_model: true` under deepspeed_config in the accelerate config (DeepSpeed's "
             "`stage3_gather_16bit_weights_on_model_save`; see TRL #4416 / PEFT #2892), or train with ZeRO-2, "
             "then re-run the same command: it resumes from the last checkpoint")
FRAMEWORKS = ("teams-rl", "trl", "transformers", "peft", "accelerate", "datasets", "torch", "deepspeed",
              "bitsandbytes")


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


def framework_versions() -> dict[str, str]:
    out = {}
    for name in FRAMEWORKS:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def plot_loss(log_history: Sequence[dict], out: str | Path, title: str = "") -> Path | None:
    """A PNG of the training loss per logged step, with the eval loss when there is one."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    from teams_rl.eval_plots import _pyplot, _save

    fig, ax = _pyplot().subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), color="#1f4e79", lw=1.5, marker="." if len(train) < 50 else None,
                label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), color="#c0504d", lw=1.5, marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(f"SFT loss {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, Path(out))


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(*, base_model: str, base_revision: str, kind: str, sources: Sequence[dict], recipe: str | None,
               recipe_sha256: str | None, settings: dict, results: dict, command: str) -> str:
    """The README.md of a trained model: what it was trained from, on what, how, and with which versions."""
    hub_datasets = [s["path"] for s in sources if s.get("kind") == "hub"]
    front = ["---", f"base_model: {base_model}", "library_name: " + ("peft" if kind == "adapter" else "transformers"),
             "pipeline_tag: text-generation", "tags: [teams-rl, trl, sft" + (", lora" if kind == "adapter" else "")
             + "]"]
    if hub_datasets:
        front.append("datasets: [" + ", ".join(hub_datasets) + "]")
    front.append("---")
    lines = [*front, "", f"# {Path(settings['output_dir']).name}", "",
             f"A {'LoRA adapter for' if kind == 'adapter' else 'fine-tune of'} `{base_model}` ({base_revision}), "
             "trained with teams-rl's SFT stage (TRL `SFTTrainer`) on an instruction "
             "dataset built with TeaMs-RL ([arXiv 2403.08694](https://arxiv.org/abs/2403.08694)).", "",
             "## Data", "", "| source | kind | rows | used | revision / hash |", "|---|---|---|---|---|"]
    for s in sources:
        ident = s.get("revision") or s.get("sha256") or s.get("fingerprint") or "unknown"
        prefix = "sha256:" if s.get("sha256") else ""
        lines.append(f"| `{s['path']}` | {s['kind']} | {s['rows']} | {s.get('rows_used', s['rows'])} | "
                     f"`{prefix}{ident}` |")
    lines += ["", "Each row's instruction (plus its input) is the user turn and its answer the assistant turn; the "
              "loss covers the assistant turn only.", "", "## Training", "",
              f"- recipe: `{recipe or '(command-line flags only)'}`"
              + (f" (sha256 `{recipe_sha256[:16]}`)" if recipe_sha256 else ""),
              f"- command: `{command}`"]
    lines += [f"- {key}: {_fmt(value)}" for key, value in settings.items() if key != "output_dir"]
    if results:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in results.items()]
    lines += ["", "## Framework versions", ""]
    lines += [f"- {name} {version}" for name, version in framework_versions().items()]
    if kind == "adapter":
        lines += ["", "## Use", "", "```python", "from peft import AutoPeftModelForCausalLM",
                  "from transformers import AutoTokenizer", "",
                  'model = AutoPeftModelForCausalLM.from_pretrained("PATH/TO/adapter")',
                  'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/adapter")  # carries the chat template used',
                  "```"]
    return "\n".join(lines) + "\n"


def sft_card(model_args, training_args, sources, recipe, argv, template, metrics) -> str:
    """The model card of an SFT run, from its parsed arguments, data provenance and final metrics."""
    world = training_args.world_size
    if not model_args.use_peft:
        method = "full fine-tune"
    elif model_args.load_in_4bit:
        method = f"QLoRA (4-bit {model_args.bnb_4bit_quant_type})"
    else:
        method = "LoRA (8-bit base)" if model_args.load_in_8bit else "LoRA"
    settings = {"output_dir": training_args.output_dir, "method": method}
    if model_args.use_peft:
        settings.update(lora_r=model_args.lora_r, lora_alpha=model_args.lora_alpha,
                        lora_dropout=model_args.lora_dropout, lora_target_modules=model_args.lora_target_modules)
    settings.update(
        epochs=training_args.num_train_epochs, max_steps=training_args.max_steps,
        learning_rate=training_args.learning_rate,
        lr_scheduler=str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        global_batch=training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world,
        processes=world, max_length=training_args.max_length, packing=training_args.packing,
        chat_template=template, loss="assistant turn only (completion_only_loss)", dtype=model_args.dtype,
        seed=training_args.seed)
    digest = hashlib.sha256(Path(recipe).read_bytes()).hexdigest() if recipe and Path(recipe).is_file() else None
    return model_card(base_model=upstream_id(model_args.model_name_or_path), base_revision=_base_revision(model_args),
                      kind="adapter" if model_args.use_peft else "model", sources=sources, recipe=recipe,
                      recipe_sha256=digest, settings=settings, command=command_line(argv),
                      results={k: v for k, v in metrics.items() if v is not None})


def _base_revision(model_args) -> str:
    ref = model_args.model_name_or_path
    if is_embedded(ref):
        return f"embedded {EMBEDDED[ref].filename}, sha256 {EMBEDDED[ref].sha256[:16]}"
    return "a local folder" if os.path.isdir(os.path.expanduser(ref)) else f"revision {model_args.model_revision}"


_SECRET_WORDS = ("token", "key", "secret", "password")


def command_line(argv) -> str:
    """The command for the card, with the value of any flag that names a token or key masked
    (``--hub_token X`` and ``--hub_token=X`` alike)."""
    args = list(argv)
    for i, arg in enumerate(args):
        flag, eq, _ = arg.partition("=")
        if not flag.startswith("--") or not any(w in flag for w in _SECRET_WORDS):
            continue
        if eq:
            args[i] = f"{flag}=***"
        elif i + 1 < len(args):
            args[i + 1] = "***"
    return "teams-rl sft " + shlex.join(args)


def resolved_yaml(script_args, training_args, model_args, mixture) -> str:
    """The resolved recipe for the run folder; ``TrainingArguments.to_dict`` already masks ``*_token`` values."""
    training = {**training_args.to_dict(), "eos_token": training_args.eos_token, "pad_token": training_args.pad_token}
    merged = {**dataclasses.asdict(script_args), **training, **dataclasses.asdict(model_args),
              **dataclasses.asdict(mixture)}
    return yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, default_flow_style=None)
