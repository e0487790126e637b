"""Stage 3, supervised fine-tuning of a Llama-family model on a teams-rl dataset with TRL's ``SFTTrainer``:

    accelerate launch --config_file accelerate_configs/<cfg>.yaml -m teams_rl.sft --config recipes/<model>/sft/X.yaml
    teams-rl sft --config recipes/<model>/sft/X.yaml [--key value ...]

LoRA (``use_peft``), QLoRA (``load_in_4bit``) or a full fine-tune; the training itself is TRL's. The run folder
(``output_dir``) ends up with ``adapter/`` (LoRA) or ``model/`` (full), optional ``merged/``, ``checkpoint-*``,
``plots/loss.png``, ``config/sft.yaml``, ``README.md`` (the model card) and the tensorboard logs in ``runs/``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from accelerate import PartialState
from transformers import set_seed
from trl import SFTTrainer, get_peft_config

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import atomic_folder, swap_in
from teams_rl.core.guard import SUPERSEDED_DIR, claim, output_lock
from teams_rl.core.plotting import pyplot, save
from teams_rl.core.recipe_check import located
from teams_rl.core.refs import resolve_model
from teams_rl.sft.args import check_setup, parse
from teams_rl.sft.card import resolved_yaml, sft_facts, write_card
from teams_rl.sft.data import Columns, load_mixture
from teams_rl.sft.model import base_model, chat_tokenizer
from teams_rl.sft.weights import verify_weights

logger = logging.getLogger(__name__)


def build_trainer(script_args, training_args, model_args, mixture, callbacks=None):
    """Data, tokenizer, model and TRL's ``SFTTrainer``, ready to train. Returns the trainer, each data source's
    provenance, the chat template used and the resolved base path."""
    if not model_args.model_name_or_path:
        raise TeamsRLError("set model_name_or_path (a Hub id, a folder or smollm2-135m)", field="model_name_or_path")
    path = resolve_model(model_args.model_name_or_path, field="model_name_or_path")
    columns = Columns(script_args.instruction_column, script_args.input_column, script_args.response_column)
    train_set, eval_set, sources = load_mixture(
        script_args, mixture, columns, training_args.seed, want_eval=training_args.eval_strategy != "no"
    )
    tokenizer, template = chat_tokenizer(path, script_args, training_args, model_args)
    set_seed(training_args.seed)  # SFTTrainer wraps the model in LoRA before Trainer seeds torch: seed it first
    model = base_model(path, model_args, training_args, tokenizer)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=callbacks,
    )
    return trainer, sources, template, path


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest ``checkpoint-N`` that was fully written. The Trainer writes trainer_state.json last, so a folder
    without it is a save cut short by a kill; resuming from it would crash, so the one before it is used."""
    steps = sorted(
        (
            (int(p.name.split("-")[1]), p)
            for p in out.glob("checkpoint-*")
            if p.is_dir() and p.name.split("-")[1].isdigit()
        ),
        reverse=True,
    )
    for _, folder in steps:
        if (folder / "trainer_state.json").is_file():
            return str(folder)
        logger.warning("%s was not fully written (killed while saving?); resuming from an earlier one", folder)
    return None


def run(script_args, training_args, model_args, mixture, *, recipe: str | None = None, argv=(), callbacks=None):
    """Fine-tune; returns the final folder (``adapter/`` or ``model/``) on the main process, else None."""
    check_setup(training_args, model_args)
    out = Path(training_args.output_dir)
    final = out / ("adapter" if model_args.use_peft else "model")
    with output_lock(out, "sft"):
        # A finished model, or checkpoints a resume would start from: either must come from this recipe.
        checkpoint = last_complete_checkpoint(out) if out.is_dir() else None
        marker = final / "README.md" if (final / "README.md").exists() or not checkpoint else Path(checkpoint)
        claim(
            root=out,
            finished=marker,
            record=out / "config" / "sft.yaml",
            config=resolved_yaml(script_args, training_args, model_args, mixture),
            outputs=[p for p in out.iterdir() if p.name not in (SUPERSEDED_DIR, "config", ".sft.lock")],
            overwrite=script_args.overwrite,
        )
        PartialState().wait_for_everyone()  # the other ranks start once rank 0 has claimed the folder
        if (final / "README.md").exists():
            logger.warning("%s is complete for this recipe; skipping (--overwrite true trains it again)", final)
            return final
        return _train(script_args, training_args, model_args, mixture, recipe, argv, callbacks, out, final)


