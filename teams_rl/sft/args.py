"""The SFT recipe: TRL's own dataclasses (``ScriptArguments``, ``SFTConfig``, ``ModelConfig``, dataset mixtures)
plus the few keys teams-rl adds, parsed from one flat YAML with file:line errors."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from trl import ScriptArguments, SFTConfig
from trl.scripts.utils import DatasetConfig, DatasetMixtureConfig

from teams_rl.core.bounds import COUNT, POSITIVE, TRAINING_ARGUMENTS, at_least, between, bounded
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.recipe_check import recipe_line, validate_recipe
from teams_rl.core.recipes import inert, parse_args
from teams_rl.llm.model_config import LoraModelConfig
from teams_rl.sft.data import check_mixture_entries


@bounded()
@dataclass
class SFTScriptArguments(ScriptArguments):
    """TRL's script arguments (``dataset_name``, ``dataset_config``, ``dataset_train_split``) plus how rows become
    chats and what is written after training. The eval split is carved out by ``test_split_size``."""

    dataset_test_split: str = inert("test")
    dataset_streaming: bool = inert(False)
    ignore_bias_buffers: bool = inert(False)
    instruction_column: str = field(default="instruction", metadata={"help": "Column with the instruction."})
    input_column: str = field(default="input", metadata={"help": "Optional column with the instruction's input."})
    response_column: str = field(default="response", metadata={"help": "Column with the answer to learn."})
    chat_template: str = field(
        default="auto",
        metadata={
            "help": "auto: the base's own template, ChatML when it has none; model: require the base's own; chatml: "
            "always ChatML (turns end with <|im_end|> if the vocabulary has it, else with the base's EOS).",
            "choices": ["auto", "model", "chatml"],
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "A finished model (or checkpoints) in output_dir made by another recipe is refused; true moves "
            "them to OUTPUT_DIR/superseded/ and trains anew. The same recipe skips a finished model and resumes "
            "from its checkpoints."
        },
    )
    save_merged: bool = field(
        default=False,
        metadata={
            "help": "LoRA: also write the base with the adapter merged in to <output_dir>/merged (full precision)."
        },
    )


@bounded(
    **TRAINING_ARGUMENTS,
    router_aux_loss_coef=at_least(0),
    dataset_num_proc=COUNT,
    max_length=COUNT,
    pad_to_multiple_of=COUNT,
)
@dataclass
class TeamsSFTConfig(SFTConfig):
    """TRL's ``SFTConfig`` with teams-rl defaults (LoRA-sized learning rate, tensorboard, a run folder)."""

    output_dir: str | None = field(
        default="runs/sft", metadata={"help": "Run folder: checkpoints, adapter/, merged/, plots/, README.md, logs."}
    )
    learning_rate: float = field(
        default=2e-4, metadata={"bound": POSITIVE, "help": "Peak AdamW learning rate (LoRA-sized)."}
    )
    report_to: None | str | list[str] = field(
        default="tensorboard",
        metadata={"help": "tensorboard (installed), or trackio / wandb when installed, or none."},
    )
    # None, not TRL's True: transformers 5 renamed it activation_checkpointing and warns on every run otherwise.
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."}
    )
    activation_checkpointing: bool | None = field(
        default=True,
        metadata={
            "help": "Gradient (activation) checkpointing: recompute activations in the backward pass to save memory."
        },
    )


@bounded(test_split_size=between(0, 1, hi_open=True))  # 0: no eval split
@dataclass
class SplitMixtureConfig(DatasetMixtureConfig):
    """TRL's dataset mixture (``datasets``, ``streaming``, ``test_split_size``), with the split fraction bounded."""


CONFIG_CLASSES = (SFTScriptArguments, TeamsSFTConfig, LoraModelConfig, SplitMixtureConfig)


def parse(argv: list[str]):
    """Recipe + CLI flags → the four dataclasses (CLI wins); bad keys fail with the recipe's file and line."""
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        recipe = argv[argv.index("--config") + 1]
        try:
            check_mixture_entries(validate_recipe(recipe, CONFIG_CLASSES).get("datasets"), DatasetConfig)
        except TeamsRLError as err:
            raise err.located(recipe, recipe_line(recipe, "datasets")) from None
    return parse_args(CONFIG_CLASSES, argv, "teams-rl sft")


def check_setup(training_args, model_args) -> None:
    wanted = training_args.report_to or []
    for name in [wanted] if isinstance(wanted, str) else wanted:
        module = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise TeamsRLError(f"report_to {name} needs its package: pip install {name}", field="report_to")
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise TeamsRLError(
            "a 4/8-bit base can only be trained through an adapter: set use_peft: true", field="load_in_4bit"
        )
    if (model_args.load_in_4bit or model_args.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
        raise TeamsRLError("QLoRA needs bitsandbytes: pip install 'teams-rl[gpu]'", field="load_in_4bit")
