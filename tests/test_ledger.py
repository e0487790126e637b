"""The SQLite ledger behind RoleClient: cache hits, in-batch dedup, cache keys, errors, budgets, WAL, totals."""

import math
import sqlite3

import pytest

from teams_rl.core.errors import BudgetExhausted
from teams_rl.llm.base import GenerationRequest, GenerationResult, SamplingParams, ScoreRequest, ScoreResult
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.role_client import Budget, RoleClient
from teams_rl.llm.scripted import ScriptedBackend

NEG_INF = float("-inf")


def _reply(req: GenerationRequest) -> str:
    # depends on everything that is part of the key, so a wrong cache hit would show as a wrong text
    return f"{req.messages[-1]['content']} seed={req.seed} t={req.sampling.temperature} out"


def _req(text: str, seed: int = 0, temperature: float = 0.7, max_new_tokens: int = 64) -> GenerationRequest:
    return GenerationRequest(
        ({"role": "user", "content": text},),
        SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens),
        seed=seed,
    )


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    yield led
    led.close()


def test_rerun_is_free_and_identical(ledger):
    backend = ScriptedBackend(_reply)
    reqs = [_req(f"instruction {i}", seed=i) for i in range(4)]
    first = RoleClient(backend, ledger, "rewriter").generate(reqs)
    assert backend.generate_calls == 4
    assert all(not r.cached for r in first)

    client = RoleClient(backend, ledger, "rewriter")
    second = client.generate(reqs)
    assert backend.generate_calls == 4  # nothing new reached the backend
    assert all(r.cached for r in second)
    assert client.stats.cached_calls == 4 and client.stats.new_calls == 0
    for a, b in zip(first, second, strict=True):
        assert (a.text, a.finish_reason, a.prompt_tokens, a.completion_tokens, a.error) == (
            b.text,
            b.finish_reason,
            b.prompt_tokens,
            b.completion_tokens,
            b.error,
        )
    assert [r.text for r in second] == [_reply(r) for r in reqs]


def test_identical_requests_in_one_batch_are_paid_once(ledger):
    backend = ScriptedBackend(_reply)
    client = RoleClient(backend, ledger, "rewriter")
    reqs = [_req("same"), _req("other"), _req("same"), _req("same")]
    out = client.generate(reqs)
    assert backend.generate_calls == 2
    assert [r.text for r in out] == [_reply(r) for r in reqs]
    assert client.stats.new_calls == 2
    assert ledger.totals()["rewriter"].calls == 2


@pytest.mark.parametrize("change", ["seed", "temperature", "max_new_tokens", "role", "model", "messages"])
def test_key_includes_each_field(tmp_path, change):
    led = Ledger(tmp_path / "l.sqlite")
    base = _req("hello world")
    RoleClient(ScriptedBackend(_reply), led, "rewriter").generate([base])

    req, role, model = base, "rewriter", "scripted"
    if change == "seed":
        req = _req("hello world", seed=1)
    elif change == "temperature":
        req = _req("hello world", temperature=0.0)
    elif change == "max_new_tokens":
        req = _req("hello world", max_new_tokens=65)
    elif change == "messages":
        req = _req("hello world!")
    elif change == "role":
        role = "expert"
    elif change == "model":
        model = "other-model"
    backend = ScriptedBackend(_reply, model_id=model)
    out = RoleClient(backend, led, role).generate([req])
    assert backend.generate_calls == 1
    assert not out[0].cached
    # and the unchanged request still hits
    control = ScriptedBackend(_reply)
    assert RoleClient(control, led, "rewriter").generate([base])[0].cached
    assert control.generate_calls == 0
    led.close()


def test_key_is_stable_and_distinguishes_kind():
    payload = {"messages": [{"role": "user", "content": "x"}], "seed": 3}
    assert Ledger.key("reviewer", "m", "score", payload) == Ledger.key("reviewer", "m", "score", dict(payload))
    assert Ledger.key("reviewer", "m", "score", payload) != Ledger.key("reviewer", "m", "generate", payload)


