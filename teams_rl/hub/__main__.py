"""``python -m teams_rl.hub``: the same as the ``teams-rl`` command of this stage."""

from teams_rl.core.entry import stage_main

stage_main("teams_rl.hub.command:cli")
