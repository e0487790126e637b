"""SQLite (WAL) ledger of every LLM call: a content-addressed cache for crash-resume, exact per-role accounting,
and hard per-role budgets."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from teams_rl.core.errors import BudgetExhausted
from teams_rl.llm.base import Backend, GenerationRequest, GenerationResult, ScoreRequest, ScoreResult

ROLES = ("instructor", "rewriter", "reviewer", "expert")

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

    Failed calls are not cached (a re-run retries them) but are counted in ``errors``.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.db.commit()

    @staticmethod
    def key(role: str, model: str, kind: str, payload: dict) -> str:
        blob = json.dumps({"role": role, "model": model, "kind": kind, **payload}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        found: dict[str, dict] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # stay under SQLite's bound-variable limit
            chunk = unique[start : start + 500]
            rows = self.db.execute(
                f"SELECT key, response FROM calls WHERE key IN ({','.join('?' * len(chunk))})", chunk
            ).fetchall()
            found.update({k: json.loads(r) for k, r in rows})
        return found

    def put_many(self, rows: Sequence[tuple]) -> None:
        """Store ``(key, role, model, kind, request, response, prompt_tokens, completion_tokens, latency_s,
        finish_reason)`` tuples in one transaction, so a kill -9 leaves whole batches or nothing."""
        now = time.time()
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO calls VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (k, ro, m, ki, json.dumps(rq), json.dumps(rs), pt, ct, lat, fr, now)
                    for k, ro, m, ki, rq, rs, pt, ct, lat, fr in rows
                ],
            )

    def record_errors(self, role: str, model: str, kind: str, errors: Sequence[str]) -> None:
        if errors:
            now = time.time()
            with self.db:
                self.db.executemany(
                    "INSERT INTO errors VALUES (?,?,?,?,?)", [(role, model, kind, e, now) for e in errors]
                )

    def totals(self) -> dict[str, RoleTotals]:
        out: dict[str, RoleTotals] = {}
        for role, calls, pt, ct, lat in self.db.execute(
            "SELECT role, COUNT(*), SUM(prompt_tokens), SUM(completion_tokens), SUM(latency_s) "
            "FROM calls GROUP BY role"
        ):
            out[role] = RoleTotals(calls, pt or 0, ct or 0, lat or 0.0)
        for role, n in self.db.execute("SELECT role, COUNT(*) FROM errors GROUP BY role"):
            out.setdefault(role, RoleTotals()).errors = n
        return out

    def close(self) -> None:
        self.db.close()


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
            fresh = call([requests[missing[k][0]] for k in allowed])
            rows, errors = [], []
            for key, res in zip(allowed, fresh, strict=True):
                for i in missing[key]:
                    results[i] = res
                if res.ok:
                    self._count(res)
                    record = {f: v for f, v in vars(res).items() if f != "cached"}
                    rows.append(
                        (
                            key,
                            self.role,
                            model,
                            kind,
                            payloads[missing[key][0]],
                            record,
                            res.prompt_tokens,
                            getattr(res, "completion_tokens", 0),
                            res.latency_s,
                            getattr(res, "finish_reason", None),
                        )
                    )
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