def test_score_results_with_neg_inf_round_trip(ledger):
    def scorer(req: ScoreRequest):
        return [-0.25, NEG_INF] if "a" in req.messages[-1]["content"] else [NEG_INF, -1.5]

    backend = ScriptedBackend(_reply, scorer=scorer)
    reqs = [ScoreRequest(({"role": "user", "content": t},), ("Yes", "No"), seed=i) for i, t in enumerate(["a", "b"])]
    first = RoleClient(backend, ledger, "reviewer").score(reqs)
    again = RoleClient(backend, ledger, "reviewer").score(reqs)
    assert backend.score_calls == 2
    assert all(r.cached for r in again)
    assert again[0].logprobs[0] == -0.25 and math.isinf(again[0].logprobs[1]) and again[0].logprobs[1] < 0
    assert math.isinf(again[1].logprobs[0]) and again[1].logprobs[1] == -1.5
    assert [r.probs for r in again] == [r.probs for r in first] == [[1.0, 0.0], [0.0, 1.0]]
    # choices are part of the key
    other = RoleClient(backend, ledger, "reviewer").score([ScoreRequest(reqs[0].messages, ("No", "Yes"), seed=0)])
    assert not other[0].cached and backend.score_calls == 3


class FlakyBackend:
    """Fails every request whose text contains 'bad'."""

    model_id = "flaky"

    def __init__(self):
        self.generate_calls = 0

    def generate(self, requests):
        out = []
        for r in requests:
            self.generate_calls += 1
            if "bad" in r.messages[-1]["content"]:
                out.append(GenerationResult(text="", finish_reason="error", error="HTTP 500"))
            else:
                out.append(GenerationResult(text="fine", prompt_tokens=3, completion_tokens=1))
        return out

    def score(self, requests):
        return [ScoreResult(logprobs=[], error="boom") for _ in requests]


def test_failed_results_are_not_cached_but_counted(ledger):
    backend = FlakyBackend()
    client = RoleClient(backend, ledger, "expert")
    out = client.generate([_req("good"), _req("bad one"), _req("bad two")])
    assert [r.ok for r in out] == [True, False, False]
    assert out[1].error == "HTTP 500"
    assert client.stats.errors == 2 and client.stats.new_calls == 1
    totals = ledger.totals()["expert"]
    assert totals.errors == 2 and totals.calls == 1

    again = RoleClient(backend, ledger, "expert").generate([_req("good"), _req("bad one")])
    assert backend.generate_calls == 4  # the failed one is retried, the good one is cached
    assert again[0].cached and not again[1].cached and not again[1].ok
    assert ledger.totals()["expert"].errors == 3

    RoleClient(backend, ledger, "reviewer").score([ScoreRequest(({"role": "user", "content": "x"},), ("Yes", "No"))])
    assert ledger.totals()["reviewer"].errors == 1
    assert ledger.totals()["reviewer"].calls == 0


def test_max_calls_budget_is_exact_and_resumable(ledger):
    backend = ScriptedBackend(_reply)
    reqs = [_req(f"row {i}", seed=i) for i in range(8)]
    with pytest.raises(BudgetExhausted) as info:
        RoleClient(backend, ledger, "rewriter", Budget(max_calls=5)).generate(reqs)
    assert info.value.role == "rewriter"
    assert backend.generate_calls == 5
    assert ledger.totals()["rewriter"].calls == 5  # the paid calls were stored before raising

    # same budget: nothing more may be spent, not even one call
    with pytest.raises(BudgetExhausted):
        RoleClient(backend, ledger, "rewriter", Budget(max_calls=5)).generate(reqs)
    assert backend.generate_calls == 5

    client = RoleClient(backend, ledger, "rewriter", Budget(max_calls=8))
    out = client.generate(reqs)
    assert backend.generate_calls == 8  # only the 3 missing were paid
    assert client.stats.new_calls == 3 and client.stats.cached_calls == 5
    assert [r.text for r in out] == [_reply(r) for r in reqs]
    assert sum(r.cached for r in out) == 5


