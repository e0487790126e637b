"""A backend for any OpenAI-compatible chat server (vLLM serve, SGLang, Ollama, llama.cpp server, OpenAI).

Batches run concurrently (asyncio + a semaphore) with our own retries, so one failed request never sinks a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from teams_rl.errors import TeamsRLError
from teams_rl.llm.base import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult

log = logging.getLogger(__name__)

T = TypeVar("T")

_DEFAULT_BASE_URL = "https://api.openai.com/v1"
_TOP_LOGPROBS = 20  # the most the OpenAI API (and vLLM's default max_logprobs) allows
_MAX_ERROR_CHARS = 200
# Some servers return raw byte-level BPE / SentencePiece pieces instead of decoded text.
_SPACE_MARKERS = str.maketrans({"\u0120": " ", "\u2581": " "})


class _Fatal(Exception):
    """Carries a TeamsRLError out of one request so the whole batch stops (the server is unusable, not flaky)."""

    def __init__(self, error: TeamsRLError):
        super().__init__(error.message)
        self.error = error


class OpenAIBackend:
    """Talks to an OpenAI-compatible ``/v1/chat/completions`` endpoint with the official ``openai`` client.

    The API key is read from the environment variable ``api_key_env`` on every call and is never stored on the
    object, so it cannot leak through ``repr``, results or pickles. ``role`` (e.g. ``"instructor"``) only prefixes
    the config field named in errors.

    Retries are ours, not the client's (it is built with ``max_retries=0``): the client also retries connection
    refusals (a wrong URL would then hang for seconds before failing), treats ``Retry-After: 0`` as "use the
    default backoff" and refuses to retry at all when ``Retry-After`` exceeds two minutes.
    """

    # Backoff of retry n (0-based) sleeps base * 2**n, capped, times a jitter in [0.5, 1]; a server's Retry-After
    # replaces it (still capped). Class attributes so tests can shrink them.
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 20.0

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        role: str = "",
    ):
        if concurrency < 1:
            raise TeamsRLError(f"concurrency must be at least 1, got {concurrency}", field=self._field(role, "concurrency"))
        if timeout_s <= 0:
            raise TeamsRLError(f"timeout_s must be positive, got {timeout_s}", field=self._field(role, "timeout_s"))
        if max_retries < 0:
            raise TeamsRLError(f"max_retries must be >= 0, got {max_retries}", field=self._field(role, "max_retries"))
        self.model_id = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.role = role

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model_id!r}, base_url={self._url!r}, api_key_env={self.api_key_env!r}, "
            f"concurrency={self.concurrency}, timeout_s={self.timeout_s}, max_retries={self.max_retries})"
        )

    # ------------------------------------------------------------------ public API

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One chat completion per request, ``concurrency`` at a time; results in request order."""
        if not requests:
            return []
        return self._run_sync(lambda: self._batch(requests, self._generate_one))

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Log-probability of each choice as the first answer token (see ``_choice_logprobs`` for the matching)."""
        if not requests:
            return []
        return self._run_sync(lambda: self._batch(requests, self._score_one))

    # ------------------------------------------------------------------ sync/async bridge

    @staticmethod
    def _run_sync(make_coro: Callable[[], Awaitable[T]]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(make_coro())
        # asyncio.run refuses to nest inside a running loop (e.g. a notebook), so give the batch its own loop in a
        # worker thread. The caller's loop blocks meanwhile, as with any synchronous call.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-backend") as pool:
            return pool.submit(lambda: asyncio.run(make_coro())).result()

    async def _batch(self, requests: Sequence[Any], one: Callable[..., Awaitable[T]]) -> list[T]:
        from openai import AsyncOpenAI

        key = os.environ.get(self.api_key_env) or "EMPTY"  # local servers accept any key
        sem = asyncio.Semaphore(self.concurrency)
        stop = asyncio.Event()  # set on a fatal error so queued requests do not start
        # The client's own retries are off (see the class docstring); its pool must not be the bottleneck.
        async with AsyncOpenAI(api_key=key, base_url=self._url, max_retries=0, timeout=self.timeout_s) as client:
            tasks = [asyncio.create_task(one(client, req, sem, stop, key)) for req in requests]
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                # Requests that saw the stop flag end cancelled; the error worth raising is in the one that set it.
                errors = [task.exception() for task in done if not task.cancelled() and task.exception()]
                for exc in errors:
                    if isinstance(exc, _Fatal):
                        raise exc.error from None
                if errors:
                    raise errors[0]
                return [task.result() for task in tasks]
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ one request

    async def _generate_one(
        self, client: Any, req: GenerationRequest, sem: asyncio.Semaphore, stop: asyncio.Event, key: str
    ) -> GenerationResult:
        kwargs = {
            "model": self.model_id,
            "messages": [dict(m) for m in req.messages],
            "temperature": req.sampling.temperature,
            "top_p": req.sampling.top_p,
            "max_tokens": req.sampling.max_new_tokens,
            "seed": req.seed,
        }
        resp, error, latency = await self._call(client, kwargs, sem, stop, key)
        if error is not None:
            return GenerationResult(text="", finish_reason="error", latency_s=latency, error=error)
        prompt_tokens, completion_tokens = _usage(resp)
        choices = getattr(resp, "choices", None) or []
        if not choices:
            return GenerationResult(text="", finish_reason="error", prompt_tokens=prompt_tokens,
                                    latency_s=latency, error="bad response: no choices")
        choice = choices[0]
        text = (choice.message.content if choice.message is not None else None) or ""
        # A missing finish_reason (some servers) on a non-empty answer means it simply ended.
        finish = choice.finish_reason or "stop"
        return GenerationResult(text=text, finish_reason=str(finish), prompt_tokens=prompt_tokens,
                                completion_tokens=completion_tokens, latency_s=latency)

    async def _score_one(
        self, client: Any, req: ScoreRequest, sem: asyncio.Semaphore, stop: asyncio.Event, key: str
    ) -> ScoreResult:
        kwargs = {
            "model": self.model_id,
            "messages": [dict(m) for m in req.messages],
            "temperature": 0.0,
            "max_tokens": 1,
            "logprobs": True,
            "top_logprobs": _TOP_LOGPROBS,
            "seed": req.seed,
        }
        resp, error, latency = await self._call(client, kwargs, sem, stop, key)
        n = len(req.choices)
        if error is not None:
            return ScoreResult(logprobs=[float("-inf")] * n, latency_s=latency, error=error)
        prompt_tokens, _ = _usage(resp)
        choices = getattr(resp, "choices", None) or []
        first = None
        if choices and choices[0].logprobs is not None and choices[0].logprobs.content:
            first = choices[0].logprobs.content[0]
        if first is None:
            raise _Fatal(TeamsRLError(
                f"the server at {self._url} returned no logprobs; use the text judge mode ('judge') for this reviewer",
                field=self._field(self.role, "mode"),
            ))
        candidates = [(first.token, first.logprob)] + [(t.token, t.logprob) for t in (first.top_logprobs or [])]
        return ScoreResult(logprobs=_choice_logprobs(candidates, req.choices), prompt_tokens=prompt_tokens,
                           latency_s=latency)

    async def _call(
        self, client: Any, kwargs: dict[str, Any], sem: asyncio.Semaphore, stop: asyncio.Event, key: str
    ) -> tuple[Any, str | None, float]:
        """One completion with retries. Returns (response, None, latency) or (None, error, latency).

        Latency counts from the moment the request gets a concurrency slot (queueing behind the semaphore is not
        the server's time) to its last attempt, backoff sleeps included. The slot is held while backing off, which
        eases the load on a server that asked us to slow down.
        """
        import openai

        async with sem:
            if stop.is_set():
                raise asyncio.CancelledError
            t0 = time.perf_counter()
            attempt = 0
            while True:
                retry_after: float | None = None
                try:
                    # httpx timeouts bound each read, not the whole exchange; a trickling server could exceed them.
                    async with asyncio.timeout(self.timeout_s):
                        resp = await client.chat.completions.create(**kwargs)
                    return resp, None, time.perf_counter() - t0
                except (openai.APITimeoutError, TimeoutError):
                    error, retriable = "timeout", True
                except openai.APIConnectionError as exc:
                    if _is_unreachable(exc):
                        stop.set()
                        raise _Fatal(TeamsRLError(
                            f"cannot reach the OpenAI-compatible server at {self._url} "
                            f"({_cause_name(exc)}); is it running, and is the URL right?",
                            field=self._field(self.role, "base_url"),
                        )) from None
                    # The connection broke mid-exchange (server restart, stale keep-alive): worth another try.
                    error, retriable = f"connection error: {_cause_name(exc)}", True
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    message = _scrub(_status_message(exc), key)
                    if status in (401, 403):
                        stop.set()
                        raise _Fatal(TeamsRLError(
                            f"the server at {self._url} rejected the API key from ${self.api_key_env} (http {status})",
                            field=self._field(self.role, "api_key_env"),
                        )) from None
                    if status == 404:
                        stop.set()
                        raise _Fatal(TeamsRLError(
                            f"the server at {self._url} answered 404 for model {self.model_id!r}: check the model "
                            f"name and that the base URL ends in /v1 ({message})",
                            field=self._field(self.role, "model"),
                        )) from None
                    if status == 429:
                        error, retriable = f"rate limited: {message}", True
                        retry_after = _retry_after(exc.response.headers)
                    else:
                        error = f"http {status}: {message}"
                        retriable = status >= 500 or status == 408
                        retry_after = _retry_after(exc.response.headers) if retriable else None
                if not retriable or attempt >= self.max_retries:
                    log.warning("%s request failed after %d attempt(s): %s", self.model_id, attempt + 1, error)
                    return None, error, time.perf_counter() - t0
                delay = self._backoff(attempt, retry_after)
                log.debug("%s: %s; retry %d/%d in %.2fs", self.model_id, error, attempt + 1, self.max_retries, delay)
                await asyncio.sleep(delay)
                attempt += 1

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_cap_s)
        return min(self.backoff_base_s * 2.0 ** min(attempt, 30), self.backoff_cap_s) * random.uniform(0.5, 1.0)

    # ------------------------------------------------------------------ helpers

    @property
    def _url(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL

    @staticmethod
    def _field(role: str, name: str) -> str:
        return f"{role}_{name}" if role else name


def _choice_logprobs(candidates: Sequence[tuple[str, float]], choices: Sequence[str]) -> list[float]:
    """Each choice's logprob = the best among candidate first tokens that are a non-empty prefix of it.

    Matching ignores case and surrounding whitespace, so " Yes", "yes" and "Y" all count for "Yes". Only the first
    token is scored, so choices that share a first token are ambiguous: with choices "1" and "10" the token "1"
    counts for both. That is acceptable for the short labels judges use (Yes/No, A-D, single digits).
    """
    normed = [(tok.translate(_SPACE_MARKERS).strip().lower(), lp) for tok, lp in candidates]
    out = []
    for choice in choices:
        target = choice.strip().lower()
        best = float("-inf")
        for tok, lp in normed:
            if tok and target.startswith(tok) and lp is not None and not math.isnan(lp):
                best = max(best, float(lp))
        out.append(best)
    return out


def _usage(resp: Any) -> tuple[int, int]:
    usage = getattr(resp, "usage", None)
    if usage is None:
        return 0, 0
    return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)


def _is_unreachable(exc: Exception) -> bool:
    """Connection refused or DNS failure: nothing answered, as opposed to a connection that broke mid-request."""
    # By name: the client may wrap httpx2's or legacy httpx's ConnectError, depending on what is installed.
    return type(exc.__cause__).__name__ == "ConnectError"


def _cause_name(exc: Exception) -> str:
    cause = exc.__cause__
    return type(cause).__name__ if cause is not None else type(exc).__name__


def _status_message(exc: Any) -> str:
    """The server's own error message, short: the openai client put the inner ``error`` object in ``body``."""
    body = exc.body
    message = body.get("message") if isinstance(body, dict) else body
    text = " ".join(str(message if message else exc.message).split())
    return text[:_MAX_ERROR_CHARS]


def _scrub(text: str, key: str) -> str:
    # Servers echo keys back in auth errors ("Incorrect API key provided: sk-..."); never pass them on.
    if key and key != "EMPTY" and key in text:
        text = text.replace(key, "***")
    return text


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date); None when absent or bad."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if divisor == 1.0 else None
            if parsed is None:
                continue
            seconds = email.utils.mktime_tz(parsed) - time.time()
        if math.isfinite(seconds):
            return max(seconds, 0.0)
    return None
