"""A backend for any OpenAI-compatible chat server (vLLM serve, SGLang, Ollama, llama.cpp server, OpenAI).

Batches run concurrently (asyncio + a semaphore) with our own retries, so one failed request never sinks a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import random
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from teams_rl.core.errors import TeamsRLError
from teams_rl.llm.base import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult
from teams_rl.llm.openai_errors import _cause_name, _Fatal, _is_unreachable, _NotJSON, _retry_after, _status_message
from teams_rl.llm.openai_responses import (
    SCORE_PARAMS,
    _short,
    generation_params,
    generation_result,
    refuses_logprobs,
    score_result,
    without_logprobs,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIBackend:
    """Talks to an OpenAI-compatible ``/v1/chat/completions`` endpoint with the official ``openai`` client.

    The API key is read from the environment variable ``api_key_env`` on every call and is never stored on the
    object, so it cannot leak through ``repr``, results or pickles; server messages that echo it are scrubbed.
    ``role`` (e.g. ``"expert"``) prefixes the config field named in errors (``expert_base_url``).

    Per-request failures come back as results with ``error`` set, and the batch goes on. Transient ones (429, 408,
    409, 5xx, timeouts, a connection that broke mid-answer, a body that is not JSON) are retried first, at most
    ``max_retries`` times; the rest (other 4xx, an answer with no choices or no content) are not. ``timeout_s``
    bounds each attempt as a whole, so a server trickling its answer cannot stretch it. An unreachable server, a
    rejected key or a 404 raise ``TeamsRLError`` and stop the batch.

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
            raise TeamsRLError(f"must be at least 1, got {concurrency}", field=_field(role, "batch_size"))
        if timeout_s <= 0:
            raise TeamsRLError(f"must be positive, got {timeout_s}", field=_field(role, "timeout_s"))
        if max_retries < 0:
            raise TeamsRLError(f"must be >= 0, got {max_retries}", field=_field(role, "max_retries"))
        self.model_id = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.role = role
        self._rng = random.Random()  # backoff jitter only; never the global RNG, whose draws callers may seed
        self._warned_no_logprobs = False

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model_id!r}, base_url={self._where!r}, "
            f"api_key_env={self.api_key_env!r}, concurrency={self.concurrency}, timeout_s={self.timeout_s}, "
            f"max_retries={self.max_retries})"
        )

    # RoleClient passes ``on_result(i, result)``, called as each answer arrives, to commit it to the ledger at once.
    reports_each_result = True

    def generate(
        self, requests: Sequence[GenerationRequest], on_result: Callable[[int, Any], None] | None = None
    ) -> list[GenerationResult]:
        """One chat completion per request, ``concurrency`` at a time; results in request order."""
        if not requests:
            return []
        return _run_sync(lambda: self._batch(requests, self._generate_one, on_result))

    def score(
        self, requests: Sequence[ScoreRequest], on_result: Callable[[int, Any], None] | None = None
    ) -> list[ScoreResult]:
        """Log-probability of each choice as the first answer token, from the server's ``top_logprobs``.

        Several first tokens that spell the same choice (" Yes", "yes") add up; see ``_choice_logprobs``. When the
        server returns no logprobs (or answers 400 to a request for them) the one-token greedy answer is matched
        to the choices instead: matching choices get logprob 0 (probability 1, shared if several match), the rest
        ``-inf``, and an answer matching no choice is a per-request error. A warning says when this happens.
        """
        if not requests:
            return []
        return _run_sync(lambda: self._batch(requests, self._score_one, on_result))

    async def _batch(
        self,
        requests: Sequence[Any],
        one: Callable[..., Awaitable[T]],
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[T]:
        from openai import AsyncOpenAI

        key = os.environ.get(self.api_key_env) or "EMPTY"  # local servers accept any key
        sem = asyncio.Semaphore(self.concurrency)
        stop = asyncio.Event()  # set on a fatal error so queued requests do not start
        # The client's own retries are off (see the class docstring); its pool (1000 connections) exceeds any
        # sensible concurrency, so the semaphore alone sets how many requests are in flight.
        async with AsyncOpenAI(api_key=key, base_url=self._url, max_retries=0, timeout=self.timeout_s) as client:

            async def answer(i: int, req) -> T:
                result = await one(client, req, sem, stop, key)
                if on_result is not None:
                    on_result(i, result)  # a failure here (a full disk) stops the batch like any fatal error
                return result

            tasks = [asyncio.create_task(answer(i, req)) for i, req in enumerate(requests)]
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

    async def _generate_one(self, client, req: GenerationRequest, sem, stop, key: str) -> GenerationResult:
        resp, error, latency = await self._call(client, self._body(req, **generation_params(req)), sem, stop, key)
        return generation_result(resp, error, latency, key)

    async def _score_one(self, client, req: ScoreRequest, sem, stop, key: str) -> ScoreResult:
        kwargs = self._body(req, **SCORE_PARAMS)
        resp, error, latency = await self._call(client, kwargs, sem, stop, key)
        if refuses_logprobs(error):
            resp, error, retry_latency = await self._call(client, without_logprobs(kwargs), sem, stop, key)
            latency += retry_latency
        return score_result(resp, error, latency, req.choices, self._warn_no_logprobs)

    def _warn_no_logprobs(self) -> None:
        if not self._warned_no_logprobs:
            self._warned_no_logprobs = True
            log.warning("%s sent no logprobs: scoring by matching its one-token answer to the choices", self._where)

    async def _call(self, client, kwargs: dict[str, Any], sem, stop, key: str) -> tuple[Any, str | None, float]:
        """One completion with retries. Returns (response, None, latency) or (None, error, latency).

        Latency counts from the moment the request gets a concurrency slot (queueing behind the semaphore is not
        the server's time) to its last attempt, backoff sleeps included. The slot is held while backing off, which
        eases the load on a server that asked us to slow down.
        """
        async with sem:
            if stop.is_set():
                raise asyncio.CancelledError
            t0 = time.perf_counter()
            attempt = 0
            while True:
                try:
                    # httpx timeouts bound each read, not the whole exchange; a trickling server could exceed them.
                    async with asyncio.timeout(self.timeout_s):
                        resp = await client.chat.completions.create(**kwargs)
                    if isinstance(resp, str):
                        raise _NotJSON(resp)
                    return resp, None, time.perf_counter() - t0
                except Exception as exc:
                    try:
                        error, retriable, retry_after = self._classify(exc, key)
                    except _Fatal:
                        stop.set()
                        raise
                if not retriable or attempt >= self.max_retries:
                    log.warning("%s request failed after %d attempt(s): %s", self.model_id, attempt + 1, error)
                    return None, error, time.perf_counter() - t0
                delay = self._backoff(attempt, retry_after)
                log.debug("%s: %s; retry %d/%d in %.2fs", self.model_id, error, attempt + 1, self.max_retries, delay)
                await asyncio.sleep(delay)
                attempt += 1

    def _classify(self, exc: Exception, key: str) -> tuple[str, bool, float | None]:
        """(error, retriable, retry_after) of a failed attempt; raises ``_Fatal`` when the server is unusable."""
        import openai

        if isinstance(exc, openai.APITimeoutError | TimeoutError):
            return f"timeout after {self.timeout_s:g}s", True, None
        if isinstance(exc, openai.APIConnectionError):
            if _is_unreachable(exc):
                cause = _short(exc.__cause__ or "", key) or _cause_name(exc)
                what = f"cannot reach the OpenAI-compatible server at {self._where} ({cause})"
                raise self._fatal(f"{what}; is it running, and is the URL right?", "base_url") from None
            # The connection broke mid-exchange (server restart, stale keep-alive, an answer cut short): worth
            # another try.
            detail = _short(exc.__cause__ or "", key)
            return f"connection error: {_cause_name(exc)}{f': {detail}' if detail else ''}", True, None
        if isinstance(exc, _NotJSON):  # a proxy or gateway answering for a server that is down: may pass
            return f"bad response: not JSON ({_short(exc, key) or 'empty body'})", True, None
        if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):  # a body cut short or garbled on the way
            return f"bad response: invalid JSON ({type(exc).__name__}: {_short(exc, key)})", True, None
        if isinstance(exc, openai.APIStatusError):
            status, message = exc.status_code, _status_message(exc, key)
            if status in (401, 403):
                what = f"rejected the API key from ${self.api_key_env} (http {status})"
                raise self._fatal(f"the server at {self._where} {what}", "api_key_env") from None
            if status == 404:
                # An unknown model names the model; an unknown route (base URL without /v1) does not.
                what = f"answered 404 for model {self.model_id!r} ({message})"
                named = re.search(rf"(?<![\w.-]){re.escape(self.model_id)}(?![\w.-])", message)
                field = "model" if named else "base_url"
                raise self._fatal(f"the server at {self._where} {what}", field) from None
            retriable = status in (408, 409, 429) or status >= 500
            retry_after = _retry_after(exc.response.headers) if retriable else None
            return f"{'rate limited' if status == 429 else f'http {status}'}: {message}", retriable, retry_after
        if isinstance(exc, openai.APIError):  # e.g. a 200 whose body the client could not read
            return f"bad response: {_short(exc, key)}", False, None
        raise exc

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_cap_s)
        return min(self.backoff_base_s * 2.0 ** min(attempt, 30), self.backoff_cap_s) * self._rng.uniform(0.5, 1.0)

    def _body(self, req: GenerationRequest | ScoreRequest, **params: Any) -> dict[str, Any]:
        return {"model": self.model_id, "messages": [dict(m) for m in req.messages], "seed": req.seed, **params}

    @property
    def _url(self) -> str:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL

    @property
    def _where(self) -> str:
        return _shown(self._url)

    def _fatal(self, message: str, field: str) -> _Fatal:
        # A one-line user error naming the config field to fix; messages name the server but never the key.
        return _Fatal(TeamsRLError(message, field=_field(self.role, field)))


def _field(role: str, name: str) -> str:
    return f"{role}_{name}" if role else name


def _run_sync(make_coro: Callable[[], Awaitable[T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    # asyncio.run refuses to nest inside a running loop (e.g. a notebook), so give the batch its own loop in a
    # worker thread. The caller's loop blocks meanwhile, as with any synchronous call.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="openai-backend") as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


def _shown(url: str) -> str:
    """The URL for messages, without any ``user:password@`` part."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))
