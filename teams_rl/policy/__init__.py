"""Policies choose the next action for each state. Every policy implements ``select(states) -> actions``. The
instructor LLM's prompt and policy are in ``instructor``, the action head it answers through in ``action_head``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.actions import Action
from teams_rl.env.environment import State


@runtime_checkable
class Policy(Protocol):
    """Picks one action name per state. ``name`` is recorded in every row's lineage."""

    name: str

    def select(self, states: Sequence[State]) -> list[str]: ...


def load_policy(
    ref: str,
    actions: Sequence[Action],
    run_seed: int = 0,
    *,
    sample: bool = False,
    temperature: float | None = None,
) -> Policy:
    """``random`` (the Evol-Instruct baseline) or a policy folder written by ``teams-rl train-policy``.

    ``sample`` draws trained policies' actions (seeded per state) instead of taking the most likely one, at
    ``temperature`` (None: the temperature the policy was trained at).
    """
    if ref == "random":
        from teams_rl.policy.random import RandomPolicy

        return RandomPolicy([a.name for a in actions], run_seed)
    from teams_rl.policy.instructor import read_policy_meta

    kind = read_policy_meta(ref).get("kind")
    if kind == "instructor":
        from teams_rl.policy.instructor import InstructorPolicy

        return InstructorPolicy(ref, actions, sample=sample, temperature=temperature, run_seed=run_seed)
    if kind == "classic":
        from teams_rl.policy.classic import ClassicPolicy

        return ClassicPolicy.load(ref, actions, sample=sample, run_seed=run_seed)
    raise TeamsRLError(f"policy folder '{ref}' has unknown kind '{kind}'", field="policy")
