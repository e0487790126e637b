"""TRL's ``ModelConfig`` (model, dtype, LoRA and quantization keys) as every training stage's recipe reads it, with
bounds on its numbers."""

from __future__ import annotations

from dataclasses import dataclass

from trl import ModelConfig

from teams_rl.core.bounds import COUNT, POSITIVE, between, bounded


@bounded(lora_r=COUNT, lora_alpha=POSITIVE, lora_dropout=between(0, 1, hi_open=True))
@dataclass
class LoraModelConfig(ModelConfig):
    """TRL's ``ModelConfig``: model_name_or_path, dtype, use_peft, the lora_* keys, load_in_4bit."""
