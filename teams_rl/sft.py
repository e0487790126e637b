"""Stage 3, supervised fine-tuning of a Llama-family model on a teams-rl dataset with TRL's ``SFTTrainer``:

    accelerate launch --config_file accelerate_configs/<cfg>.yaml -m teams_rl.sft --config recipes/<model>/sft/X.yaml
    teams-rl sft --config recipes/<model>/sft/X.yaml [--key value ...]

LoRA (``use_peft``), QLoRA (``load_in_4bit``) or a full fine-tune; the training itself is TRL's. The run folder
(``output_dir``) ends up with ``adapter/`` (LoRA) or ``model/`` (full), optional ``merged/``, ``checkpoint-*``,
``plots/loss.png``, ``config/sft.yaml``, ``README.md`` (the model card) and the tensorboard logs in ``runs/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads starve 2-core CPUs

import importlib.util  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer, get_peft_config, get_quantization_config  # noqa: E402
from trl.scripts.utils import DatasetConfig, DatasetMixtureConfig  # noqa: E402

from teams_rl.configs import parse_args, recipe_line, validate_recipe  # noqa: E402
from teams_rl.dataset_io import atomic_folder, atomic_write_text  # noqa: E402
from teams_rl.errors import TeamsRLError  # noqa: E402
from teams_rl.models import resolve_model  # noqa: E402
from teams_rl.sft_data import Columns, check_mixture_entries, load_mixture  # noqa: E402
from teams_rl.sft_outputs import plot_loss, resolved_yaml, sft_card, verify_weights  # noqa: E402

logger = logging.getLogger(__name__)


# --- Configuration: TRL's dataclasses, plus the few keys teams-rl adds --------------------------------------------
@dataclass
class SFTScriptArguments(ScriptArguments):
    """TRL's script arguments (``dataset_name`` ...) plus how rows become chats and what is written after training."""

    instruction_column: str = field(default="instruction", metadata={"help": "Column with the instruction."})
    input_column: str = field(default="input", metadata={"help": "Optional column with the instruction's input."})
    response_column: str = field(default="response", metadata={"help": "Column with the answer to learn."})
    chat_template: str = field(default="auto", metadata={
        "help": "auto: the base's own template, ChatML when it has none; model: require the base's own; chatml: "
                "always ChatML (turns end with <|im_end|> if the vocabulary has it, else with the base's EOS).",
        "choices": ["auto", "model", "chatml"]})
    save_merged: bool = field(default=False, metadata={"help": "LoRA: also write the base with the adapter merged "
                                                                "in to <output_dir>/merged (full precision)."})


@dataclass
class TeamsSFTConfig(SFTConfig):
    """TRL's ``SFTConfig`` with teams-rl defaults (LoRA-sized learning rate, tensorboard, a run folder)."""

    output_dir: str | None = field(default="runs/sft", metadata={"help": "Run folder: checkpoints, adapter/, "
                                                                         "merged/, plots/, README.md, logs."})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak AdamW learning rate (LoRA-sized)."})
    report_to: None | str | list[str] = field(default="tensorboard", metadata={
        "help": "tensorboard (installed), or trackio / wandb when installed, or none."})
    # None, not TRL's True: transformers 5 renamed it activation_checkpointing and warns on every run otherwise.
    gradient_checkpointing: bool | None = field(default=None, metadata={
        "help": "Deprecated alias of activation_checkpointing."})
    activation_checkpointing: bool | None = field(default=True, metadata={
        "help": "Gradient (activation) checkpointing: recompute activations in the backward pass to save memory."})


CONFIG_CLASSES = (SFTScriptArguments, TeamsSFTConfig, ModelConfig, DatasetMixtureConfig)


def parse(argv: list[str]):
    """Recipe + CLI flags → the four dataclasses (CLI wins); bad keys fail with the recipe's file and line."""
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        recipe = argv[argv.index("--config") + 1]
        try:
            check_mixture_entries(validate_recipe(recipe, CONFIG_CLASSES).get("datasets"), DatasetConfig)
        except TeamsRLError as err:
            raise err.located(recipe, recipe_line(recipe, "datasets")) from None
    return parse_args(CONFIG_CLASSES, argv, "teams-rl sft")


