"""teams-rl: RL-steered instruction-dataset synthesis (TeaMs-RL) and LoRA fine-tuning with TRL."""

__version__ = "0.1.0"
