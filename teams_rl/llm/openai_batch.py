"""The OpenAI Batch route (``<role>_backend: openai_batch``): the calls of one ``generate`` or ``score`` go out as one
Batch job, which OpenAI bills at half price and answers within 24 hours.

A job is a JSONL file of requests (uploaded with ``purpose="batch"``), created on ``/v1/chat/completions``, polled
until it ends, and read back from its output and error files. Its id is committed to the ledger before the first
poll, so a run killed while waiting polls the same job when re-run instead of paying for a second one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from teams_rl.core.errors import TeamsRLError
from teams_rl.llm.base import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult
from teams_rl.llm.openai_backend import OpenAIBackend, _field
from teams_rl.llm.openai_batch_lines import Answer, _answer, _custom_ids, _read_lines
from teams_rl.llm.openai_errors import _Fatal, _status_message
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

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # the most lines OpenAI takes in one job
_FINISHED = ("completed", "failed", "expired", "cancelled")
_SUBMIT_AGAIN = ("failed", "expired", "cancelling", "cancelled")  # a recorded job that will answer no more


class OpenAIBatchBackend(OpenAIBackend):
    """``OpenAIBackend``'s calls, sent as one OpenAI Batch job per ``generate`` / ``score`` call.

    Request bodies and the reading of answers are the direct route's (``openai_responses``), so both routes give
    the same results for the same answers. The key is read from ``api_key_env`` on every call and never stored.

    With a ``journal`` (what ``RoleClient`` passes, as ``submits_batches`` says) the job is resumable: the job
    recorded for this very set of calls is polled again if an earlier run died waiting for it; a job recorded as
    finished (that run read it back, so the set recurs only because its calls failed), or one the server reports
    failed, expired or cancelled, is submitted anew.

    A failed line (a non-200 answer, an ``error``, a line missing from both files) is that request's error and the
    rest go on; a ``failed`` job makes every request an error carrying the job's message; an ``expired`` or
    ``cancelled`` one gives its finished lines and errors for the rest. A re-run retries the errors. Score lines
    that answer 400 to logprobs are asked again without them, in a second job (resumable too), and their one-token
    answers matched to the choices as the direct route does.

    The HTTP calls (upload, create, poll, download) are retried on transient errors with the backoff of
    ``OpenAIBackend``; a rejected key, an unreachable server or a route the server lacks raise ``TeamsRLError``
    naming the field to fix, and a poll that keeps failing says the job is recorded and a re-run waits on. The job
    is polled every ``poll_s`` seconds, with a progress bar. ``concurrency`` is unused: a job has no calls in
    flight of ours. ``latency_s`` of each result is the job's wall time in this process (submit or resume to done):
    a Batch job reports no time per request.
    """

    reports_each_result = False  # the answers arrive all at once, when the job ends
    submits_batches = True  # RoleClient passes a journal: the job's id goes to the ledger before the wait
    batch_route = True  # RoleClient marks the calls as Batch calls and applies the price's batch discount

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        poll_s: float = 30.0,
        role: str = "",
    ):
        super().__init__(model, base_url, api_key_env, concurrency, timeout_s, max_retries, role)
        if poll_s <= 0:
            raise TeamsRLError(f"must be positive, got {poll_s}", field=_field(role, "batch_poll_s"))
        self.poll_s = poll_s

    def __repr__(self) -> str:
        return (
            f"OpenAIBatchBackend(model={self.model_id!r}, base_url={self._where!r}, "
            f"api_key_env={self.api_key_env!r}, poll_s={self.poll_s}, timeout_s={self.timeout_s})"
        )

    def generate(self, requests: Sequence[GenerationRequest], journal: Any = None) -> list[GenerationResult]:
        """One chat completion per request, all in one Batch job; results in request order."""
        if not requests:
            return []
        bodies = [self._body(r, **generation_params(r)) for r in requests]

        def run(client, key: str) -> list[GenerationResult]:
            answers, latency, finished = self._job(client, key, bodies, journal)
            _mark(finished)
            return [generation_result(resp, error, latency, key) for resp, error in answers]

        return self._with_client(run)

    def score(self, requests: Sequence[ScoreRequest], journal: Any = None) -> list[ScoreResult]:
        """Each choice's logprob as the first answer token (see ``OpenAIBackend.score``), all in one Batch job."""
        if not requests:
            return []
        bodies = [self._body(r, **SCORE_PARAMS) for r in requests]

        def run(client, key: str) -> list[ScoreResult]:
            answers, latency, finished = self._job(client, key, bodies, journal)
            latencies = [latency] * len(requests)
            refused = [i for i, (_, error) in enumerate(answers) if refuses_logprobs(error)]
            if refused:
                # Its own journal entry, named by the set's and these lines' ids: a kill during this second wait
                # resumes it, and the first job (recorded as finished only at the end) is not submitted again.
                retry_journal = None
                if journal is not None:
                    retry_journal = journal.derived("no-logprobs", _custom_ids(bodies, refused))
                again, retry_latency, retry_finished = self._job(
                    client, key, [without_logprobs(bodies[i]) for i in refused], retry_journal
                )
                for i, answer in zip(refused, again, strict=True):
                    answers[i], latencies[i] = answer, latencies[i] + retry_latency
                finished += retry_finished
            _mark(finished)
            return [
                score_result(resp, error, lat, req.choices, self._warn_no_logprobs)
                for (resp, error), lat, req in zip(answers, latencies, requests, strict=True)
            ]

        return self._with_client(run)

    def _with_client(self, run: Callable[[Any, str], T]) -> T:
        from openai import OpenAI

        key = os.environ.get(self.api_key_env) or "EMPTY"  # local servers accept any key
        with OpenAI(api_key=key, base_url=self._url, max_retries=0, timeout=self.timeout_s) as client:
            return run(client, key)

    def _job(self, client, key: str, bodies: list[dict], journal: Any) -> tuple[list[Answer], float, list]:
        """Submit (or resume) the job of ``bodies``, wait for it and read its answers in order. Also returns the
        (journal, final status) pairs the caller records once every job of its call is read."""
        if len(bodies) > MAX_REQUESTS:
            raise TeamsRLError(
                f"{len(bodies)} calls in one batch, and a Batch job takes at most {MAX_REQUESTS}: lower chunk_size",
                field=_field(self.role, "backend"),
            )
        ids = _custom_ids(bodies)
        started = time.monotonic()
        batch = self._resume(client, key, journal)
        if batch is None:
            batch = self._submit(client, key, bodies, ids)
            if journal is not None:
                journal.submitted(batch.id)  # committed before the first poll
            log.info("%s: submitted Batch job %s (%d requests)", self._where, batch.id, len(bodies))
        batch = self._wait(client, key, batch, len(bodies), journal is not None)
        counts = batch.request_counts
        done = f"{counts.completed} answered, {counts.failed} failed" if counts is not None else "no counts"
        log.info("%s: Batch job %s %s (%s)", self._where, batch.id, batch.status, done)
        answers = self._answers(client, key, batch, ids)
        return answers, time.monotonic() - started, [(journal, batch.status)] if journal is not None else []

    def _resume(self, client, key: str, journal: Any):
        recorded = journal.recorded() if journal is not None else None
        if recorded is None or recorded["status"] in _FINISHED:
            return None
        batch_id = recorded["batch_id"]
        batch = self._http(key, f"retrieving Batch job {batch_id}", lambda: client.batches.retrieve(batch_id), True)
        if batch is None or batch.status in _SUBMIT_AGAIN:
            state = "is gone" if batch is None else f"ended {batch.status}"
            log.info("%s: recorded Batch job %s %s; submitting the calls again", self._where, batch_id, state)
            return None
        log.info("%s: resuming Batch job %s (%s), recorded by an earlier run", self._where, batch.id, batch.status)
        return batch

    def _submit(self, client, key: str, bodies: list[dict], ids: list[str]):
        lines = (
            {"custom_id": i, "method": "POST", "url": ENDPOINT, "body": b} for i, b in zip(ids, bodies, strict=True)
        )
        data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        upload = self._http(
            key,
            "uploading the Batch input file",
            lambda: client.files.create(file=("teams-rl-batch.jsonl", data, "application/jsonl"), purpose="batch"),
        )
        return self._http(
            key,
            "creating the Batch job",
            lambda: client.batches.create(input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"),
        )

    def _wait(self, client, key: str, batch, n: int, recorded: bool):
        from tqdm.auto import tqdm

        batch_id = batch.id
        hint = (
            f"; Batch job {batch_id} is recorded in the ledger: re-run the same command to wait on" if recorded else ""
        )
        with tqdm(total=n, desc=f"batch {batch_id}", unit="req", leave=False) as bar:
            while batch.status not in _FINISHED:
                time.sleep(self.poll_s)
                batch = self._http(
                    key, f"polling Batch job {batch_id}", lambda: client.batches.retrieve(batch_id), hint=hint
                )
                counts = batch.request_counts
                done = (counts.completed or 0) + (counts.failed or 0) if counts is not None else 0
                bar.update(max(0, min(done, n) - bar.n))
        return batch

    def _answers(self, client, key: str, batch, ids: list[str]) -> list[Answer]:
        if batch.status == "failed":
            errors = getattr(batch.errors, "data", None) or []
            why = "; ".join(_short(f"{e.code}: {e.message}" if e.code else e.message, key) for e in errors[:3])
            return [(None, f"Batch job {batch.id} failed: {why or 'no reason given'}")] * len(ids)
        lines: dict[str, dict] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                content = self._http(
                    key, f"downloading {file_id} of Batch job {batch.id}", lambda f=file_id: client.files.content(f)
                )
                lines.update(_read_lines(content.text, file_id))
        missing = f"no answer in Batch job {batch.id} ({batch.status})"
        return [_answer(lines[i], key) if i in lines else (None, missing) for i in ids]

    def _http(self, key: str, what: str, call: Callable[[], T], gone_ok: bool = False, hint: str = "") -> T | None:
        """One call of the files or batches API, with the backoff of ``OpenAIBackend`` on transient errors. A 404
        is None with ``gone_ok`` (a recorded job the server forgot), else a user error: wrong URL or no Batch API."""
        import openai

        attempt = 0
        while True:
            try:
                return call()
            except openai.NotFoundError as exc:
                if gone_ok:
                    return None
                raise TeamsRLError(
                    f"the server at {self._where} answered 404 to {what} ({_status_message(exc, key)}): is the URL "
                    f"right, and does the server have OpenAI's Batch API? ({self.role or 'the'}_backend: openai "
                    "sends the calls one by one)",
                    field=_field(self.role, "base_url"),
                ) from None
            except Exception as exc:
                try:
                    error, retriable, retry_after = self._classify(exc, key)
                except _Fatal as fatal:
                    raise fatal.error from None
            if not retriable or attempt >= self.max_retries:
                raise TeamsRLError(
                    f"{what} at {self._where} failed after {attempt + 1} attempt(s): {error}{hint}",
                    field=_field(self.role, "base_url"),
                )
            delay = self._backoff(attempt, retry_after)
            log.debug("%s: %s; retry %d/%d in %.2fs", what, error, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
            attempt += 1


def _mark(finished: list) -> None:
    """Record each job's final status, once the whole call's answers are read (see ``OpenAIBatchBackend``)."""
    for journal, status in finished:
        journal.status(status)
