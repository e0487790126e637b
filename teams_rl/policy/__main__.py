"""``python -m teams_rl.policy --config ...`` (and ``accelerate launch -m teams_rl.policy ...``): the same as
``teams-rl train-policy``, summary tables included."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads starve small CPUs
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from teams_rl.cli import HANDLERS, run_stage  # noqa: E402

raise SystemExit(run_stage(HANDLERS["train-policy"]))
