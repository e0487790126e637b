"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benches: replies, latency, failures, broken
answers, trickles, logprobs, and the Batch API (files and batches)."""

from __future__ import annotations

import email.parser
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Messages = list[dict[str, str]]

DEFAULT_TOP_LOGPROBS: list[tuple[str, float]] = [("Yes", -0.1), (" yes", -2.5), ("No", -2.4), ("Maybe", -5.0)]
FAULTS = ("drop", "disconnect", "invalid_json", "not_json", "empty_choices", "no_content", "refusal")
BATCH_FATES = ("completed", "failed", "expired", "cancelled")
_BATCH_ROUTE = re.compile(r"/v1/batches/([^/]+)(/cancel)?")
_FILE_ROUTE = re.compile(r"/v1/files/([^/]+)/content")


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must never keep the test process alive
    request_queue_size = 1024  # the listen backlog; the default of 5 would cap the concurrency a bench can see
    allow_reuse_address = True


class FakeOpenAIServer:
    """``POST /v1/chat/completions`` answering in the OpenAI ``chat.completion`` shape.

    - ``reply(messages) -> text``; tokens are whitespace-separated words, and a reply longer than ``max_tokens``
      is cut to ``max_tokens`` words with ``finish_reason="length"``.
    - ``latency_s``: fixed sleep per answered request.
    - ``trickle_s``: answered bodies go out in ``trickle_chunks`` pieces spread over this many seconds (the headers
      first), so no single read waits long but the whole answer does; ``stop()`` cuts a trickle short.
    - ``failures``: a script consumed one entry per request received, in arrival order: an HTTP status (429 answers
      with ``Retry-After: <retry_after>``, or none when ``retry_after=None``; any other status with an OpenAI-style
      error body), a fault name from ``FAULTS``, or ``None`` to answer normally. ``failures=[429, 500]`` fails the
      first two requests, ``failures=["drop"]`` breaks the first one's body.
    - ``fail(body) -> status | fault | None``: fails every request it picks (checked after ``failures``), e.g. one
      prompt that always gets a 500, or a 400 for any request that asks for logprobs.
    - Faults (``FAULTS``), each an answer with status 200 unless said otherwise: ``"drop"`` sends the headers and
      half the JSON body, then closes the socket; ``"disconnect"`` closes the socket without answering;
      ``"invalid_json"`` sends a body that does not parse, as ``application/json``; ``"not_json"`` sends an HTML
      page as ``text/html`` (a proxy's page); ``"empty_choices"`` sends ``"choices": []``; ``"no_content"`` sends a
      choice whose message has ``content: null`` and no ``finish_reason``; ``"refusal"`` one with ``content: null``,
      a ``refusal`` text and ``finish_reason="stop"`` (OpenAI's structured refusals).
    - ``hang(messages) -> bool``: such requests sleep ``hang_s`` (longer than the client's timeout) before answering;
      ``stop()`` wakes them, so hangs never outlive the server.
    - ``content_filter(messages) -> bool``: such requests end with ``finish_reason="content_filter"`` and no content.
    - ``logprobs=False`` omits logprobs even when asked; ``top_logprobs(messages) -> [(token, logprob), ...]``.
    - ``usage=False`` omits the ``usage`` object.
    - ``error_body(status, auth_header) -> str``: the message of a scripted failure (default: a generic one).

    Counters: ``requests`` (received), ``max_in_flight``; ``bodies`` and ``auth_headers`` keep what was sent.

    The Batch API: ``POST /v1/files`` (multipart, as the openai client uploads), ``GET /v1/files/{id}/content``,
    ``POST /v1/batches``, ``GET /v1/batches/{id}`` and ``POST /v1/batches/{id}/cancel``, in OpenAI's shapes. A job's
    lines are answered when it finishes, each by the same code as ``/v1/chat/completions`` (``reply``, ``failures``,
    ``fail``, faults, logprobs, usage), so per-request faults are scripted the same way: a non-200 answer goes to the
    error file with its status and error body; a fault that breaks the connection or the JSON becomes a 502 line.
    The input file must be uploaded with ``purpose="batch"`` (else the create answers 400) and its lines must be
    ``{"custom_id", "method": "POST", "url": <the job's endpoint>, "body"}`` with unique ``custom_id``s, or the job
    ends ``failed``, as OpenAI's validation does.

    - ``hold_batches=True``: jobs stay ``in_progress`` until ``release_batches()`` (a ``threading.Event``);
      ``batch_polls``: each job also stays ``in_progress`` for its first ``batch_polls`` retrieves.
    - ``batch_fates``: a script consumed one entry per job created, from ``BATCH_FATES`` (default ``completed``):
      ``failed`` answers nothing and sets ``errors`` to ``batch_error``; ``expired`` and ``cancelled`` answer the
      first ``expired_answers`` lines (default: half) and put the rest in the error file as ``batch_expired`` /
      ``batch_cancelled`` errors, as OpenAI does.
    - ``lose(line) -> bool``: such lines are in neither file (a line missing from the output).
    - ``api_fail(method, path) -> status | None``: fails calls to the files and batches routes with that status and
      an OpenAI-style error body (e.g. a 503 on some polls, a 401 on the upload).

    Batch counters: ``files_uploaded``, ``batches_created``, ``batch_polls_seen`` (retrieves), ``polled_ids`` (the
    id of each retrieve), ``batch_lines`` (lines answered) and ``batch_bodies`` (their bodies); ``files`` and
    ``batches`` hold the stored files (bytes) and job objects by id.
    """

    def __init__(
        self,
        reply: Callable[[Messages], str] | None = None,
        latency_s: float = 0.0,
        trickle_s: float = 0.0,
        trickle_chunks: int = 10,
        failures: Sequence[int | str | None] = (),
        fail: Callable[[dict[str, Any]], int | str | None] | None = None,
        retry_after: str | None = "0",
        hang: Callable[[Messages], bool] | None = None,
        hang_s: float = 10.0,
        content_filter: Callable[[Messages], bool] | None = None,
        logprobs: bool = True,
        top_logprobs: Callable[[Messages], list[tuple[str, float]]] | None = None,
        usage: bool = True,
        error_body: Callable[[int, str], str] | None = None,
        model: str = "fake-model",
        hold_batches: bool = False,
        batch_polls: int = 0,
        batch_fates: Sequence[str] = (),
        expired_answers: int | None = None,
        batch_error: str = "the input file failed validation (injected)",
        lose: Callable[[dict[str, Any]], bool] | None = None,
        api_fail: Callable[[str, str], int | None] | None = None,
    ):
        self.reply = reply or (lambda messages: "ok")
        self.latency_s = latency_s
        self.trickle_s = trickle_s
        self.trickle_chunks = trickle_chunks
        self.failures = list(failures)
        unknown = [f for f in self.failures if isinstance(f, str) and f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}; choose from {FAULTS}")
        self.fail = fail
        self.retry_after = retry_after
        self.hang = hang
        self.hang_s = hang_s
        self.content_filter = content_filter
        self.logprobs = logprobs
        self.top_logprobs = top_logprobs or (lambda messages: list(DEFAULT_TOP_LOGPROBS))
        self.usage = usage
        self.error_body = error_body or (lambda status, auth: f"injected failure {status}")
        self.model = model
        self.batch_release = threading.Event()
        if not hold_batches:
            self.batch_release.set()
        self.batch_polls = batch_polls
        self.batch_fates = list(batch_fates)
        unknown = [f for f in self.batch_fates if f not in BATCH_FATES]
        if unknown:
            raise ValueError(f"unknown batch fates {unknown}; choose from {BATCH_FATES}")
        self.expired_answers = expired_answers
        self.batch_error = batch_error
        self.lose = lose
        self.api_fail = api_fail

        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.files_uploaded = 0
        self.batches_created = 0
        self.batch_polls_seen = 0
        self.polled_ids: list[str] = []
        self.batch_lines = 0
        self.batch_bodies: list[dict[str, Any]] = []
        self._jobs: dict[str, dict[str, Any]] = {}  # job id -> its fate, polls so far, lines and the creator's auth
        self._purposes: dict[str, str] = {}  # file id -> the purpose it was uploaded with
        self._batch_lock = threading.Lock()  # job state; a job's lines are answered under it, taking _lock inside

        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._server = _Server(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hung handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def release_batches(self) -> None:
        """Let held jobs finish at their next retrieve."""
        self.batch_release.set()

    # ------------------------------------------------------------------ request handling

    def _next_failure(self, body: dict[str, Any]) -> int | str | None:
        with self._lock:
            if self.failures:
                return self.failures.pop(0)
        return self.fail(body) if self.fail is not None else None

    def _respond(self, body: dict[str, Any], auth: str) -> tuple[int, dict[str, Any] | bytes, dict[str, str], str]:
        """(status, payload, headers, fault or "") of one request, after any scripted failure, hang or latency.

        A bytes payload goes out as it is; the handler carries out ``drop`` and ``disconnect``."""
        failure = self._next_failure(body)
        if isinstance(failure, int):
            headers = {"Retry-After": self.retry_after} if failure == 429 and self.retry_after else {}
            error = {"message": self.error_body(failure, auth), "type": "injected", "code": str(failure)}
            return failure, {"error": error}, headers, ""
        if failure == "disconnect":
            return 0, b"", {}, failure
        if failure == "invalid_json":
            return 200, b'{"id": "chatcmpl-fake", "choices": [{"index": 0, "message": {"role": ', {}, ""
        if failure == "not_json":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return 200, page, {"Content-Type": "text/html"}, ""
        if self.hang is not None and self.hang(body.get("messages", [])):
            self._stopping.wait(self.hang_s)  # bounded, and cut short by stop()
        if self.latency_s:
            time.sleep(self.latency_s)
        answer = self._answer(body)
        if failure == "empty_choices":
            answer["choices"] = []
        elif failure == "no_content":
            answer["choices"][0]["message"]["content"] = None
            answer["choices"][0]["finish_reason"] = None
        elif failure == "refusal":
            answer["choices"][0]["message"].update(content=None, refusal="I can't help with that.")
        return 200, answer, {}, failure or ""

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages", [])
        words = str(self.reply(messages)).split()
        finish = "stop"
        max_tokens = body.get("max_tokens")
        if max_tokens is not None and len(words) > int(max_tokens):
            words, finish = words[: int(max_tokens)], "length"
        content: str | None = " ".join(words)
        if self.content_filter is not None and self.content_filter(messages):
            words, content, finish = [], None, "content_filter"
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish,
            "logprobs": None,
        }
        if body.get("logprobs") and self.logprobs:
            top = self.top_logprobs(messages)[: int(body.get("top_logprobs") or 0) or None]
            first_token, first_lp = top[0] if top else (words[0] if words else "", 0.0)
            choice["logprobs"] = {
                "content": [
                    {
                        "token": first_token,
                        "logprob": first_lp,
                        "bytes": list(first_token.encode()),
                        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
                    }
                ]
            }
        out: dict[str, Any] = {
            "id": f"chatcmpl-fake-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [choice],
        }
        if self.usage:
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
            out["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            }
        return out

    # ------------------------------------------------------------------ the Batch API

    def _upload(self, content_type: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        """``POST /v1/files``: the multipart form the openai client sends (a ``purpose`` field and a ``file``)."""
        head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
        message = email.parser.BytesParser().parsebytes(head + raw)
        if not message.is_multipart():
            return 400, _error("expected a multipart/form-data upload", "invalid_request_error")
        fields = {}
        for part in message.get_payload():
            name = part.get_param("name", header="content-disposition")
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
        if "file" not in fields:
            return 400, _error("no file in the upload", "invalid_request_error")
        filename, data = fields["file"]
        purpose = fields.get("purpose", (None, b""))[1].decode()
        with self._batch_lock:
            self.files_uploaded += 1
            file_id = f"file-fake-{self.files_uploaded}"
            self.files[file_id], self._purposes[file_id] = data, purpose
        return 200, _file_object(file_id, data, filename or "upload.jsonl", purpose)

    def _create_batch(self, body: dict[str, Any], auth: str) -> tuple[int, dict[str, Any]]:
        file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
        with self._batch_lock:
            if self._purposes.get(file_id) != "batch":  # unknown, or uploaded for another purpose
                return 400, _error(f"no file {file_id!r} with purpose 'batch'", "invalid_request_error")
            self.batches_created += 1
            batch_id = f"batch_fake_{self.batches_created}"
            lines, problem = _input_lines(self.files[file_id], endpoint)
            fate = self.batch_fates.pop(0) if self.batch_fates else "completed"
            self._jobs[batch_id] = {"fate": fate, "polls": 0, "lines": lines, "problem": problem, "auth": auth}
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": endpoint,
                "input_file_id": file_id,
                "completion_window": body.get("completion_window"),
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "errors": None,
                "created_at": int(time.time()),
                "in_progress_at": None,
                "finalizing_at": None,
                "completed_at": None,
                "failed_at": None,
                "expired_at": None,
                "cancelled_at": None,
                "expires_at": int(time.time()) + 24 * 3600,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
            return 200, json.loads(json.dumps(self.batches[batch_id]))

    def _retrieve_batch(self, batch_id: str, cancel: bool = False) -> tuple[int, dict[str, Any]]:
        """A retrieve finishes a released job (answering its lines); a cancel finishes it at once, as cancelled."""
        with self._batch_lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return 404, _error(f"No batch found with id '{batch_id}'.", "invalid_request_error")
            job = self._jobs[batch_id]
            if not cancel:
                self.batch_polls_seen += 1
                self.polled_ids.append(batch_id)
                job["polls"] += 1
            if batch["status"] in ("validating", "in_progress"):
                if cancel:
                    job["fate"] = "cancelled"
                    self._finish(batch, job)
                elif self.batch_release.is_set() and job["polls"] > self.batch_polls:
                    self._finish(batch, job)
                else:
                    batch["status"], batch["in_progress_at"] = (
                        "in_progress",
                        batch["in_progress_at"] or int(time.time()),
                    )
            return 200, json.loads(json.dumps(batch))

    def _finish(self, batch: dict[str, Any], job: dict[str, Any]) -> None:
        now = int(time.time())
        fate, lines = job["fate"], job["lines"]
        if job["problem"] or fate == "failed":
            message = job["problem"] or self.batch_error
            errors = [{"code": "invalid_request", "message": message, "param": None, "line": None}]
            batch.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            return
        answered = len(lines) if fate == "completed" else self.expired_answers
        answered = len(lines) // 2 if answered is None else answered
        out, err = [], []
        for i, line in enumerate(lines):
            if self.lose is not None and self.lose(line):
                continue
            entry = {"id": f"batch_req_{batch['id']}_{i}", "custom_id": line["custom_id"], "response": None}
            if i >= answered:
                code = "batch_expired" if fate == "expired" else "batch_cancelled"
                entry["error"] = {"code": code, "message": f"This request could not be executed ({fate})."}
                err.append(entry)
                continue
            status, payload = self._answer_line(line["body"], job["auth"])
            entry["response"] = {"status_code": status, "request_id": f"req_{batch['id']}_{i}", "body": payload}
            entry["error"] = None
            (out if status == 200 else err).append(entry)
        for name, entries in (("output_file_id", out), ("error_file_id", err)):
            if entries:
                file_id = f"file-{name.split('_')[0]}-{batch['id']}"
                self.files[file_id] = "".join(json.dumps(e) + "\n" for e in entries).encode()
                batch[name] = file_id
        batch["request_counts"].update(completed=len(out), failed=len(err))
        batch.update({"status": fate, "finalizing_at": now, f"{fate}_at": now})

    def _answer_line(self, body: dict[str, Any], auth: str) -> tuple[int, dict[str, Any]]:
        """One line of a job, answered as ``/v1/chat/completions`` would be; a broken body or connection is a 502."""
        with self._lock:
            self.batch_lines += 1
            self.batch_bodies.append(body)
        status, payload, _, fault = self._respond(body, auth)
        if isinstance(payload, bytes) or fault in ("drop", "disconnect"):
            return 502, _error(f"injected fault {fault or 'bad body'}", "server_error")
        return status, payload

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers
            # Headers and body go out in two writes; with Nagle on, delayed ACKs add ~40 ms to every answer.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def _send(
                self,
                status: int,
                payload: dict[str, Any] | bytes,
                headers: dict[str, str] | None = None,
                fault: str = "",
            ) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
                try:
                    if fault == "disconnect":
                        self.close_connection = True  # no answer at all: the handler closes the socket
                        return
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(data)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    if fault == "drop":  # the promised length never arrives: half the body, then the socket closes
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    if fake.trickle_s > 0:
                        self.wfile.flush()
                        self._trickle(data)
                        return
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered

            def _trickle(self, data: bytes) -> None:
                chunks = max(1, fake.trickle_chunks)
                size = -(-len(data) // chunks)
                for start in range(0, len(data), size):
                    if fake._stopping.wait(fake.trickle_s / chunks):
                        self.close_connection = True
                        return
                    self.wfile.write(data[start : start + size])
                    self.wfile.flush()

            def _batch_api(self, method: str, path: str, raw: bytes) -> None:
                auth = self.headers.get("Authorization", "")
                failed = fake.api_fail(method, path) if fake.api_fail is not None else None
                if failed:
                    headers = {"Retry-After": fake.retry_after} if failed == 429 and fake.retry_after else {}
                    self._send(failed, _error(fake.error_body(failed, auth), "injected", str(failed)), headers)
                    return
                batch, content = _BATCH_ROUTE.fullmatch(path), _FILE_ROUTE.fullmatch(path)
                if (method, path) == ("POST", "/v1/files"):
                    status, payload = fake._upload(self.headers.get("Content-Type", ""), raw)
                elif (method, path) == ("POST", "/v1/batches"):
                    try:
                        status, payload = fake._create_batch(json.loads(raw or b"{}"), auth)
                    except json.JSONDecodeError:
                        status, payload = 400, _error("bad json", "invalid_request_error")
                elif batch is not None and (method == "POST") == bool(batch[2]):
                    status, payload = fake._retrieve_batch(batch[1], cancel=bool(batch[2]))
                elif method == "GET" and content is not None and content[1] in fake.files:
                    self._send(200, fake.files[content[1]], {"Content-Type": "application/octet-stream"})
                    return
                else:
                    status, payload = 404, _error(f"no route {method} {path}", "not_found")
                self._send(status, payload)

            def do_GET(self) -> None:
                self._batch_api("GET", self.path.split("?")[0].rstrip("/"), b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0].rstrip("/")
                if path in ("/v1/files", "/v1/batches") or _BATCH_ROUTE.fullmatch(path):
                    self._batch_api("POST", path, raw)
                    return
                if path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                    return
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._send(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
                    return
                auth = self.headers.get("Authorization", "")
                with fake._lock:
                    fake.requests += 1
                    fake.bodies.append(body)
                    fake.auth_headers.append(auth)
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, payload, headers, fault = fake._respond(body, auth)
                finally:
                    # Counted out before the answer is written: the client cannot start its next request while
                    # this one still counts, so max_in_flight never over-reports.
                    with fake._lock:
                        fake.in_flight -= 1
                self._send(status, payload, headers, fault)

        return Handler


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _file_object(file_id: str, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": len(data),
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
    }


def _input_lines(data: bytes, endpoint: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """A job's request lines, or why its input fails validation (the job then ends ``failed``)."""
    lines: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, text in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            return [], f"line {n} is not JSON"
        if not isinstance(line, dict) or not isinstance(line.get("body"), dict):
            return [], f"line {n} has no body"
        if line.get("method") != "POST" or line.get("url") != endpoint:
            return [], f"line {n}: expected POST {endpoint}, got {line.get('method')} {line.get('url')}"
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or custom_id in seen:
            return [], f"line {n}: custom_id missing or repeated ({custom_id!r})"
        seen.add(custom_id)
        lines.append(line)
    return lines, None if lines else "the input file has no requests"
