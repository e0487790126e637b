"""The LLM protocol: batched ``generate`` and ``score`` (log-probabilities of given answer choices)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol, runtime_checkable

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": "..."}


@dataclass(frozen=True)
class SamplingParams:
    """Decoding settings of one request. ``temperature == 0`` means greedy."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 256

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class GenerationRequest:
    """One chat completion. ``seed`` makes sampling reproducible per row (run seed + row id + step)."""

    messages: tuple[Message, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0


@dataclass
class GenerationResult:
    """What a backend returned. ``error`` is set (and ``text`` empty) when the call failed after retries.

    ``finish_reason`` is ``stop``, ``length``, ``content_filter`` or ``error``.
    """

    text: str
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ScoreRequest:
    """Score each of ``choices`` as the assistant's answer to ``messages`` (e.g. ``("Yes", "No")``)."""

    messages: tuple[Message, ...]
    choices: tuple[str, ...]
    seed: int = 0


@dataclass
class ScoreResult:
    """Log-probability of each choice (same order). ``-inf`` for a choice the server did not rank.

    ``probs`` renormalises over the choices, which is what a judge wants.
    """

    logprobs: list[float]
    prompt_tokens: int = 0
    latency_s: float = 0.0
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def probs(self) -> list[float]:
        import math

        finite = [lp for lp in self.logprobs if lp != float("-inf")]
        if not finite:
            return [1.0 / len(self.logprobs)] * len(self.logprobs) if self.logprobs else []
        top = max(finite)
        weights = [math.exp(lp - top) if lp != float("-inf") else 0.0 for lp in self.logprobs]
        total = sum(weights)
        return [w / total for w in weights]


@runtime_checkable
class Backend(Protocol):
    """An LLM that answers batches. Implementations: transformers, openai, vllm, scripted (tests).

    ``model_id`` names the model in the ledger and in dataset lineage. Backends load their model
    lazily, on the first call, so a fully cached re-run never loads one.
    """

    model_id: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]: ...