def test_budget_is_per_role(ledger):
    backend = ScriptedBackend(_reply)
    RoleClient(backend, ledger, "rewriter").generate([_req(f"r{i}") for i in range(4)])
    out = RoleClient(backend, ledger, "expert", Budget(max_calls=2)).generate([_req("e0"), _req("e1")])
    assert len(out) == 2 and backend.generate_calls == 6


def test_max_tokens_budget_blocks_next_batch(ledger):
    backend = ScriptedBackend(lambda r: "one two three four five")  # 5 completion tokens
    client = RoleClient(backend, ledger, "rewriter", Budget(max_tokens=20))
    # 2 requests x (2 prompt + 5 completion) = 14 tokens < 20: allowed
    client.generate([_req("a b"), _req("c d")])
    # checked before the batch: 14 < 20, so this batch may overshoot
    client.generate([_req("e f"), _req("g h")])
    assert ledger.totals()["rewriter"].tokens == 28
    with pytest.raises(BudgetExhausted) as info:
        client.generate([_req("i j")])
    assert backend.generate_calls == 4
    assert "max_tokens=20" in info.value.detail
    # cached requests are still answered under a spent budget
    out = client.generate([_req("a b")])
    assert out[0].cached and backend.generate_calls == 4


def test_wal_journal_mode(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    RoleClient(ScriptedBackend(_reply), led, "rewriter").generate([_req("x")])
    assert led.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    raw = sqlite3.connect(tmp_path / "l.sqlite")
    assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"  # persistent on the file
    raw.close()
    led.close()


def test_two_ledgers_on_one_file_see_each_others_writes(tmp_path):
    path = tmp_path / "l.sqlite"
    a, b = Ledger(path), Ledger(path)
    backend_a, backend_b = ScriptedBackend(_reply), ScriptedBackend(_reply)
    RoleClient(backend_a, a, "rewriter").generate([_req("from a")])
    out = RoleClient(backend_b, b, "rewriter").generate([_req("from a"), _req("from b")])
    assert out[0].cached and not out[1].cached
    assert backend_b.generate_calls == 1
    again = RoleClient(backend_a, a, "rewriter").generate([_req("from b")])
    assert again[0].cached and backend_a.generate_calls == 1
    assert a.totals()["rewriter"].calls == b.totals()["rewriter"].calls == 2
    a.close()
    b.close()


def test_totals_per_role(ledger):
    gen = ScriptedBackend(lambda r: "w " * 3)  # 3 completion tokens
    RoleClient(gen, ledger, "rewriter").generate([_req("one two"), _req("three four five")])
    RoleClient(gen, ledger, "expert").generate([_req("six")])
    scorer = ScriptedBackend(_reply, scorer=lambda r: [-0.1, -2.0])
    RoleClient(scorer, ledger, "reviewer").score(
        [ScoreRequest(({"role": "user", "content": "q"},), ("Yes", "No"), seed=s) for s in range(3)]
    )
    totals = ledger.totals()
    assert set(totals) == {"rewriter", "expert", "reviewer"}
    rw = totals["rewriter"]
    assert (rw.calls, rw.prompt_tokens, rw.completion_tokens, rw.errors) == (2, 5, 6, 0)
    assert rw.tokens == 11
    ex = totals["expert"]
    assert (ex.calls, ex.prompt_tokens, ex.completion_tokens) == (1, 1, 3)
    rv = totals["reviewer"]
    assert (rv.calls, rv.completion_tokens) == (3, 0)
    # a cached re-run adds nothing
    RoleClient(gen, ledger, "rewriter").generate([_req("one two")])
    assert ledger.totals()["rewriter"].calls == 2