def _train(script_args, training_args, model_args, mixture, recipe, argv, callbacks, out: Path, final: Path):
    trainer, sources, template, path = build_trainer(script_args, training_args, model_args, mixture, callbacks)
    tokenizer, eval_set = trainer.processing_class, trainer.eval_dataset
    last = last_complete_checkpoint(out)
    resume = training_args.resume_from_checkpoint or last
    if resume:
        logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }
    if eval_set is not None:
        evals = [h for h in trainer.state.log_history if "eval_loss" in h]
        done = evals and evals[-1].get("step") == result.global_step  # eval_strategy already ran it at the end
        metrics["eval_loss"] = evals[-1]["eval_loss"] if done else trainer.evaluate().get("eval_loss")

    # --- Save: every process takes part (ZeRO-3 gathers), the main process checks and publishes ---------------------
    staging = out / f".{final.name}.saving"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if not trainer.is_world_process_zero():
        return None
    metrics["saved_parameters"] = verify_weights(staging)
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle of every argument: not for publishing
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    base = unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped
    base.generation_config.save_pretrained(staging)
    facts = sft_facts(model_args, training_args, sources, recipe, argv, template, metrics)
    write_card(staging, facts)
    swap_in(staging, final)
    write_card(out, facts)
    if script_args.save_merged and model_args.use_peft:
        _merge(final, path, model_args, training_args, tokenizer, out / "merged", facts)
    plot_loss(trainer.state.log_history, out / "plots" / "loss.png", title=out.name)
    logger.info(
        "SFT done: %s (%s)", final, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    )
    return final


def _merge(adapter: Path, base_path: str, model_args, training_args, tokenizer, target: Path, facts: dict) -> None:
    """Reload the base unquantized, apply the adapter, merge it into the weights and save a standalone model."""
    from peft import PeftModel
    from transformers import GenerationConfig

    base = base_model(base_path, model_args, training_args, tokenizer, quantized=False)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.generation_config = GenerationConfig.from_pretrained(adapter)
    with atomic_folder(target) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_card(tmp, facts, library="transformers")  # the adapter merged in: a plain transformers model
    verify_weights(target)


def plot_loss(log_history: Sequence[dict], out: str | Path, title: str = "") -> Path | None:
    """A PNG of the training loss per logged step, with the eval loss when there is one."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    fig, ax = pyplot().subplots(figsize=(7, 4))
    if train:
        ax.plot(
            *zip(*train, strict=True),
            color="#1f4e79",
            lw=1.5,
            marker="." if len(train) < 50 else None,
            label="train loss",
        )
    if evals:
        ax.plot(*zip(*evals, strict=True), color="#c0504d", lw=1.5, marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(f"SFT loss {title}".strip())
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save(fig, out)


def main(argv: list[str] | None = None, *, callbacks=None) -> Path | None:
    """Parse the recipe and flags, then fine-tune; returns the final folder on the main process."""
    (script_args, training_args, model_args, mixture), recipe = parse(list(argv or []))
    with located(recipe):
        return run(
            script_args, training_args, model_args, mixture, recipe=recipe, argv=list(argv or []), callbacks=callbacks
        )


def cli(argv: list[str]) -> None:
    """``teams-rl sft`` / ``python -m teams_rl.sft``."""
    folder = main(argv)
    if folder is not None:
        print(f"model saved to {folder}; its card is {folder / 'README.md'}")
