"""``python -m teams_rl.policy`` (and ``accelerate launch -m teams_rl.policy``): ``teams-rl train-policy``."""

from teams_rl.core.entry import stage_main

stage_main("teams_rl.policy.train:cli")
