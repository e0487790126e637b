"""``python -m teams_rl.policy --config ...`` (and ``accelerate launch -m teams_rl.policy ...``): train a policy."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP threads starve small CPUs
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from teams_rl.cli import run_stage  # noqa: E402
from teams_rl.policy.train import main  # noqa: E402

raise SystemExit(run_stage(main))
