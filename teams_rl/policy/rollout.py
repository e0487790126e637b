"""Episodes and rewards for policy training, shared by every trainer (PPO, GRPO, classic).

A training batch is a list of episode *slots*. Each slot holds its episode's current state: a seed at first,
then, after each step, the kept rewrite (so the policy learns action sequences, as in the paper) until the
episode reaches ``depth`` or a rewrite is eliminated, when the slot starts over from its next seed.
``PolicyReward`` turns the instructor's answers into rewards through the same ``EvolutionEnv`` synthesis uses.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from teams_rl.env.environment import EvolutionEnv, State, Transition, derive_seed

UNPARSEABLE = "unparseable"


class EpisodePool:
    """``slots`` episodes over ``seeds``; slot ``i`` starts at seed ``i`` and moves on by ``slots`` seeds."""

    def __init__(self, seeds: Sequence[State], depth: int, slots: int | None = None):
        if not seeds:
            raise ValueError("no seed states")
        self.seeds, self.depth = list(seeds), max(1, depth)
        n = slots or len(self.seeds)
        self._next_seed = list(range(n))
        self._states = [self.seeds[i % len(self.seeds)] for i in range(n)]
        self.episodes_done = 0

    def __len__(self) -> int:
        return len(self._states)

    def state(self, slot: int) -> State:
        return self._states[slot]

    def advance(self, slot: int, transition: Transition | None) -> None:
        """Continue the episode with a kept rewrite, or start the slot's next seed."""
        if transition is not None and transition.kept and transition.next_state.depth < self.depth:
            self._states[slot] = transition.next_state
            return
        self.episodes_done += 1
        self._next_seed[slot] += len(self._states)
        self._states[slot] = self.seeds[self._next_seed[slot] % len(self.seeds)]


@dataclass
class StepStats:
    """What one training step's rollouts did: the numbers every trainer logs."""

    rewards: list[float] = field(default_factory=list)
    actions: Counter = field(default_factory=Counter)
    eliminated: Counter = field(default_factory=Counter)
    kept: int = 0
    unparseable: int = 0

    def log_dict(self, prefix: str = "env/") -> dict[str, float]:
        n = max(1, len(self.rewards))
        tried = max(1, n - self.unparseable)
        out = {
            "reward_mean": sum(self.rewards) / n,
            "acceptance_rate": self.kept / tried,
            "parse_failure_rate": self.unparseable / n,
        }
        out.update({f"action_{a}": c / tried for a, c in self.actions.items()})
        return {prefix + k: v for k, v in out.items()}


class PolicyReward:
    """Reward of the instructor's answers: parse each into an action, apply it through the env, score it.

    An answer that names no action earns ``parse_penalty`` and is counted. When several answers share a slot
    (GRPO's group), the slot continues with the best kept rewrite among them. Each (state, action) is rewritten as
    one of ``samples`` rewriter samples, drawn per call (seeded): training sees the rewriter's variance on a state,
    and the samples the headroom table (``teams-rl explore``) already holds are answered by the ledger.
    """

    def __init__(
        self, env: EvolutionEnv, parse, pool: EpisodePool, parse_penalty: float = -0.5, samples: int = 1, seed: int = 0
    ):
        self.env, self.parse, self.pool, self.parse_penalty = env, parse, pool, parse_penalty
        self.samples, self.seed, self.calls = max(1, samples), seed, 0
        self.stats = StepStats()
        self.history: list[dict] = []  # one log_dict per call, for plots

    def __call__(self, slots: Sequence[int], answers: Sequence[str | None]) -> list[float]:
        """``answers[i]`` is the text (or an action name already parsed) for ``slots[i]``; returns rewards."""
        states = [self.pool.state(s) for s in slots]
        actions = [self.parse(a) if a is not None else None for a in answers]
        valid = [i for i, a in enumerate(actions) if a is not None]
        self.calls += 1
        draws = [derive_seed(self.seed, "sample", self.calls, i) % self.samples for i in valid]
        transitions = self.env.step([states[i] for i in valid], [actions[i] for i in valid], draws) if valid else []
        rewards = [self.parse_penalty] * len(slots)
        best: dict[int, Transition | None] = dict.fromkeys(slots)
        stats = StepStats()
        for i, t in zip(valid, transitions, strict=True):
            rewards[i] = t.reward
            stats.actions[t.action] += 1
            if t.kept:
                stats.kept += 1
                if best[slots[i]] is None or t.reward > best[slots[i]].reward:
                    best[slots[i]] = t
            else:
                stats.eliminated[t.eliminated] += 1
        stats.unparseable = len(slots) - len(valid)
        stats.rewards = rewards
        for slot, t in best.items():
            self.pool.advance(slot, t)
        self.stats = stats
        self.history.append(stats.log_dict(prefix=""))
        return rewards
