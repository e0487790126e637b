"""A backend seen through the ledger under one role: cache hits, per-role budgets and what this process spent."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from teams_rl.core import secrets
from teams_rl.core.errors import BudgetExhausted
from teams_rl.llm.base import Backend, GenerationRequest, GenerationResult, ScoreRequest, ScoreResult
from teams_rl.llm.ledger import Ledger, RoleTotals
from teams_rl.llm.prices import Price


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
    """Hard caps for one role over the whole ledger. ``max_calls`` is exact: never exceeded. ``max_tokens`` and
    ``max_usd`` are checked before each batch (a call's tokens are known only once it is answered), so either may be
    passed by at most one batch."""

    max_calls: int | None = None
    max_tokens: int | None = None
    max_usd: float | None = None


class BatchJournal:
    """What a Batch backend (``submits_batches = True``) gets with one set of calls: the job it submitted for this
    very set (the same ledger keys) is committed to the ledger before it waits, so a process that died waiting
    polls that job on its re-run instead of paying for a second one."""

    def __init__(self, ledger: Ledger, role: str, model: str, keys: Sequence[str]):
        self.ledger, self.role, self.model, self.requests = ledger, role, model, len(keys)
        self.fingerprint = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()

    def derived(self, tag: str, ids: Sequence[str]) -> BatchJournal:
        """The journal of a follow-up job this set needs (e.g. its lines resent without logprobs), ``ids`` naming
        that job's lines: it gets its own entry, so a kill during its wait resumes it too."""
        return BatchJournal(self.ledger, self.role, self.model, [f"{self.fingerprint}:{tag}:{i}" for i in ids])

    def recorded(self) -> dict | None:
        """``{"batch_id", "status", "requests"}`` of the job recorded for this set of calls, if any."""
        return self.ledger.batch_job(self.fingerprint)

    def submitted(self, batch_id: str) -> None:
        self.ledger.record_batch_job(self.fingerprint, self.role, self.model, batch_id, self.requests)

    def status(self, status: str) -> None:
        self.ledger.set_batch_status(self.fingerprint, status)


@dataclass
class RunStats:
    """What this process spent for one role: new calls paid for vs calls answered by the ledger."""

    new_calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: int = 0
    usd: float = 0.0  # what the new calls cost (0 when the role is unpriced)
    finish_reasons: dict[str, int] = field(default_factory=dict)


class RoleClient:
    """A backend seen through the ledger under one role: what every stage calls instead of a backend.

    With a ``price`` each new call is recorded with its dollars (the Batch route's discount applied when the backend
    says ``batch_route = True``), which ``teams-rl ledger`` sums and ``Budget.max_usd`` caps."""

    def __init__(
        self,
        backend: Backend,
        ledger: Ledger,
        role: str,
        budget: Budget | None = None,
        price: Price | None = None,
    ):
        self.backend = backend
        self.ledger = ledger
        self.role = role
        self.budget = budget or Budget()
        self.price = price
        self.batch_route = bool(getattr(backend, "batch_route", False))
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
                usd = self._usd(res)
                pt, lat = res.prompt_tokens, res.latency_s
                return key, self.role, model, kind, first, record, pt, tokens, lat, reason, usd, self.batch_route

            committed: set[str] = set()

            def commit_one(j: int, res) -> None:
                """An answer is committed as it arrives, so a kill loses only the calls still in flight."""
                res = _masked_result(res, values)
                if res.ok:
                    self.ledger.put_many([row(allowed[j], res)])
                    committed.add(allowed[j])

            extra = {"on_result": commit_one} if getattr(self.backend, "reports_each_result", False) else {}
            if getattr(self.backend, "submits_batches", False):
                extra["journal"] = BatchJournal(self.ledger, self.role, model, allowed)
            batch = [requests[missing[k][0]] for k in allowed]
            fresh = [_masked_result(r, values) for r in call(batch, **extra)]
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

    def _usd(self, res) -> float | None:
        if self.price is None:
            return None
        return self.price.cost(res.prompt_tokens, getattr(res, "completion_tokens", 0), batch=self.batch_route)

    def _count(self, res) -> None:
        self.stats.new_calls += 1
        self.stats.usd += self._usd(res) or 0.0
        self.stats.prompt_tokens += res.prompt_tokens
        self.stats.completion_tokens += getattr(res, "completion_tokens", 0)
        reason = getattr(res, "finish_reason", "score")
        self.stats.finish_reasons[reason] = self.stats.finish_reasons.get(reason, 0) + 1

    def _allowed(self, n: int) -> tuple[int, str | None]:
        """How many of ``n`` new calls the budget admits, and why the rest are blocked."""
        b = self.budget
        if n == 0 or (b.max_calls is None and b.max_tokens is None and b.max_usd is None):
            return n, None
        spent = self.ledger.totals().get(self.role, RoleTotals())
        if b.max_tokens is not None and spent.tokens >= b.max_tokens:
            return 0, f"{spent.tokens} tokens spent, max_tokens={b.max_tokens}"
        if b.max_usd is not None and spent.usd >= b.max_usd:
            return 0, f"{spent.usd:.4f} USD spent, max_usd={b.max_usd:g}"
        if self.budget.max_calls is not None and spent.calls + n > self.budget.max_calls:
            left = max(0, self.budget.max_calls - spent.calls)
            return left, f"{spent.calls + left} calls spent, max_calls={self.budget.max_calls}"
        return n, None
