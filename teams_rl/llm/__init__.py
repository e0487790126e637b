"""LLM backends behind one protocol, and the request ledger every call goes through."""

from teams_rl.llm.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    ScoreRequest,
    ScoreResult,
)

__all__ = [
    "Backend",
    "GenerationRequest",
    "GenerationResult",
    "SamplingParams",
    "ScoreRequest",
    "ScoreResult",
]
