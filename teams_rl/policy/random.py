"""The Evol-Instruct baseline: every action equally likely, drawn from a per-row seed."""

from __future__ import annotations

import random
from collections.abc import Sequence

from teams_rl.env.environment import State, derive_seed


class RandomPolicy:
    """Uniform over ``actions``; the draw for a state depends only on (run seed, seed id, step)."""

    name = "random"

    def __init__(self, actions: Sequence[str], run_seed: int = 0):
        self.actions = list(actions)
        self.run_seed = run_seed

    def select(self, states: Sequence[State]) -> list[str]:
        return [
            random.Random(derive_seed(self.run_seed, s.seed_id, s.step, "policy")).choice(self.actions) for s in states
        ]
