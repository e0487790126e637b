"""Policies choose the next action for each state. Every policy implements ``select(states) -> actions``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from teams_rl.env import State
from teams_rl.errors import TeamsRLError


@runtime_checkable
class Policy(Protocol):
    """Picks one action name per state. ``name`` is recorded in every row's lineage."""

    name: str

    def select(self, states: Sequence[State]) -> list[str]: ...


def load_policy(ref: str, actions: Sequence[str], run_seed: int = 0) -> Policy:
    """``random`` (the Evol-Instruct baseline) or a trained policy folder."""
    if ref == "random":
        from teams_rl.policy.random import RandomPolicy

        return RandomPolicy(actions, run_seed)
    raise TeamsRLError(f"unknown policy '{ref}': only 'random' is available until a policy is trained "
                       "(teams-rl train-policy)", field="policy")
