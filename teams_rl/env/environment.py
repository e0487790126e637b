"""The evolution environment: a state is an instruction; an action rewrites it through the rewriter LLM; the
elimination rules and the reviewer decide whether the rewrite survives and what it earns."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from teams_rl.env.actions import Action
from teams_rl.env.parsing import (
    copies_template_words,
    format_rewrite,
    is_only_punct_or_stopwords,
    is_refusal,
    parse_rewrite,
)
from teams_rl.env.reviewer import Review, Reviewer, ReviewItem
from teams_rl.env.screens import ANSWERED, COPIED, DRIFTED, SHRUNK, Screens
from teams_rl.llm.base import GenerationRequest, SamplingParams
from teams_rl.llm.role_client import RoleClient

# Why a rewrite is dropped. The first four are the paper's rules; the rest are failures of the call itself.
NO_GAIN = "no_gain"  # the reviewer sees no information gain (or the rewrite equals its parent)
REFUSAL = "refusal"  # "sorry" / "I cannot" and short
EMPTY = "stopwords_only"  # nothing but punctuation and stop words
TEMPLATE_WORDS = "template_words"  # copied words of the prompt such as "Rewritten Prompt"
TRUNCATED = "truncated"  # the rewrite hit max_new_tokens: an unfinished instruction
LLM_ERROR = "llm_error"  # the call failed after retries (recorded, not cached)
# The reader's screens (screens.py) add: ANSWERED (the rewriter answered), COPIED (a near-copy of its parent or
# seed), DRIFTED (left the seed's task), SHRUNK.
REASONS = (NO_GAIN, REFUSAL, EMPTY, TEMPLATE_WORDS, TRUNCATED, LLM_ERROR, ANSWERED, COPIED, DRIFTED, SHRUNK)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from (run seed, row id, step, ...): reruns, resumes and shards draw the same numbers."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


@dataclass(frozen=True)
class State:
    """An instruction on its way: where it started, what was done to it, how many steps were tried.

    ``depth`` counts kept rewrites; ``step`` counts attempts (a failed one leaves the instruction as it was).
    """

    seed_id: str
    instruction: str
    input: str = ""
    depth: int = 0
    step: int = 0
    actions: tuple[str, ...] = ()
    lineage: tuple[str, ...] = ()  # ancestor instructions, seed first

    @classmethod
    def from_seed(cls, seed) -> State:
        return cls(seed_id=seed.id, instruction=seed.instruction, input=seed.input)


@dataclass
class Transition:
    """The outcome of one action on one state."""

    state: State
    action: str
    next_state: State  # the rewrite if kept, else ``state`` one step later
    raw: str  # the rewriter's text as returned
    eliminated: str | None = None
    review: Review | None = None
    finish_reason: str = "stop"
    info: dict = field(default_factory=dict)

    sample: int = 0  # which rewriter sample of (state, action) this is: it enters the request seed
    quality_weight: float = 0.0  # weight of the reviewer's score in the reward (see ``reward``)

    @property
    def kept(self) -> bool:
        return self.eliminated is None

    @property
    def quality(self) -> float:
        """The reviewer's weighted score of a kept rewrite, in [0, 1] (0 when eliminated)."""
        return self.review.reward if self.kept and self.review else 0.0

    @property
    def reward(self) -> float:
        """What policy training pays and what synthesis records: ``kept * (1 + quality_weight * quality)``.

        A kept rewrite is what a dataset builder buys per expert query, so it earns 1; the bounded quality term
        (the reviewer's P(gain) and novelty, weighted by the recipe's ``reward_quality_weight``) ranks kept rewrites
        among themselves and never outweighs keeping one. Eliminated: 0. Range: {0} and [1, 1 + quality_weight].
        """
        return (1.0 + self.quality_weight * self.quality) if self.kept else 0.0


def screen(text: str, finish_reason: str = "stop") -> str | None:
    """The text-only elimination rules, in order; None when the text passes."""
    if finish_reason == "error":
        return LLM_ERROR
    if is_only_punct_or_stopwords(text):
        return EMPTY
    if copies_template_words(text):
        return TEMPLATE_WORDS
    if is_refusal(text):
        return REFUSAL
    if finish_reason == "length":
        return TRUNCATED
    return None


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


