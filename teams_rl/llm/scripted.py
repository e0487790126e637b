"""A deterministic backend driven by a Python function: for tests, demos of the flow and replay."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from teams_rl.llm.base import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult


class ScriptedBackend:
    """Answers with ``reply(request) -> str`` and scores with ``scorer(request) -> list[logprob]``.

    Counts calls so tests can assert how many requests really reached the model.
    """

    def __init__(
        self,
        reply: Callable[[GenerationRequest], str],
        scorer: Callable[[ScoreRequest], list[float]] | None = None,
        model_id: str = "scripted",
    ):
        self.reply = reply
        self.scorer = scorer
        self.model_id = model_id
        self.generate_calls = 0
        self.score_calls = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for req in requests:
            self.generate_calls += 1
            text = self.reply(req)
            words = len(text.split())
            finish = "length" if words >= req.sampling.max_new_tokens else "stop"
            prompt_tokens = sum(len(m["content"].split()) for m in req.messages)
            out.append(
                GenerationResult(text=text, finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=words)
            )
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        if self.scorer is None:
            raise NotImplementedError("this scripted backend has no scorer")
        out = []
        for req in requests:
            self.score_calls += 1
            out.append(ScoreResult(logprobs=list(self.scorer(req))))
        return out
