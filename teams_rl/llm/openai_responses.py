"""What goes into a chat completion and how its answer becomes a result, shared by the direct ``openai`` route and
the ``openai_batch`` route, so a Batch job's answers are read by exactly the code that reads a direct answer."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from teams_rl.llm.base import GenerationRequest, GenerationResult, ScoreResult

TOP_LOGPROBS = 20  # the most the OpenAI API (and vLLM's default max_logprobs) allows
# A judge's call: one greedy token, with the ranked alternatives that carry the choices' probabilities.
SCORE_PARAMS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 1, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
_MAX_ERROR_CHARS = 200
# Some servers return raw byte-level BPE / SentencePiece pieces instead of decoded text.
_SPACE_MARKERS = str.maketrans({"\u0120": " ", "\u2581": " "})
_ANSWER_STRIP = " \t\n\"'`*_.,:;!()[]"  # markdown and punctuation around a text answer ("**Yes.**")


def generation_params(req: GenerationRequest) -> dict[str, Any]:
    """The sampling part of a generate call's body (the model, messages and seed are the backend's)."""
    s = req.sampling
    return {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_new_tokens}


def without_logprobs(body: dict[str, Any]) -> dict[str, Any]:
    """A score call's body for a server or model that refuses logprobs: its answer is then matched as text."""
    return {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}


def refuses_logprobs(error: str | None) -> bool:
    """A 400 that names logprobs: servers and models without logprob support (e.g. reasoning models) refuse the
    request outright, and the same call without them may pass."""
    return error is not None and error.startswith("http 400") and "logprob" in error.lower()


def generation_result(resp: Any, error: str | None, latency: float, key: str) -> GenerationResult:
    """A ``chat.completion`` (or the error of a call that got none) as a ``GenerationResult``.

    content is null on a content_filter stop (and may be on a length stop: a reasoning model that spent its tokens
    thinking); a missing finish_reason (some servers) means it simply ended. Anything else with no text (a refusal,
    a message without content) is a failed call, never a silently empty success."""
    if error is None and not getattr(resp, "choices", None):
        error = "bad response: no choices"
    if error is not None:
        return GenerationResult(text="", finish_reason="error", latency_s=latency, error=error)
    prompt_tokens, completion_tokens = _usage(resp)
    choice = resp.choices[0]
    message = getattr(choice, "message", None)
    content = getattr(message, "content", None)
    text = content or ""
    reason = getattr(choice, "finish_reason", None)
    if not text and (content is None or reason is None) and reason not in ("length", "content_filter"):
        refusal = getattr(message, "refusal", None)
        error = f"refused: {_short(refusal, key)}" if refusal else f"bad response: no content (finish_reason {reason})"
        return GenerationResult(text="", finish_reason="error", latency_s=latency, error=error)
    finish = str(reason or "stop")
    return GenerationResult(text, finish, prompt_tokens, completion_tokens, latency_s=latency)


def score_result(
    resp: Any,
    error: str | None,
    latency: float,
    choices: Sequence[str],
    on_text_fallback: Callable[[], None] | None = None,
) -> ScoreResult:
    """A one-token ``chat.completion`` as each choice's logprob, from its first token's ``top_logprobs``.

    With no logprobs in the answer its text is matched to the choices (``_text_choice_logprobs``; an answer that
    spells no choice is an error) and ``on_text_fallback`` is called, so the backend can warn once."""
    n = len(choices)
    if error is None and not getattr(resp, "choices", None):
        error = "bad response: no choices"
    if error is not None:
        return ScoreResult(logprobs=[float("-inf")] * n, latency_s=latency, error=error)
    prompt_tokens, _ = _usage(resp)
    choice = resp.choices[0]
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if content:
        first = content[0]
        candidates = [(first.token, first.logprob)] + [(t.token, t.logprob) for t in (first.top_logprobs or [])]
        return ScoreResult(_choice_logprobs(candidates, choices), prompt_tokens=prompt_tokens, latency_s=latency)
    answer = getattr(getattr(choice, "message", None), "content", None) or ""
    if on_text_fallback is not None:
        on_text_fallback()
    logprobs = _text_choice_logprobs(answer, choices)
    error = None if any(lp == 0.0 for lp in logprobs) else f"no logprobs, and answer {answer[:40]!r} is no choice"
    return ScoreResult(logprobs=logprobs, prompt_tokens=prompt_tokens, latency_s=latency, error=error)


def _choice_logprobs(candidates: Sequence[tuple[str, float]], choices: Sequence[str]) -> list[float]:
    """Each choice's logprob = log of the summed probability of the distinct first tokens that spell it.

    Matching ignores case and surrounding whitespace, so " Yes", "yes" and "Y" all count for "Yes". A token equal
    to some choice counts for that choice only; otherwise it counts for every choice it is a prefix of. So with
    choices "1" and "10" the token "1" is "1", and "10" scores only if the tokenizer has "10" as one token.
    """
    distinct: dict[str, float] = {}  # the sampled token usually reappears in top_logprobs: count it once
    for tok, lp in candidates:
        if tok is not None and lp is not None and not math.isnan(lp):
            distinct.setdefault(tok, float(lp))
    targets = [c.strip().lower() for c in choices]
    mass: list[list[float]] = [[] for _ in choices]
    for tok, lp in distinct.items():
        norm = tok.translate(_SPACE_MARKERS).strip().lower()
        if not norm:
            continue
        exact = [i for i, t in enumerate(targets) if t == norm]
        for i in exact or [i for i, t in enumerate(targets) if t.startswith(norm)]:
            mass[i].append(lp)
    return [_logsumexp(lps) for lps in mass]


def _text_choice_logprobs(answer: str, choices: Sequence[str]) -> list[float]:
    """The no-logprobs fallback: 0.0 for choices the answer spells (exactly, else as a prefix), ``-inf`` for others."""
    norm = answer.translate(_SPACE_MARKERS).strip(_ANSWER_STRIP).lower()
    targets = [c.strip().lower() for c in choices]
    hits = {i for i, t in enumerate(targets) if norm and t == norm}
    hits = hits or {i for i, t in enumerate(targets) if norm and t and (t.startswith(norm) or norm.startswith(t))}
    return [0.0 if i in hits else float("-inf") for i in range(len(choices))]


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values, default=float("-inf"))
    return top if top == float("-inf") else top + math.log(sum(math.exp(v - top) for v in values))


def _usage(resp: Any) -> tuple[int, int]:
    usage = getattr(resp, "usage", None)  # some servers send none
    return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


def _short(text: object, key: str) -> str:
    """One line of a server's or an exception's text for an error: scrubbed of the key, then cut short."""
    return _scrub(" ".join(str(text).split()), key)[:_MAX_ERROR_CHARS]


def _scrub(text: str, key: str) -> str:
    # Servers echo keys back in auth errors ("Incorrect API key provided: sk-..."); never pass them on.
    return text.replace(key, "***") if key and key != "EMPTY" else text
