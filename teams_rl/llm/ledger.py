"""SQLite (WAL) ledger of every LLM call: a content-addressed cache for crash-resume, exact per-role accounting,
and hard per-role budgets."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from teams_rl.core import secrets
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import store_errors, unwritable

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
