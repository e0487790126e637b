"""The SFT model card: the facts of a run (what a model was trained from, on what, how, with which versions) kept
as ``card.json`` beside the weights, and the card rendered from them with ``templates/model_card.md``. The Hub stage
renders the same template from the same facts, adding what only it knows (repo, dataset link, evaluation)."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml

from teams_rl.core import secrets
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import atomic_write_text, sha256
from teams_rl.core.markdown import render
from teams_rl.core.recipe_check import inert_keys
from teams_rl.core.refs import EMBEDDED, is_embedded, upstream_id
from teams_rl.core.versions import framework_versions

CARD_FACTS = "card.json"
TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
TAGS = ["teams-rl", "trl", "sft"]


def model_facts(
    *,
    base_model: str,
    base_revision: str,
    kind: str,
    sources: Sequence[dict],
    recipe: str | None,
    recipe_sha256: str | None,
    settings: dict,
    results: dict,
    command: str,
) -> dict:
    """The facts of a trained model, as JSON-ready data: each data source gets one ``ident`` (revision or hash)."""
    shown = []
    for s in sources:
        ident = s.get("revision") or s.get("sha256") or s.get("fingerprint") or "unknown"
        shown.append({**s, "ident": f"sha256:{ident}" if s.get("sha256") else ident})
    return {
        "title": Path(settings["output_dir"]).name,
        "base_model": base_model,
        "base_revision": base_revision,
        "kind": kind,
        "sources": shown,
        "recipe": recipe,
        "recipe_sha256": recipe_sha256,
        "settings": settings,
        "results": results,
        "command": command,
        "versions": framework_versions(),
    }


def sft_facts(model_args, training_args, sources, recipe, argv, template, metrics) -> dict:
    """The facts of an SFT run, from its parsed arguments, data provenance and final metrics."""
    world = training_args.world_size
    if not model_args.use_peft:
        method = "full fine-tune"
    elif model_args.load_in_4bit:
        method = f"QLoRA (4-bit {model_args.bnb_4bit_quant_type})"
    else:
        method = "LoRA (8-bit base)" if model_args.load_in_8bit else "LoRA"
    settings = {"output_dir": training_args.output_dir, "method": method}
    if model_args.use_peft:
        settings.update(
            lora_r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            lora_target_modules=model_args.lora_target_modules,
        )
    settings.update(
        epochs=training_args.num_train_epochs,
        max_steps=training_args.max_steps,
        learning_rate=training_args.learning_rate,
        lr_scheduler=str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        global_batch=training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * world,
        processes=world,
        max_length=training_args.max_length,
        packing=training_args.packing,
        chat_template=template,
        loss="assistant turn only (completion_only_loss)",
        dtype=model_args.dtype,
        seed=training_args.seed,
    )
    digest = sha256(recipe) if recipe and Path(recipe).is_file() else None
    return model_facts(
        base_model=upstream_id(model_args.model_name_or_path),
        base_revision=_base_revision(model_args),
        kind="adapter" if model_args.use_peft else "model",
        sources=sources,
        recipe=recipe,
        recipe_sha256=digest,
        settings=settings,
        command=command_line(argv),
        results={k: v for k, v in metrics.items() if v is not None},
    )


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_model_card(facts: dict, *, hub: dict | None = None, library: str | None = None) -> str:
    """The model card (README.md) from ``facts``. ``hub`` (repo_id, revision, dataset, dataset_link, evaluation,
    plots, recipes) adds the Hub sections; ``library`` overrides the library (a merged adapter is a plain model)."""
    from huggingface_hub import ModelCardData

    kind = facts["kind"]
    datasets = [s["path"] for s in facts["sources"] if s.get("kind") == "hub"]
    if hub and hub.get("dataset"):
        datasets.append(hub["dataset"]["repo_id"])
    metadata = ModelCardData(
        base_model=facts["base_model"],
        pipeline_tag="text-generation",
        library_name=library or ("peft" if kind == "adapter" else "transformers"),
        tags=TAGS + (["lora"] if kind == "adapter" else []),
        datasets=list(dict.fromkeys(datasets)) or None,
    )
    load_args = '"PATH/TO/adapter"'
    if hub:
        load_args = f'"{hub["repo_id"]}"' + (f', revision="{hub["revision"]}"' if hub.get("revision") else "")
    return render(
        TEMPLATE,
        filters={"fmt": _fmt},
        metadata=metadata.to_yaml(),
        facts=facts,
        hub=hub,
        title=hub["repo_id"].split("/")[-1] if hub else facts["title"],
        load_args=load_args,
    )


def read_facts(folder: str | Path) -> dict:
    """The ``card.json`` of a model folder written by ``teams-rl sft``."""
    path = Path(folder) / CARD_FACTS
    if not path.is_file():
        raise TeamsRLError(
            f"no {CARD_FACTS} (the facts of its model card): this SFT output is incomplete or older "
            "than this teams-rl, re-run `teams-rl sft`",
            file=str(folder),
        )
    return json.loads(path.read_text(encoding="utf-8"))


def write_card(folder: str | Path, facts: dict, *, library: str | None = None) -> str:
    """Write ``card.json`` and the README.md rendered from it into ``folder``; returns the card. Keys and URL
    credentials are masked in both (``secrets.mask``)."""
    folder = Path(folder)
    facts = secrets.mask_data(facts)
    card = secrets.mask(render_model_card(facts, library=library))
    atomic_write_text(folder / CARD_FACTS, json.dumps(facts, indent=2, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(folder / "README.md", card)
    return card


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
    return secrets.mask("teams-rl sft " + shlex.join(args))


def resolved_yaml(script_args, training_args, model_args, mixture) -> str:
    """The resolved recipe for the run folder; ``TrainingArguments.to_dict`` already masks ``*_token`` values, and
    URL credentials, keys' values and key shapes are masked too (``secrets.mask_data``)."""
    training = {**training_args.to_dict(), "eos_token": training_args.eos_token, "pad_token": training_args.pad_token}
    merged = {
        **dataclasses.asdict(script_args),
        **training,
        **dataclasses.asdict(model_args),
        **dataclasses.asdict(mixture),
    }
    for key in inert_keys([type(script_args), type(model_args), type(mixture)]):  # so it parses back as a recipe
        merged.pop(key, None)
    return yaml.safe_dump(secrets.mask_data(merged), sort_keys=False, allow_unicode=True, default_flow_style=None)
