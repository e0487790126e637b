"""The reviewer: scores a rewrite against its parent. Each mode is a small scorer returning a number in [0, 1];
the reward is their weighted mean. Every score is a pure function of recorded texts and numbers."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.parsing import parse_grade, parse_judgement
from teams_rl.llm.base import GenerationRequest, SamplingParams, ScoreRequest, ScoreResult
from teams_rl.llm.role_client import RoleClient

logger = logging.getLogger(__name__)

MODES = ("judge", "judge_logprob", "graded", "graded_logprob", "embedding")
VERDICT = SamplingParams(temperature=0.0, top_p=1.0, max_new_tokens=12)  # judges answer greedily and briefly


def _ranked(result: ScoreResult) -> bool:
    """A score the reviewer can use: the call succeeded and the model gave at least one choice a probability."""
    return result.ok and any(math.isfinite(lp) for lp in result.logprobs)


def parse_modes(text: str, field: str = "reviewer_modes") -> dict[str, float]:
    """``"judge_logprob:1,embedding:0.5"`` → ``{"judge_logprob": 1.0, "embedding": 0.5}`` (weight 1 if omitted)."""
    weights: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition(":")
        name = name.strip()
        if name not in MODES:
            raise TeamsRLError(f"unknown reviewer mode '{name}' (choose from {', '.join(MODES)})", field=field)
        if name in weights:
            raise TeamsRLError(f"reviewer mode '{name}' is given twice", field=field)
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0:
            raise TeamsRLError(f"weight of '{name}' must be a number >= 0, got '{weight}'", field=field)
        weights[name] = value
    if not weights or sum(weights.values()) <= 0:
        raise TeamsRLError("give at least one reviewer mode with a positive weight", field=field)
    return weights


@dataclass(frozen=True)
class ReviewItem:
    """One rewrite to score: its parent, the rewrite, and the chain it descends from (seed first)."""

    original: str
    rewrite: str
    ancestors: tuple[str, ...] = ()
    seed: int = 0


@dataclass
class Review:
    """Per-mode scores in [0, 1], the weighted reward, and the information-gain verdict.

    ``gain`` is None when no mode could decide it (e.g. the text judge's answer did not parse).
    """

    scores: dict[str, float | None] = field(default_factory=dict)
    reward: float = 0.0
    gain: bool | None = None
    parse_failures: int = 0


class Reviewer:
    """Scores batches of rewrites with the configured modes.

    Args:
        client: the reviewer LLM behind the ledger (needed by the judge and graded modes).
        weights: mode → weight, see ``parse_modes``.
        embedder: a sentence-transformers model (needed by ``embedding``); called with ``encode``.
        gain_threshold: ``judge_logprob`` says "gain" when P(Yes) ≥ this.
        min_novelty: without a judge mode, "gain" means embedding novelty ≥ this.
        sampling: decoding of the text modes (``judge``, ``graded``); greedy and short by default.
    """

    def __init__(
        self,
        client: RoleClient | None,
        weights: dict[str, float],
        *,
        embedder=None,
        gain_threshold: float = 0.5,
        min_novelty: float = 0.05,
        sampling: SamplingParams = VERDICT,
    ):
        from teams_rl.env.actions import load_prompt

        self.client, self.weights, self.embedder = client, weights, embedder
        self.gain_threshold, self.min_novelty, self.sampling = gain_threshold, min_novelty, sampling
        llm_modes = [m for m in weights if m != "embedding"]
        if llm_modes and client is None:
            raise TeamsRLError(f"reviewer modes {llm_modes} need a reviewer model", field="reviewer_modes")
        if "embedding" in weights and embedder is None:
            raise TeamsRLError("the embedding mode needs an embedding model", field="reviewer_embedding_model")
        self.judge_prompt = load_prompt("judge")
        self.graded_prompt = load_prompt("graded")

    def review(self, items: Sequence[ReviewItem]) -> list[Review]:
        reviews = [Review() for _ in items]
        if not items:
            return reviews
        for mode in self.weights:
            values, failures = getattr(self, f"_{mode}")(items)
            for review, value, failed in zip(reviews, values, failures, strict=True):
                review.scores[mode] = value
                review.parse_failures += int(failed)
        total = sum(self.weights.values())
        for review in reviews:
            # an unparseable answer scores 0 for its mode: counted as a failure, never a crash
            review.reward = sum(w * (review.scores[m] or 0.0) for m, w in self.weights.items()) / total
            review.gain = self._gain(review)
        return reviews

    def _gain(self, review: Review) -> bool | None:
        if "judge_logprob" in review.scores:
            p_yes = review.scores["judge_logprob"]
            return None if p_yes is None else p_yes >= self.gain_threshold
        if "judge" in review.scores:
            return None if review.scores["judge"] is None else review.scores["judge"] >= 0.5
        if "embedding" in review.scores:
            return review.scores["embedding"] >= self.min_novelty
        return True

    # -- modes: each returns (scores in [0, 1] or None, parse-failure flags) ---------------------------------------
    def _judge_messages(self, item: ReviewItem):
        return self.judge_prompt.render(original=item.original, rewrite=item.rewrite)

    def _graded_messages(self, item: ReviewItem):
        return self.graded_prompt.render(original=item.original, rewrite=item.rewrite)

    def _judge(self, items):
        replies = self.client.generate(
            [GenerationRequest(self._judge_messages(it), self.sampling, seed=it.seed) for it in items]
        )
        verdicts = [parse_judgement(r.text) if r.ok else None for r in replies]
        return [None if v is None else float(v) for v in verdicts], [v is None for v in verdicts]

    def _judge_logprob(self, items):
        choices = tuple(self.judge_prompt.choices)
        results = self.client.score([ScoreRequest(self._judge_messages(it), choices, seed=it.seed) for it in items])
        yes = [r.probs[0] if _ranked(r) else None for r in results]
        return yes, [v is None for v in yes]

    def _graded(self, items):
        replies = self.client.generate(
            [GenerationRequest(self._graded_messages(it), self.sampling, seed=it.seed) for it in items]
        )
        grades = [parse_grade(r.text) if r.ok else None for r in replies]
        return [None if g is None else (g - 1) / 9 for g in grades], [g is None for g in grades]

    def _graded_logprob(self, items):
        choices = tuple(self.graded_prompt.choices)
        results = self.client.score([ScoreRequest(self._graded_messages(it), choices, seed=it.seed) for it in items])
        values = []
        for r in results:
            if not _ranked(r):
                values.append(None)
                continue
            expected = sum(p * int(c) for p, c in zip(r.probs, choices, strict=True))  # expected grade, 1..10
            values.append((expected - 1) / 9)
        return values, [v is None for v in values]

    def _embedding(self, items):
        """Novelty = 1 - the highest cosine similarity between the rewrite and its parent or any ancestor.

        Measured against the row's own lineage (not a global window) so the score does not depend on which
        other rows share a batch or a shard.
        """
        import numpy as np

        texts = list(dict.fromkeys(t for it in items for t in (it.rewrite, it.original, *it.ancestors)))
        vectors = self.embedder.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        index = dict(zip(texts, vectors, strict=True))
        values = []
        for it in items:
            others = np.stack([index[t] for t in (it.original, *it.ancestors)])
            similarity = float(np.max(others @ index[it.rewrite]))
            values.append(float(min(1.0, max(0.0, 1.0 - similarity))))
        return values, [False] * len(items)
