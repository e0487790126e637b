"""OpenAIBackend against a real HTTP server on 127.0.0.1 (tests/fake_openai_server.py): retries, timeouts,
finish reasons, logprob scoring, the concurrency limit, user errors and API-key hygiene."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time

import pytest
from fake_openai_server import FakeOpenAIServer

from teams_rl.core.errors import TeamsRLError
from teams_rl.llm.base import GenerationRequest, SamplingParams, ScoreRequest
from teams_rl.llm.openai_backend import OpenAIBackend
from teams_rl.llm.openai_responses import _choice_logprobs

KEY_ENV = "TEAMS_RL_TEST_OPENAI_KEY"
KEY = "sk-test-Zq8Wv3SECRETkey0123456789"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """Retries sleep milliseconds, not seconds; a fake key is in the environment."""
    monkeypatch.setattr(OpenAIBackend, "backoff_base_s", 0.001)
    monkeypatch.setattr(OpenAIBackend, "backoff_cap_s", 0.05)
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def all_logs(caplog):
    """Capture every record, down to DEBUG, from us, the openai client and its HTTP stack."""
    for name in (None, "teams_rl", "openai", "httpx", "httpcore", "httpx2", "httpcore2"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def backend(server: FakeOpenAIServer, **kwargs) -> OpenAIBackend:
    kwargs = {"api_key_env": KEY_ENV, "timeout_s": 5.0, "role": "expert", **kwargs}
    return OpenAIBackend("fake-model", base_url=server.base_url, **kwargs)


def ask(text: str, max_new_tokens: int = 64, seed: int = 0) -> GenerationRequest:
    return GenerationRequest(({"role": "user", "content": text},), SamplingParams(max_new_tokens=max_new_tokens), seed)


def judge(text: str, choices=("Yes", "No")) -> ScoreRequest:
    return ScoreRequest(({"role": "user", "content": text},), tuple(choices))


def last_user(messages) -> str:
    return messages[-1]["content"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------- generate


def test_generate_returns_texts_usage_and_sends_sampling():
    with FakeOpenAIServer(reply=lambda m: f"echo {last_user(m)}") as server:
        results = backend(server, concurrency=4).generate([ask(f"q{i} please", seed=i) for i in range(6)])
    assert [r.text for r in results] == [f"echo q{i} please" for i in range(6)]
    assert all(r.ok and r.finish_reason == "stop" for r in results)
    assert [(r.prompt_tokens, r.completion_tokens) for r in results] == [(2, 3)] * 6
    assert all(r.latency_s > 0 for r in results)
    sent = sorted(server.bodies, key=lambda b: b["seed"])
    assert [b["seed"] for b in sent] == list(range(6))
    assert sent[0]["model"] == "fake-model" and sent[0]["max_tokens"] == 64
    assert sent[0]["temperature"] == 0.7 and sent[0]["top_p"] == 0.95
    assert server.auth_headers[0] == f"Bearer {KEY}"  # the key is used, so the leak tests below mean something


def test_empty_batch_sends_nothing():
    with FakeOpenAIServer() as server:
        assert backend(server).generate([]) == [] and backend(server).score([]) == []
    assert server.requests == 0


def test_finish_reasons_length_and_content_filter_are_recorded():
    six_words = lambda m: "one two three four five six"  # noqa: E731
    with FakeOpenAIServer(reply=six_words, content_filter=lambda m: last_user(m) == "bad") as server:
        cut, filtered, full = backend(server).generate([ask("hi", max_new_tokens=3), ask("bad"), ask("hi")])
    assert (cut.text, cut.finish_reason, cut.completion_tokens, cut.ok) == ("one two three", "length", 3, True)
    assert (filtered.text, filtered.finish_reason, filtered.ok) == ("", "content_filter", True)
    assert (full.finish_reason, full.completion_tokens) == ("stop", 6)


def test_runs_inside_a_running_event_loop():
    async def from_a_notebook(b):
        return b.generate([ask("hi")])

    with FakeOpenAIServer(reply=lambda m: "fine") as server:
        (result,) = asyncio.run(from_a_notebook(backend(server)))
    assert result.text == "fine"


# ---------------------------------------------------------------------------------------------- retries


def test_429_with_retry_after_waits_as_told_then_succeeds(monkeypatch):
    monkeypatch.setattr(OpenAIBackend, "backoff_cap_s", 5.0)
    with FakeOpenAIServer(failures=[429], retry_after="0.4") as server:
        start = time.perf_counter()
        (result,) = backend(server).generate([ask("hi")])
        elapsed = time.perf_counter() - start
    assert result.ok and result.text == "ok"
    assert server.requests == 2
    assert elapsed >= 0.4  # the server's Retry-After, not our 1 ms backoff


def test_429_without_retry_after_backs_off_exponentially_then_succeeds(monkeypatch):
    monkeypatch.setattr(OpenAIBackend, "backoff_base_s", 0.04)
    monkeypatch.setattr(OpenAIBackend, "backoff_cap_s", 1.0)
    with FakeOpenAIServer(failures=[429, 429, 429], retry_after=None) as server:
        start = time.perf_counter()
        (result,) = backend(server).generate([ask("hi")])
        elapsed = time.perf_counter() - start
    assert result.ok and server.requests == 4
    assert elapsed >= (0.04 + 0.08 + 0.16) * 0.5  # three sleeps of base * 2**n, jitter at least one half


def test_5xx_answers_are_retried_then_succeed():
    with FakeOpenAIServer(failures=[500, 502, 503], reply=lambda m: "recovered") as server:
        (result,) = backend(server).generate([ask("hi")])
    assert (result.ok, result.text, server.requests) == (True, "recovered", 4)


def test_exhausted_retries_become_an_error_result_and_the_batch_survives():
    fail = lambda body: 500 if last_user(body["messages"]) == "doomed" else None  # noqa: E731
    with FakeOpenAIServer(fail=fail, reply=lambda m: "fine") as server:
        results = backend(server, max_retries=2).generate([ask("a"), ask("doomed"), ask("b")])
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].finish_reason == "error" and results[1].text == ""
    assert "http 500" in results[1].error and "injected failure 500" in results[1].error
    assert server.requests == 2 + 3  # two good ones, and the doomed one tried 1 + max_retries times


def test_client_errors_other_than_auth_are_not_retried():
    with FakeOpenAIServer(failures=[400]) as server:
        (result,) = backend(server).generate([ask("hi")])
    assert not result.ok and result.error.startswith("http 400")
    assert server.requests == 1


def test_timeout_is_an_error_result_while_the_rest_of_the_batch_succeeds():
    with FakeOpenAIServer(hang=lambda m: last_user(m) == "slow", reply=lambda m: "quick") as server:
        start = time.perf_counter()
        results = backend(server, timeout_s=1.0, max_retries=1, concurrency=4).generate(
            [ask("a"), ask("slow"), ask("b"), ask("c")]
        )
        elapsed = time.perf_counter() - start
        deadline = (
            time.monotonic() + 2.0
        )  # on a loaded machine the server may count the retry after the client gave up
        while server.requests < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert [r.ok for r in results] == [True, False, True, True]
    assert [r.text for r in results] == ["quick", "", "quick", "quick"]
    assert "timeout" in results[1].error and results[1].finish_reason == "error"
    assert server.requests == 3 + 2  # the slow one was retried once
    assert 2.0 <= elapsed < 6.0  # two 1 s attempts, not the server's 10 s hang


# ---------------------------------------------------------------------------------------------- score


def test_score_uses_top_logprobs_and_ranks_choices():
    def top(messages):
        if last_user(messages) == "good":
            return [("Yes", -0.2), (" yes", -2.0), ("No", -1.8), ("Maybe", -4.0)]
        return [("No", -0.1), ("Yes", -2.5)]

    with FakeOpenAIServer(top_logprobs=top) as server:
        good, bad, reordered, unknown = backend(server).score(
            [judge("good"), judge("bad"), judge("bad", ("No", "Yes")), judge("good", ("Yes", "Absolutely"))]
        )
    assert good.logprobs == pytest.approx([math.log(math.exp(-0.2) + math.exp(-2.0)), -1.8])
    assert good.probs[0] > good.probs[1] and bad.probs[1] > bad.probs[0]
    assert reordered.logprobs == pytest.approx([-0.1, -2.5])
    assert unknown.logprobs[1] == float("-inf") and unknown.probs == pytest.approx([1.0, 0.0])
    assert all(r.ok and r.prompt_tokens == 1 for r in (good, bad, reordered, unknown))
    body = server.bodies[0]
    assert (body["logprobs"], body["top_logprobs"], body["max_tokens"], body["temperature"]) == (True, 20, 1, 0.0)


def test_choice_matching_counts_each_token_once_and_prefers_exact_tokens():
    # The sampled token repeats in top_logprobs; "1" is the choice "1", not also a prefix of "10".
    candidates = [("1", -0.5), ("1", -0.5), ("10", -1.0), ("\u2581", -3.0), ("Ġ2", -2.0)]
    assert _choice_logprobs(candidates, ("1", "10", "2", "3")) == [-0.5, -1.0, -2.0, float("-inf")]
    assert _choice_logprobs([("Y", -1.0), ("N", -2.0)], ("Yes", "No")) == [-1.0, -2.0]


def test_score_without_logprobs_matches_the_answer_text(all_logs):
    replies = {"agree": "Yes, clearly", "refuse": "**No**", "dodge": "Perhaps"}
    with FakeOpenAIServer(logprobs=False, reply=lambda m: replies[last_user(m)]) as server:
        yes, no, dodge = backend(server).score([judge("agree"), judge("refuse"), judge("dodge")])
    assert (yes.ok, yes.logprobs) == (True, [0.0, float("-inf")])
    assert (no.ok, no.logprobs) == (True, [float("-inf"), 0.0])
    assert not dodge.ok and "Perhaps" in dodge.error
    assert "no logprobs" in all_logs.text


def test_score_falls_back_to_text_when_the_server_refuses_logprobs():
    fail = lambda body: 400 if body.get("logprobs") else None  # noqa: E731
    error_body = lambda status, auth: "logprobs are not supported with this model"  # noqa: E731
    with FakeOpenAIServer(fail=fail, error_body=error_body, reply=lambda m: "No") as server:
        (result,) = backend(server).score([judge("anything")])
    assert (result.ok, result.logprobs) == (True, [float("-inf"), 0.0])
    assert server.requests == 2 and "logprobs" not in server.bodies[1]


# ---------------------------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("concurrency", [1, 4])
def test_concurrency_limit_is_respected(concurrency):
    with FakeOpenAIServer(latency_s=0.03) as server:
        results = backend(server, concurrency=concurrency).generate([ask(f"q{i}") for i in range(24)])
    assert all(r.ok for r in results)
    assert server.max_in_flight == concurrency  # never more, and the slots are really used


# ---------------------------------------------------------------------------------------------- user errors


def test_connection_refused_raises_a_one_line_error_naming_the_field():
    where = f"127.0.0.1:{free_port()}/v1"
    start = time.perf_counter()
    with pytest.raises(TeamsRLError) as info:
        OpenAIBackend("m", base_url=f"http://{where}", api_key_env=KEY_ENV, role="expert").generate(
            [ask("a"), ask("b")]
        )
    assert time.perf_counter() - start < 5  # no retries on a refused connection
    assert info.value.field == "expert_base_url"
    assert f"http://{where}" in str(info.value) and "\n" not in str(info.value)
    assert KEY not in str(info.value)


def test_credentials_in_the_url_are_not_shown():
    with pytest.raises(TeamsRLError) as info:
        OpenAIBackend("m", base_url=f"http://user:hunter2@127.0.0.1:{free_port()}/v1").generate([ask("a")])
    assert "hunter2" not in str(info.value) and "http://***@127.0.0.1:" in str(info.value)
    assert "hunter2" not in repr(OpenAIBackend("m", base_url="http://user:hunter2@host/v1"))


def test_rejected_key_raises_and_the_key_never_leaks(all_logs):
    echo = lambda status, auth: f"Incorrect API key provided: {auth.removeprefix('Bearer ')}"  # noqa: E731
    with FakeOpenAIServer(failures=[401], error_body=echo) as server:
        b = backend(server, concurrency=1)
        with pytest.raises(TeamsRLError) as info:
            b.generate([ask("a"), ask("b"), ask("c")])
    assert server.auth_headers[0] == f"Bearer {KEY}"
    assert info.value.field == "expert_api_key_env" and server.base_url in str(info.value)
    assert server.requests == 1  # the batch stopped at the first fatal answer
    assert KEY not in str(info.value) and KEY not in repr(b) and KEY not in repr(vars(b))
    assert KEY not in all_logs.text


def test_key_echoed_in_a_per_request_error_is_scrubbed(all_logs):
    echo = lambda status, auth: f"bad request from {auth}"  # noqa: E731
    with FakeOpenAIServer(failures=[400], error_body=echo) as server:
        (result,) = backend(server).generate([ask("a")])
    assert not result.ok and "***" in result.error
    assert KEY not in result.error and KEY not in all_logs.text
    assert "request failed" in all_logs.text  # the failure was logged, scrubbed


def test_404_names_the_model_or_the_url_field():
    unknown_model = lambda status, auth: "The model `fake-model` does not exist."  # noqa: E731
    with FakeOpenAIServer(failures=[404], error_body=unknown_model) as server:
        with pytest.raises(TeamsRLError) as model_error:
            backend(server).generate([ask("a")])
        root = OpenAIBackend(
            "fake-model", base_url=f"http://127.0.0.1:{server.port}", api_key_env=KEY_ENV, role="expert"
        )
        with pytest.raises(TeamsRLError) as route_error:  # the base URL lacks /v1: the server has no such route
            root.generate([ask("a")])
    assert model_error.value.field == "expert_model"
    assert route_error.value.field == "expert_base_url"


# ---------------------------------------------------------------------------------------------- broken answers


def test_a_body_that_is_not_json_is_retried_then_recorded_never_raised():
    with FakeOpenAIServer(failures=["invalid_json", "not_json"], reply=lambda m: "recovered") as server:
        (result,) = backend(server).generate([ask("hi")])
    assert (result.ok, result.text, server.requests) == (True, "recovered", 3)
    with FakeOpenAIServer(fail=lambda body: "invalid_json") as server:
        b = backend(server, max_retries=1)
        (generated,) = b.generate([ask("hi")])
        (scored,) = b.score([judge("hi")])
    assert not generated.ok and generated.error.startswith("bad response: invalid JSON (JSONDecodeError")
    assert not scored.ok and "invalid JSON" in scored.error
    assert server.requests == 2 + 2  # bounded: 1 + max_retries each
    with FakeOpenAIServer(fail=lambda body: "not_json") as server:
        (page,) = backend(server, max_retries=0).generate([ask("hi")])
    assert not page.ok and page.error.startswith("bad response: not JSON (<html>") and server.requests == 1


def test_a_connection_dropped_mid_body_or_before_answering_is_retried():
    with FakeOpenAIServer(failures=["drop", "disconnect"], reply=lambda m: "recovered") as server:
        (result,) = backend(server).generate([ask("hi")])
    assert (result.ok, result.text, server.requests) == (True, "recovered", 3)
    with FakeOpenAIServer(fail=lambda body: "drop") as server:
        (result,) = backend(server, max_retries=1).generate([ask("hi")])
    assert not result.ok and server.requests == 2
    assert result.error.startswith("connection error: RemoteProtocolError: ")  # with what the transport said
    assert "\n" not in result.error


def test_answers_with_nothing_in_them_are_errors_not_empty_successes():
    with FakeOpenAIServer(failures=["empty_choices", "no_content", "refusal"]) as server:
        b = backend(server, concurrency=1)
        results = [b.generate([ask(f"q{i}")])[0] for i in range(3)]
    assert [r.ok for r in results] == [False, False, False]
    assert [r.text for r in results] == ["", "", ""] and all(r.finish_reason == "error" for r in results)
    no_choices, no_content, refused = (r.error for r in results)
    assert no_choices == "bad response: no choices"
    assert no_content == "bad response: no content (finish_reason None)"
    assert refused == "refused: I can't help with that."
    assert server.requests == 3  # not retried: the same request would get the same answer


def test_a_slow_trickle_succeeds_within_the_timeout_and_times_out_past_it():
    with FakeOpenAIServer(trickle_s=0.3, reply=lambda m: "slowly") as server:
        start = time.perf_counter()
        (result,) = backend(server, timeout_s=2.0).generate([ask("hi")])
    assert result.ok and result.text == "slowly" and time.perf_counter() - start >= 0.3
    # Pieces 0.1 s apart never trip a per-read timeout of 0.5 s; the whole answer would take 2 s.
    with FakeOpenAIServer(trickle_s=2.0, trickle_chunks=20) as server:
        start = time.perf_counter()
        (result,) = backend(server, timeout_s=0.5, max_retries=0).generate([ask("hi")])
        elapsed = time.perf_counter() - start
    assert not result.ok and result.error == "timeout after 0.5s"
    assert elapsed < 1.5


def test_a_key_echoed_across_the_error_length_cut_leaves_no_part_of_it(all_logs):
    # The key starts 8 characters before the 200-character cut: masking after cutting would leave those behind.
    echo = lambda status, auth: "x" * (192 - len("Bearer ")) + auth  # noqa: E731
    with FakeOpenAIServer(failures=[500], error_body=echo) as server:
        (result,) = backend(server, max_retries=0).generate([ask("a")])
    assert not result.ok and result.error.endswith("Bearer ***")
    assert KEY[:8] not in result.error and KEY[:8] not in all_logs.text


def test_each_answer_is_in_the_ledger_as_soon_as_it_arrives(tmp_path):
    """A kill -9 mid-batch must cost only the calls still in flight: the quick answer is committed while the slow
    one is still being waited for (before, the whole batch was committed at its end)."""
    import sqlite3
    import threading

    from teams_rl.llm.ledger import Ledger
    from teams_rl.llm.role_client import RoleClient

    with FakeOpenAIServer(hang=lambda m: last_user(m) == "slow", hang_s=30.0, reply=lambda m: "quick") as server:
        ledger = Ledger(tmp_path / "ledger.sqlite")
        client = RoleClient(backend(server, timeout_s=30.0, max_retries=0), ledger, "expert")
        worker = threading.Thread(target=client.generate, args=([ask("fast"), ask("slow")],), daemon=True)
        worker.start()
        deadline, committed = time.monotonic() + 20, 0
        while time.monotonic() < deadline and committed == 0:
            time.sleep(0.05)
            with sqlite3.connect(tmp_path / "ledger.sqlite", timeout=5) as db:
                committed = db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        assert committed == 1 and worker.is_alive()  # the slow request is still in flight
    worker.join(timeout=30)
    ledger.close()
