"""The SFT model card: what a model was trained from, on what, how, and with which versions."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml

from teams_rl.core.refs import EMBEDDED, is_embedded, upstream_id
from teams_rl.core.versions import framework_versions


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
