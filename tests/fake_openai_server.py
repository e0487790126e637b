"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benches: replies, latency, failures, broken
answers, trickles and logprobs (the Batch API is in fake_openai_batch.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Messages = list[dict[str, str]]

DEFAULT_TOP_LOGPROBS: list[tuple[str, float]] = [("Yes", -0.1), (" yes", -2.5), ("No", -2.4), ("Maybe", -5.0)]


def known(values: Sequence[Any], allowed: Sequence[str], what: str) -> list[Any]:
    """``values`` as a list, after checking that each string among them is one of ``allowed``."""
    unknown = [v for v in values if isinstance(v, str) and v not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; choose from {allowed}")
    return list(values)


FAULTS = ("drop", "disconnect", "invalid_json", "not_json", "empty_choices", "no_content", "refusal")


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

    Routes other than ``/v1/chat/completions`` answer 404 unless a subclass takes them (``_other_route``).
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
    ):
        self.reply = reply or (lambda messages: "ok")
        self.latency_s = latency_s
        self.trickle_s = trickle_s
        self.trickle_chunks = trickle_chunks
        self.failures = known(failures, FAULTS, "faults")
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

    def _other_route(self, handler: Any, method: str, path: str, raw: bytes) -> bool:
        """Answer a request to another route through ``handler`` and return True, or return False (a 404)."""
        return False

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

            def do_GET(self) -> None:
                if not fake._other_route(self, "GET", self.path.split("?")[0].rstrip("/"), b""):
                    self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                path = self.path.split("?")[0].rstrip("/")
                if fake._other_route(self, "POST", path, raw):
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