class EvolutionEnv:
    """Applies actions to states in batches.

    Args:
        actions: the action space by name.
        rewriter: the LLM that executes actions (the rewriter in policy training, the expert in synthesis).
        reviewer: scores surviving rewrites; its information-gain verdict is the first elimination rule.
        sampling: decoding of rewrites.
        run_seed: mixed into every request's seed with the row id and step.
        quality_weight: weight of the reviewer's score in each transition's reward.
        screens: the reader's screens (answered, drifted, shrunk) applied after the text rules.
    """

    def __init__(
        self,
        actions: dict[str, Action],
        rewriter: RoleClient,
        reviewer: Reviewer,
        sampling: SamplingParams,
        run_seed: int = 0,
        quality_weight: float = 0.0,
        screens: Screens | None = None,
    ):
        self.actions, self.rewriter, self.reviewer = actions, rewriter, reviewer
        self.sampling, self.run_seed, self.quality_weight, self.screens = sampling, run_seed, quality_weight, screens

    def _seed(self, state: State, purpose: str, sample: int) -> int:
        # sample 0 keeps the seed synthesis has always used; later samples draw the rewriter's other outcomes
        parts = (self.run_seed, state.seed_id, state.step, purpose) + ((sample,) if sample else ())
        return derive_seed(*parts)

    def step(
        self, states: Sequence[State], actions: Sequence[str], samples: Sequence[int] | None = None
    ) -> list[Transition]:
        """Apply ``actions[i]`` to ``states[i]``; ``samples[i]`` (default 0) picks which rewriter sample it is."""
        samples = list(samples) if samples is not None else [0] * len(states)
        requests = [
            GenerationRequest(
                self.actions[a].render(s.instruction, s.input), self.sampling, seed=self._seed(s, "rewrite", k)
            )
            for s, a, k in zip(states, actions, samples, strict=True)
        ]
        results = self.rewriter.generate(requests)
        transitions, survivors = [], []
        for state, action, result, k in zip(states, actions, results, samples, strict=True):
            instruction, new_input = parse_rewrite(result.text) if result.ok else ("", "")
            t = Transition(
                state,
                action,
                replace(state, step=state.step + 1),
                result.text,
                finish_reason=result.finish_reason,
                sample=k,
                quality_weight=self.quality_weight,
            )
            t.eliminated = screen(instruction, result.finish_reason) if result.ok else LLM_ERROR
            # an action that does not produce an input keeps the parent's
            kept_input = new_input or state.input
            if t.eliminated is None and _normalise(format_rewrite(instruction, kept_input)) == _normalise(
                format_rewrite(state.instruction, state.input)
            ):
                t.eliminated = NO_GAIN
            if t.eliminated is None:
                t.next_state = State(
                    state.seed_id,
                    instruction,
                    kept_input,
                    state.depth + 1,
                    state.step + 1,
                    (*state.actions, action),
                    (*state.lineage, state.instruction),
                )
                survivors.append(t)
            transitions.append(t)
        if self.screens is not None and survivors:
            reasons = self.screens.rewrites(
                [
                    (
                        (t.state.lineage or (t.state.instruction,))[0],  # the seed's instruction
                        format_rewrite(t.state.instruction, t.state.input),
                        format_rewrite(t.next_state.instruction, t.next_state.input),
                        t.action,
                    )
                    for t in survivors
                ]
            )
            for t, reason in zip(survivors, reasons, strict=True):
                if reason is not None:
                    t.eliminated, t.next_state = reason, replace(t.state, step=t.state.step + 1)
            survivors = [t for t in survivors if t.eliminated is None]
        items = [
            ReviewItem(
                format_rewrite(t.state.instruction, t.state.input),
                format_rewrite(t.next_state.instruction, t.next_state.input),
                t.state.lineage,
                seed=self._seed(t.state, "review", t.sample),
            )
            for t in survivors
        ]
        for t, review in zip(survivors, self.reviewer.review(items), strict=True):
            t.review = review
            if review.gain is not True:
                t.eliminated = NO_GAIN
                t.next_state = replace(t.state, step=t.state.step + 1)
        return transitions
