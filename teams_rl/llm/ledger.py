"""SQLite (WAL) ledger of every LLM call: a content-addressed cache for crash-resume, exact per-role accounting,
and hard per-role budgets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from teams_rl.core import secrets
from teams_rl.core.errors import BudgetExhausted, TeamsRLError
from teams_rl.core.files import store_errors, unwritable
from teams_rl.llm.base import Backend, GenerationRequest, GenerationResult, ScoreRequest, ScoreResult

logger = logging.getLogger(__name__)

ROLES = ("instructor", "rewriter", "reviewer", "expert")
TIMEOUT_S = 60.0  # how long a write waits for another process's transaction (WAL: readers never wait)

# SQLite's primary result codes (the low byte of an extended code)
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 6, 8, 10, 11, 13, 14, 26

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    finish_reason TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_role ON calls(role);
CREATE TABLE IF NOT EXISTS errors (
    role TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL, error TEXT NOT NULL, created REAL NOT NULL
);
"""


@dataclass
class RoleTotals:
    """Spend of one role as the ledger records it (all runs that shared this ledger)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    errors: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Ledger:
    """The call store. One file per run folder; safe for concurrent processes (WAL + busy timeout).

    Failed calls are not cached (a re-run retries them) but are counted in ``errors``. Each batch is one
    transaction: a kill, a full disk or a refused write loses at most the batch in flight. A corrupt or empty
    file, a full disk and a read-only folder raise one ``TeamsRLError`` naming the file and what to do.

    Known secrets are masked in what is stored: server error texts in full (``secrets.mask``), requests and answers
    by exact value (``secrets.mask_known``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.db: sqlite3.Connection | None = None
        with self._errors():
            with store_errors(self.path, "nothing was changed"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._create()
            if self.path.stat().st_size == 0:
                raise sqlite3.DatabaseError("it is empty, 0 bytes")
            self.db = sqlite3.connect(self.path, timeout=TIMEOUT_S, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a commit survives a kill; the file stays whole
            self.db.executescript(_SCHEMA)
            self.db.commit()

    def _create(self) -> None:
        """A new ledger appears whole (schema written, WAL mode set) under its name, never as a 0-byte file a kill
        could leave behind: built under a temp name, then hard-linked (which never replaces another process's)."""
        if self.path.exists():
            return
        tmp = self.path.with_name(f".{self.path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            db = sqlite3.connect(tmp)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                db.commit()
            finally:
                db.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass  # another process made it first: use theirs
            except OSError:  # no hard links on this file system
                if not self.path.exists():
                    os.replace(tmp, self.path)
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                leftover.unlink(missing_ok=True)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """SQLite's failures that the user can fix become one ``TeamsRLError``; anything else (a bug) passes."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            located = self._error(err)
            if located is None:
                raise
            raise located from None

    def _error(self, err: sqlite3.DatabaseError) -> TeamsRLError | None:
        code = (getattr(err, "sqlite_errorcode", None) or 0) & 0xFF
        text = str(err)
        where = str(self.path)
        if code in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text or "0 bytes" in text:
            message = (
                f"the ledger is corrupt ({text}): move it aside (mv {where} {where}.corrupt) and re-run the same "
                "command; a new ledger starts empty, so the LLM calls it recorded are paid for again (datasets "
                "already written are not touched)"
            )
        elif code in (_FULL, _IOERR):
            message = (
                f"cannot write the ledger ({text}): the disk is full, a file-size limit (ulimit -f) was reached or "
                "the disk failed; free some space and re-run the same command: the calls recorded before this batch "
                "are kept and are not paid for again"
            )
        elif code in (_READONLY, _CANTOPEN, _PERM):
            folder = unwritable(self.path)
            message = (
                f"cannot write the ledger ({text}): {folder} is read-only for this user; make it writable "
                f"(chmod -R u+w {folder}) or choose another output folder, then re-run the same command: the calls "
                "recorded so far are kept"
            )
        elif code in (_BUSY, _LOCKED):
            message = (
                f"another process held the ledger for over {TIMEOUT_S:g} s ({text}): wait for it to finish, or "
                "stop it, then re-run the same command"
            )
        else:
            return None
        return TeamsRLError(message, file=where)

    @staticmethod
    def key(role: str, model: str, kind: str, payload: dict) -> str:
        blob = json.dumps({"role": role, "model": model, "kind": kind, **payload}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        unique = list(dict.fromkeys(keys))
        with self._errors():
            for start in range(0, len(unique), 500):  # stay under SQLite's bound-variable limit
                chunk = unique[start : start + 500]
                rows = self.db.execute(
                    f"SELECT key, response FROM calls WHERE key IN ({','.join('?' * len(chunk))})", chunk
                ).fetchall()
                found.update({k: json.loads(r) for k, r in rows})
        return found

    def put_many(self, rows: Sequence[tuple]) -> None:
        """Store ``(key, role, model, kind, request, response, prompt_tokens, completion_tokens, latency_s,
        finish_reason)`` tuples in one transaction, so a kill -9 leaves all of them or none."""
        if not rows:
            return
        now = time.time()
        values = secrets.secret_values()
        with self._errors(), self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        k,
                        ro,
                        secrets.mask(m, values),
                        ki,
                        json.dumps(secrets.mask_data(rq, known_only=True, values=values)),
                        json.dumps(_masked_record(rs, values)),
                        pt,
                        ct,
                        lat,
                        fr,
                        now,
                    )
                    for k, ro, m, ki, rq, rs, pt, ct, lat, fr in rows
                ],
            )

    def record_errors(self, role: str, model: str, kind: str, errors: Sequence[str]) -> None:
        """Count failed calls; their texts (often a server's own message) are stored masked."""
        if errors:
            now = time.time()
            values = secrets.secret_values()
            model = secrets.mask(model, values)
            with self._errors(), self.db:
                self.db.executemany(
                    "INSERT INTO errors VALUES (?,?,?,?,?)",
                    [(role, model, kind, secrets.mask(e, values), now) for e in errors],
                )

    def totals(self) -> dict[str, RoleTotals]:
        out: dict[str, RoleTotals] = {}
        with self._errors():
            for role, calls, pt, ct, lat in self.db.execute(
                "SELECT role, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_s) "
                "FROM calls GROUP BY role"
            ):
                out[role] = RoleTotals(calls, pt or 0, ct or 0, lat or 0.0)
            for role, n in self.db.execute("SELECT role, COUNT(*) FROM errors GROUP BY role"):
                out.setdefault(role, RoleTotals()).errors = n
        return out

    def close(self) -> None:
        """Close (SQLite folds the WAL back into the file). Never raises: what was committed is already safe."""
        if self.db is None:
            return
        try:
            self.db.close()
        except sqlite3.Error as err:
            logger.warning("closing %s: %s (its committed calls are safe in %s-wal)", self.path, err, self.path)


def _masked_record(record: dict, values: Sequence[str]) -> dict:
    """A result as stored: the text a model wrote masked by exact value only, an error text in full."""
    out = secrets.mask_data(record, known_only=True, values=values)
    if isinstance(out.get("error"), str):
        out["error"] = secrets.mask(out["error"], values)
    return out


def _masked_result(res, values: Sequence[str]):
    """``res`` as the ledger will give it back on a re-run (see ``_masked_record``), so both runs see the same."""
    changes = {}
    if isinstance(getattr(res, "text", None), str):
        changes["text"] = secrets.mask_known(res.text, values)
    if isinstance(res.error, str):
        changes["error"] = secrets.mask(res.error, values)
    changed = {k: v for k, v in changes.items() if v != getattr(res, k)}
    return dataclasses.replace(res, **changed) if changed else res


@dataclass
class Budget:
    """Hard caps for one role over the whole ledger. ``max_calls`` is exact: never exceeded.
    ``max_tokens`` is checked before each batch, so it may be passed by at most one batch."""

    max_calls: int | None = None
    max_tokens: int | None = None


@dataclass
class RunStats:
    """What this process spent for one role: new calls paid for vs calls answered by the ledger."""

    new_calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    finish_reasons: dict[str, int] = field(default_factory=dict)


class RoleClient:
    """A backend seen through the ledger under one role: what every stage calls instead of a backend."""

    def __init__(self, backend: Backend, ledger: Ledger, role: str, budget: Budget | None = None):
        self.backend = backend
        self.ledger = ledger
        self.role = role
        self.budget = budget or Budget()
        self.stats = RunStats()
        # the key's variable and a base_url's password are masked wherever this process writes or logs
        secrets.register_env(getattr(backend, "api_key_env", None))
        secrets.register_url(getattr(backend, "base_url", None))

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        payloads = [{"messages": list(r.messages), "sampling": r.sampling.to_dict(), "seed": r.seed} for r in requests]
        return self._run("generate", requests, payloads, self.backend.generate, GenerationResult)

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        payloads = [{"messages": list(r.messages), "choices": list(r.choices), "seed": r.seed} for r in requests]
        return self._run("score", requests, payloads, self.backend.score, ScoreResult)

    def _run(self, kind, requests, payloads, call, result_type):
        model = self.backend.model_id
        keys = [Ledger.key(self.role, model, kind, p) for p in payloads]
        cached = self.ledger.get_many(keys)
        results: list = [None] * len(requests)
        missing: dict[str, list[int]] = {}  # identical requests in one batch are paid once
        for i, key in enumerate(keys):
            if key in cached:
                results[i] = result_type(**cached[key], cached=True)
                self.stats.cached_calls += 1
            else:
                missing.setdefault(key, []).append(i)
        todo = list(missing)
        n_allowed, blocked = self._allowed(len(todo))
        allowed = todo[:n_allowed]
        if allowed:
            values = secrets.secret_values()

            def row(key, res) -> tuple:
                record = {f: v for f, v in vars(res).items() if f != "cached"}
                first = payloads[missing[key][0]]
                tokens = getattr(res, "completion_tokens", 0)
                reason = getattr(res, "finish_reason", None)
                return key, self.role, model, kind, first, record, res.prompt_tokens, tokens, res.latency_s, reason

            committed: set[str] = set()

            def commit_one(j: int, res) -> None:
                """An answer is committed as it arrives, so a kill loses only the calls still in flight."""
                res = _masked_result(res, values)
                if res.ok:
                    self.ledger.put_many([row(allowed[j], res)])
                    committed.add(allowed[j])

            streaming = {"on_result": commit_one} if getattr(self.backend, "reports_each_result", False) else {}
            batch = [requests[missing[k][0]] for k in allowed]
            fresh = [_masked_result(r, values) for r in call(batch, **streaming)]
            rows, errors = [], []
            for key, res in zip(allowed, fresh, strict=True):
                for i in missing[key]:
                    results[i] = res
                if res.ok:
                    self._count(res)
                    if key not in committed:
                        rows.append(row(key, res))
                else:
                    self.stats.errors += 1
                    errors.append(res.error or "error")
            self.ledger.put_many(rows)
            self.ledger.record_errors(self.role, model, kind, errors)
        if blocked:
            raise BudgetExhausted(self.role, blocked)
        return results

    def _count(self, res) -> None:
        self.stats.new_calls += 1
        self.stats.prompt_tokens += res.prompt_tokens
        self.stats.completion_tokens += getattr(res, "completion_tokens", 0)
        reason = getattr(res, "finish_reason", "score")
        self.stats.finish_reasons[reason] = self.stats.finish_reasons.get(reason, 0) + 1

    def _allowed(self, n: int) -> tuple[int, str | None]:
        """How many of ``n`` new calls the budget admits, and why the rest are blocked."""
        if n == 0 or (self.budget.max_calls is None and self.budget.max_tokens is None):
            return n, None
        spent = self.ledger.totals().get(self.role, RoleTotals())
        if self.budget.max_tokens is not None and spent.tokens >= self.budget.max_tokens:
            return 0, f"{spent.tokens} tokens spent, max_tokens={self.budget.max_tokens}"
        if self.budget.max_calls is not None and spent.calls + n > self.budget.max_calls:
            left = max(0, self.budget.max_calls - spent.calls)
            return left, f"{spent.calls + left} calls spent, max_calls={self.budget.max_calls}"
        return n, None