def _check_setup(training_args, model_args) -> None:
    wanted = training_args.report_to or []
    for name in [wanted] if isinstance(wanted, str) else wanted:
        module = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise TeamsRLError(f"report_to {name} needs its package: pip install {name}", field="report_to")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise TeamsRLError("a 4/8-bit base can only be trained through an adapter: set use_peft: true",
                           field="load_in_4bit")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        raise TeamsRLError("QLoRA needs bitsandbytes: pip install 'teams-rl[gpu]'", field="load_in_4bit")


# --- Tokenizer and chat template -----------------------------------------------------------------------------------
def chatml_template(tokenizer) -> str:
    """ChatML for a base without a template. If ``<|im_end|>`` is not one token of its vocabulary (Llama-2/3
    bases), each turn ends with the base's own EOS instead: no new tokens, so LoRA needs no resized embeddings,
    and the model learns to stop on a token it already knows."""
    from teams_rl.llm.transformers_backend import CHATML_TEMPLATE

    if "<|im_end|>" in tokenizer.get_vocab():
        return CHATML_TEMPLATE
    bos = "{{ bos_token }}" if tokenizer.bos_token else ""
    return (bos + "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def end_of_turn(tokenizer) -> str | None:
    """The special token the chat template writes right after an assistant answer (the token to stop on)."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "PROBE"}]
    text = tokenizer.apply_chat_template(probe, tokenize=False)
    after = text[text.rindex("PROBE") + len("PROBE"):]
    specials = {*tokenizer.all_special_tokens, *tokenizer.get_added_vocab()}
    return next((s for s in sorted(specials, key=len, reverse=True) if s and after.startswith(s)), None)


def load_tokenizer(path: str, script_args, training_args, model_args):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    own = bool(tokenizer.chat_template)
    if script_args.chat_template == "model" and not own:
        raise TeamsRLError("the base model has no chat template; use chat_template: auto or chatml",
                           field="chat_template")
    if script_args.chat_template == "chatml" or not own:
        tokenizer.chat_template = chatml_template(tokenizer)
    eot = training_args.eos_token or end_of_turn(tokenizer)
    if eot is None:
        logger.warning("the chat template ends answers with no special token; generation may not stop")
    elif eot != tokenizer.eos_token:
        logger.info("EOS aligned with the chat template's end of turn: %s -> %s", tokenizer.eos_token, eot)
        tokenizer.eos_token = eot
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, ("model's own" if own and script_args.chat_template != "chatml" else "ChatML (teams-rl)")


# --- Model ---------------------------------------------------------------------------------------------------------
def load_model(path: str, model_args, training_args, tokenizer, quantized: bool = True):
    import torch
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    kwargs = {"revision": model_args.model_revision, "dtype": dtype, "trust_remote_code": training_args.trust_remote_code,
              "attn_implementation": model_args.attn_implementation}
    quantization = get_quantization_config(model_args) if quantized else None
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        # Each process holds its own quantized copy on its own GPU (DDP); on a CPU-only machine it stays on CPU.
        kwargs["device_map"] = {"": PartialState().local_process_index} if torch.cuda.is_available() else None
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = not training_args.activation_checkpointing
    # Stop on the end-of-turn token as well as the base's own EOS; pad with the tokenizer's pad.
    eos = model.generation_config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    model.generation_config.eos_token_id = list(dict.fromkeys([tokenizer.eos_token_id, *eos]))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


# --- Train ---------------------------------------------------------------------------------------------------------
def build_trainer(script_args, training_args, model_args, mixture, callbacks=None):
    """Data, tokenizer, model and TRL's ``SFTTrainer``, ready to train. Returns the trainer, each data source's
    provenance, the chat template used and the resolved base path."""
    if not model_args.model_name_or_path:
        raise TeamsRLError("set model_name_or_path (a Hub id, a folder or smollm2-135m)", field="model_name_or_path")
    path = resolve_model(model_args.model_name_or_path, field="model_name_or_path")
    columns = Columns(script_args.instruction_column, script_args.input_column, script_args.response_column)
    train_set, eval_set, sources = load_mixture(script_args, mixture, columns, training_args.seed,
                                                want_eval=training_args.eval_strategy != "no")
    tokenizer, template = load_tokenizer(path, script_args, training_args, model_args)
    model = load_model(path, model_args, training_args, tokenizer)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, peft_config=get_peft_config(model_args), callbacks=callbacks)
    return trainer, sources, template, path


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest ``checkpoint-N`` that was fully written. The Trainer writes trainer_state.json last, so a folder
    without it is a save cut short by a kill; resuming from it would crash, so the one before it is used."""
    steps = sorted(((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*")
                    if p.is_dir() and p.name.split("-")[1].isdigit()), reverse=True)
    for _, folder in steps:
        if (folder / "trainer_state.json").is_file():
            return str(folder)
        logger.warning("%s was not fully written (killed while saving?); resuming from an earlier one", folder)
    return None


def run(script_args, training_args, model_args, mixture, *, recipe: str | None = None, argv=(), callbacks=None):
    """Fine-tune; returns the final folder (``adapter/`` or ``model/``) on the main process, else None."""
    _check_setup(training_args, model_args)
    out = Path(training_args.output_dir)
    final = out / ("adapter" if model_args.use_peft else "model")
    if (final / "README.md").exists():
        logger.warning("%s is complete; skipping (delete it to train again)", final)
        return final
    trainer, sources, template, path = build_trainer(script_args, training_args, model_args, mixture, callbacks)
    tokenizer, eval_set = trainer.processing_class, trainer.eval_dataset
    last = last_complete_checkpoint(out)
    resume = training_args.resume_from_checkpoint or last
    if resume:
        logger.info("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = {"train_loss": result.training_loss, "steps": result.global_step,
               "train_runtime_s": result.metrics.get("train_runtime")}
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
    card = sft_card(model_args, training_args, sources, recipe, argv, template, metrics)
    atomic_write_text(staging / "README.md", card)
    _swap_in(staging, final)
    atomic_write_text(out / "README.md", card)
    if script_args.save_merged and model_args.use_peft:
        _merge(final, path, model_args, training_args, tokenizer, out / "merged", card)
    plot_loss(trainer.state.log_history, out / "plots" / "loss.png", title=out.name)
    atomic_write_text(out / "config" / "sft.yaml", resolved_yaml(script_args, training_args, model_args, mixture))
    logger.info("SFT done: %s (%s)", final, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()
                                                       if isinstance(v, float)))
    return final


def _swap_in(staging: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _merge(adapter: Path, base_path: str, model_args, training_args, tokenizer, target: Path, card: str) -> None:
    """Reload the base unquantized, apply the adapter, merge it into the weights and save a standalone model."""
    from peft import PeftModel
    from transformers import GenerationConfig

    base = load_model(base_path, model_args, training_args, tokenizer, quantized=False)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.generation_config = GenerationConfig.from_pretrained(adapter)
    with atomic_folder(target) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card.replace("library_name: peft", "library_name: transformers"), "utf-8")
    verify_weights(target)


def main(argv: list[str] | None = None, *, callbacks=None) -> Path | None:
    """``teams-rl sft`` / ``python -m teams_rl.sft``: parse the recipe and flags, then fine-tune."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    (script_args, training_args, model_args, mixture), recipe = parse(argv)
    try:
        return run(script_args, training_args, model_args, mixture, recipe=recipe, argv=argv, callbacks=callbacks)
    except TeamsRLError as err:
        # A bad value set in the recipe: point at its line there (not when the error already names its own file,
        # e.g. a dataset's, nor when the value came from a command-line flag).
        line = recipe_line(recipe, (err.field or "").split("[")[0].split(".")[0] or None)
        if err.file is None and line is not None:
            err.located(recipe, line)
        raise err from None


if __name__ == "__main__":
    from teams_rl.cli import run_stage

    raise SystemExit(run_stage(main))
