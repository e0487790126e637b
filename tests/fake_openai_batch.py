"""The Batch API half of the fake OpenAI server: ``/v1/files`` and ``/v1/batches`` on top of the chat completions of
``fake_openai_server``, with the job state, the scripted fates of jobs and the validation of their input files."""

from __future__ import annotations

import email.parser
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from fake_openai_server import FakeOpenAIServer, known

BATCH_FATES = ("completed", "failed", "expired", "cancelled")
_BATCH_ROUTE = re.compile(r"/v1/batches/([^/]+)(/cancel)?")
_FILE_ROUTE = re.compile(r"/v1/files/([^/]+)/content")


class FakeOpenAIBatchServer(FakeOpenAIServer):
    """``FakeOpenAIServer`` (all its arguments and counters) plus the Batch API.

    ``POST /v1/files`` (multipart, as the openai client uploads), ``GET /v1/files/{id}/content``,
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
        *args: Any,
        hold_batches: bool = False,
        batch_polls: int = 0,
        batch_fates: Sequence[str] = (),
        expired_answers: int | None = None,
        batch_error: str = "the input file failed validation (injected)",
        lose: Callable[[dict[str, Any]], bool] | None = None,
        api_fail: Callable[[str, str], int | None] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.batch_release = threading.Event()
        if not hold_batches:
            self.batch_release.set()
        self.batch_polls = batch_polls
        self.batch_fates = known(batch_fates, BATCH_FATES, "batch fates")
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

    def release_batches(self) -> None:
        """Let held jobs finish at their next retrieve."""
        self.batch_release.set()

    # ------------------------------------------------------------------ routing

    def _other_route(self, handler: Any, method: str, path: str, raw: bytes) -> bool:
        """Every GET, and the POSTs to the files and batches routes, are the Batch API's."""
        if method == "POST" and path not in ("/v1/files", "/v1/batches") and not _BATCH_ROUTE.fullmatch(path):
            return False
        self._batch_api(handler, method, path, raw)
        return True

    def _batch_api(self, handler: Any, method: str, path: str, raw: bytes) -> None:
        auth = handler.headers.get("Authorization", "")
        failed = self.api_fail(method, path) if self.api_fail is not None else None
        if failed:
            headers = {"Retry-After": self.retry_after} if failed == 429 and self.retry_after else {}
            handler._send(failed, _error(self.error_body(failed, auth), "injected", str(failed)), headers)
            return
        batch, content = _BATCH_ROUTE.fullmatch(path), _FILE_ROUTE.fullmatch(path)
        if (method, path) == ("POST", "/v1/files"):
            status, payload = self._upload(handler.headers.get("Content-Type", ""), raw)
        elif (method, path) == ("POST", "/v1/batches"):
            try:
                status, payload = self._create_batch(json.loads(raw or b"{}"), auth)
            except json.JSONDecodeError:
                status, payload = 400, _error("bad json", "invalid_request_error")
        elif batch is not None and (method == "POST") == bool(batch[2]):
            status, payload = self._retrieve_batch(batch[1], cancel=bool(batch[2]))
        elif method == "GET" and content is not None and content[1] in self.files:
            handler._send(200, self.files[content[1]], {"Content-Type": "application/octet-stream"})
            return
        else:
            status, payload = 404, _error(f"no route {method} {path}", "not_found")
        handler._send(status, payload)

    # ------------------------------------------------------------------ files and jobs

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
