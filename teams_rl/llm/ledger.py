"""SQLite (WAL) ledger of every LLM call: a content-addressed cache for crash-resume, exact per-role accounting,
and hard per-role budgets."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from teams_rl.core import secrets
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import store_errors, unwritable
from teams_rl.llm.ledger_schema import CALL_COLUMNS, SCHEMA, add_columns, create

logger = logging.getLogger(__name__)

ROLES = ("instructor", "rewriter", "reviewer", "expert")
TIMEOUT_S = 60.0  # how long a write waits for another process's transaction (WAL: readers never wait)

# SQLite's primary result codes (the low byte of an extended code)
_PERM, _BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 3, 5, 6, 8, 10, 11, 13, 14, 26


@dataclass
class RoleTotals:
    """Spend of one role as the ledger records it (all runs that shared this ledger)."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    errors: int = 0
    usd: float = 0.0  # the priced calls' dollars
    unpriced_calls: int = 0  # calls recorded with no price (an unpriced role, or a ledger older than prices)

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
            create(self.path)
            if self.path.stat().st_size == 0:
                raise sqlite3.DatabaseError("it is empty, 0 bytes")
            self.db = sqlite3.connect(self.path, timeout=TIMEOUT_S, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # with WAL: a commit survives a kill; the file stays whole
            self.db.executescript(SCHEMA)
            add_columns(self.db)
            self.db.commit()

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
        finish_reason[, usd, batch])`` tuples in one transaction, so a kill -9 leaves all of them or none. ``usd`` is
        the call's price (None: unpriced); ``batch`` marks a call made through a Batch API."""
        if not rows:
            return
        now = time.time()
        values = secrets.secret_values()
        with self._errors(), self.db:
            self.db.executemany(
                f"INSERT OR IGNORE INTO calls ({CALL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                        usd,
                        int(batch),
                    )
                    for k, ro, m, ki, rq, rs, pt, ct, lat, fr, usd, batch in (_priced(r) for r in rows)
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
            for role, calls, pt, ct, lat, usd, unpriced in self.db.execute(
                "SELECT role, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_s), SUM(usd), "
                "SUM(usd IS NULL) FROM calls GROUP BY role"
            ):
                out[role] = RoleTotals(calls, pt or 0, ct or 0, lat or 0.0, usd=usd or 0.0, unpriced_calls=unpriced)
            for role, n in self.db.execute("SELECT role, COUNT(*) FROM errors GROUP BY role"):
                out.setdefault(role, RoleTotals()).errors = n
        return out

    def spend_by_model(self) -> list[dict]:
        """Per ``(role, model, batch)``: calls, tokens, the recorded dollars and how many calls had no price."""
        names = ("role", "model", "batch", "calls", "prompt_tokens", "completion_tokens", "usd", "unpriced_calls")
        with self._errors():
            rows = self.db.execute(
                "SELECT role, model, batch, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(usd), "
                "SUM(usd IS NULL) FROM calls GROUP BY role, model, batch ORDER BY role, model, batch"
            ).fetchall()
        return [
            dict(zip(names, (ro, m, bool(b), n, pt or 0, ct or 0, usd or 0.0, un), strict=True))
            for ro, m, b, n, pt, ct, usd, un in rows
        ]

    def batch_job(self, fingerprint: str) -> dict | None:
        """The Batch job recorded for this set of calls, if any: ``batch_id``, ``status``, ``requests``."""
        with self._errors():
            row = self.db.execute(
                "SELECT batch_id, status, requests FROM batch_jobs WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else {"batch_id": row[0], "status": row[1], "requests": row[2]}

    def record_batch_job(self, fingerprint: str, role: str, model: str, batch_id: str, requests: int) -> None:
        """Commit a submitted job before anyone waits on it, so a crash during the wait resumes by polling it."""
        now = time.time()
        with self._errors(), self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO batch_jobs VALUES (?,?,?,?,?,?,?,?)",
                (fingerprint, role, secrets.mask(model), batch_id, requests, "submitted", now, now),
            )

    def set_batch_status(self, fingerprint: str, status: str) -> None:
        with self._errors(), self.db:
            self.db.execute(
                "UPDATE batch_jobs SET status = ?, updated = ? WHERE fingerprint = ?",
                (status, time.time(), fingerprint),
            )

    def batch_jobs(self) -> list[dict]:
        with self._errors():
            rows = self.db.execute(
                "SELECT fingerprint, role, model, batch_id, requests, status, created, updated FROM batch_jobs "
                "ORDER BY created"
            ).fetchall()
        names = ("fingerprint", "role", "model", "batch_id", "requests", "status", "created", "updated")
        return [dict(zip(names, row, strict=True)) for row in rows]

    def close(self) -> None:
        """Close (SQLite folds the WAL back into the file). Never raises: what was committed is already safe."""
        if self.db is None:
            return
        try:
            self.db.close()
        except sqlite3.Error as err:
            logger.warning("closing %s: %s (its committed calls are safe in %s-wal)", self.path, err, self.path)


def _priced(row: tuple) -> tuple:
    """A call row with its price and route: ``put_many`` also takes the older 10-field rows (unpriced, direct)."""
    return row if len(row) == 12 else (*row, None, False)


def _masked_record(record: dict, values: Sequence[str]) -> dict:
    """A result as stored: the text a model wrote masked by exact value only, an error text in full."""
    out = secrets.mask_data(record, known_only=True, values=values)
    if isinstance(out.get("error"), str):
        out["error"] = secrets.mask(out["error"], values)
    return out
