"""The openai_batch backend against the Batch API of tests/fake_openai_batch.py: one job per call with the direct
route's bodies and answers, per-line and per-job failures, the ledger's record of each job, the Batch discount, and
a synthesis run killed while it waits, then re-run: it polls the same job and pays for no second one."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_openai_batch import FakeOpenAIBatchServer

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.dataset import load_rows
from teams_rl.llm.base import GenerationRequest, SamplingParams, ScoreRequest
from teams_rl.llm.factory import BackendPool
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.openai_backend import OpenAIBackend
from teams_rl.llm.openai_batch import OpenAIBatchBackend
from teams_rl.llm.prices import Price
from teams_rl.llm.role_client import RoleClient

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "TEAMS_RL_TEST_OPENAI_KEY"
KEY = "sk-test-Bt7Yx2SECRETkey9876543210"


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(OpenAIBackend, "backoff_base_s", 0.001)
    monkeypatch.setattr(OpenAIBackend, "backoff_cap_s", 0.05)
    monkeypatch.setenv(KEY_ENV, KEY)


def batch(server: FakeOpenAIBatchServer, **kwargs) -> OpenAIBatchBackend:
    kwargs = {"api_key_env": KEY_ENV, "timeout_s": 5.0, "poll_s": 0.01, "role": "expert", **kwargs}
    return OpenAIBatchBackend("fake-model", base_url=server.base_url, **kwargs)


def direct(server: FakeOpenAIBatchServer) -> OpenAIBackend:
    return OpenAIBackend("fake-model", base_url=server.base_url, api_key_env=KEY_ENV, timeout_s=5.0, role="expert")


def ask(text: str, max_new_tokens: int = 64, seed: int = 0) -> GenerationRequest:
    sampling = SamplingParams(temperature=0.3, top_p=0.9, max_new_tokens=max_new_tokens)
    return GenerationRequest(({"role": "user", "content": text},), sampling, seed)


def judge(text: str, choices=("Yes", "No")) -> ScoreRequest:
    return ScoreRequest(({"role": "user", "content": text},), tuple(choices))


def last_user(messages) -> str:
    return messages[-1]["content"]


def uploaded(server: FakeOpenAIBatchServer, batch_id: str) -> list[dict]:
    data = server.files[server.batches[batch_id]["input_file_id"]]
    return [json.loads(line) for line in data.decode().splitlines()]


def wait_for(condition, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------------- one job per call


def test_generate_sends_one_job_with_the_direct_routes_bodies_and_gets_its_answers():
    requests = [ask(f"question {i} please", max_new_tokens=3 if i == 2 else 64, seed=i) for i in range(5)]
    with FakeOpenAIBatchServer(reply=lambda m: f"echo {last_user(m)}") as server:
        expected = direct(server).generate(requests)
        got = batch(server).generate(requests)
        assert batch(server).generate([]) == []
    assert [(r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in got] == [
        (r.text, r.finish_reason, r.prompt_tokens, r.completion_tokens) for r in expected
    ]
    assert got[2].finish_reason == "length" and all(r.ok and r.latency_s > 0 for r in got)
    assert (server.batches_created, server.files_uploaded) == (1, 1)  # the whole call was one job
    (job,) = server.batches.values()
    assert (job["endpoint"], job["completion_window"], job["status"]) == ("/v1/chat/completions", "24h", "completed")
    lines = uploaded(server, job["id"])
    assert all(line["method"] == "POST" and line["url"] == "/v1/chat/completions" for line in lines)
    assert len({line["custom_id"] for line in lines}) == 5
    # each line's body is what the direct route sent for the same request: model, messages, seed and sampling
    assert [line["body"] for line in lines] == sorted(server.bodies, key=lambda b: b["seed"])
    assert lines[0]["body"]["temperature"] == 0.3 and lines[0]["body"]["top_p"] == 0.9
    assert [line["body"]["seed"] for line in lines] == list(range(5)) and lines[2]["body"]["max_tokens"] == 3


def test_the_job_is_polled_until_it_ends_and_transient_http_errors_are_retried():
    seen: Counter[tuple[str, str]] = Counter()

    def flaky(method, path):  # the upload, the create, the polls and the download each fail twice first
        seen[method, path] += 1
        return None if seen[method, path] > 2 else 429 if method == "POST" else 503

    with FakeOpenAIBatchServer(batch_polls=3, api_fail=flaky) as server:
        (result,) = batch(server).generate([ask("hi")])
    assert result.ok and result.text == "ok"
    assert sorted(seen) == [
        ("GET", "/v1/batches/batch_fake_1"),
        ("GET", "/v1/files/file-output-batch_fake_1/content"),
        ("POST", "/v1/batches"),
        ("POST", "/v1/files"),
    ]
    assert server.batches_created == 1 and server.files_uploaded == 1  # retries never made a second job
    assert server.batch_polls_seen == 4 and set(server.polled_ids) == {"batch_fake_1"}


def test_the_factory_builds_the_batch_backend_from_the_recipe_keys():
    settings = {"backend": "openai_batch", "model": "gpt-x", "base_url": "http://h/v1", "batch_poll_s": 5.0}
    backend = BackendPool().get(settings, "expert")
    assert isinstance(backend, OpenAIBatchBackend) and backend.poll_s == 5.0 and backend.batch_route
    with pytest.raises(TeamsRLError) as info:
        BackendPool().get({**settings, "batch_poll_s": 0}, "expert")
    assert info.value.field == "expert_batch_poll_s"


# ---------------------------------------------------------------------------------------------- failures


def test_a_failed_or_lost_line_is_that_requests_error_and_the_others_succeed(caplog):
    fail = lambda body: 500 if last_user(body["messages"]) == "doomed" else None  # noqa: E731
    echo = lambda status, auth: f"boom for {auth}"  # noqa: E731 - a server that echoes the key
    lose = lambda line: last_user(line["body"]["messages"]) == "lost"  # noqa: E731
    caplog.set_level(logging.DEBUG)
    with FakeOpenAIBatchServer(fail=fail, error_body=echo, lose=lose, reply=lambda m: "fine") as server:
        results = batch(server).generate([ask("a"), ask("doomed"), ask("lost"), ask("b")])
    assert [r.ok for r in results] == [True, False, False, True]
    assert results[1].error == "http 500: boom for Bearer ***" and results[1].finish_reason == "error"
    assert results[2].error == "no answer in Batch job batch_fake_1 (completed)"
    assert server.batch_lines == 3  # the lost line aside; nothing is retried inside a job: a re-run retries errors
    assert KEY not in caplog.text and "submitted Batch job batch_fake_1" in caplog.text


def test_a_failed_job_errs_every_request_and_the_same_calls_then_get_a_new_job(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with FakeOpenAIBatchServer(
        batch_fates=["failed"], batch_error="model not found", reply=lambda m: "fine"
    ) as server:
        client = RoleClient(batch(server), ledger, "expert")
        first = client.generate([ask("a"), ask("b")])
        assert [r.error for r in first] == ["Batch job batch_fake_1 failed: invalid_request: model not found"] * 2
        assert [(j["batch_id"], j["status"]) for j in ledger.batch_jobs()] == [("batch_fake_1", "failed")]
        second = client.generate([ask("a"), ask("b")])
    assert [r.text for r in second] == ["fine", "fine"] and server.batches_created == 2
    assert [(j["batch_id"], j["status"]) for j in ledger.batch_jobs()] == [("batch_fake_2", "completed")]
    ledger.close()


def test_an_expired_job_gives_its_finished_lines_and_errors_for_the_rest():
    with FakeOpenAIBatchServer(batch_fates=["expired"], expired_answers=2, reply=lambda m: last_user(m)) as server:
        results = batch(server).generate([ask(f"q{i}") for i in range(4)])
    assert [r.text for r in results] == ["q0", "q1", "", ""]
    assert [r.ok for r in results] == [True, True, False, False]
    assert results[3].error.startswith("batch_expired: ")


def test_a_rejected_key_or_a_server_without_the_batch_api_is_a_user_error(caplog):
    caplog.set_level(logging.DEBUG)
    echo = lambda status, auth: f"Incorrect API key provided: {auth}"  # noqa: E731
    no_key = FakeOpenAIBatchServer(api_fail=lambda method, path: 401, error_body=echo)
    with no_key as server, pytest.raises(TeamsRLError) as rejected:
        batch(server).generate([ask("a")])
    no_batch_api = FakeOpenAIBatchServer(api_fail=lambda method, path: 404 if path == "/v1/files" else None)
    with no_batch_api as server, pytest.raises(TeamsRLError) as missing:
        batch(server).generate([ask("a")])
    assert rejected.value.field == "expert_api_key_env" and KEY not in str(rejected.value)
    assert missing.value.field == "expert_base_url" and "Batch API" in str(missing.value)
    assert server.batches_created == 0 and KEY not in caplog.text


# ---------------------------------------------------------------------------------------------- the ledger


def test_the_job_is_in_the_ledger_before_it_ends_then_answers_from_the_ledger_at_the_batch_price(tmp_path):
    price = Price(input=2.0, output=8.0, batch_discount=0.5)
    ledger = Ledger(tmp_path / "ledger.sqlite")
    requests = [ask(f"question {i}", seed=i) for i in range(3)]
    with FakeOpenAIBatchServer(hold_batches=True, reply=lambda m: "a b c d") as server:
        client = RoleClient(batch(server), ledger, "expert", price=price)
        out: list = []
        worker = threading.Thread(target=lambda: out.extend(client.generate(requests)), daemon=True)
        worker.start()
        reader = Ledger(tmp_path / "ledger.sqlite")  # another connection: what a re-run would see now
        wait_for(lambda: reader.batch_jobs() and server.batch_polls_seen >= 2, "the job to be recorded and polled")
        (job,) = reader.batch_jobs()
        assert (job["batch_id"], job["status"], job["requests"]) == ("batch_fake_1", "submitted", 3)
        assert worker.is_alive() and server.batches["batch_fake_1"]["status"] == "in_progress"
        server.release_batches()
        worker.join(timeout=20)
        assert [r.text for r in out] == ["a b c d"] * 3
        assert reader.batch_jobs()[0]["status"] == "completed"
        again = client.generate(requests)
        reader.close()
    assert all(r.cached for r in again) and server.batches_created == 1
    undiscounted = sum(price.cost(r.prompt_tokens, r.completion_tokens) for r in out)
    assert ledger.totals()["expert"].usd == pytest.approx(undiscounted * 0.5)
    assert [(s["batch"], s["calls"]) for s in ledger.spend_by_model()] == [(True, 3)]
    ledger.close()


def test_a_wait_that_fails_keeps_the_job_and_the_next_call_polls_it(tmp_path):
    down = {"polls": True}
    api_fail = lambda method, path: 503 if down["polls"] and path.startswith("/v1/batches/") else None  # noqa: E731
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with FakeOpenAIBatchServer(api_fail=api_fail, reply=lambda m: "late") as server:
        client = RoleClient(batch(server, max_retries=1), ledger, "expert")
        with pytest.raises(TeamsRLError) as info:
            client.generate([ask("a"), ask("b")])
        assert "batch_fake_1 is recorded in the ledger" in str(info.value)
        down["polls"] = False
        results = client.generate([ask("a"), ask("b")])
    assert [r.text for r in results] == ["late", "late"]
    assert server.batches_created == 1 and server.polled_ids[-1] == "batch_fake_1"
    assert [(j["batch_id"], j["status"]) for j in ledger.batch_jobs()] == [("batch_fake_1", "completed")]
    ledger.close()


def test_a_job_whose_lines_all_failed_is_not_read_again_the_calls_get_a_new_job(tmp_path):
    """The set of calls recurs because none was answered: re-reading the finished job would fail them forever."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with FakeOpenAIBatchServer(failures=[500, 500], reply=lambda m: "fine") as server:
        client = RoleClient(batch(server), ledger, "expert")
        assert [r.ok for r in client.generate([ask("a"), ask("b")])] == [False, False]
        assert [r.text for r in client.generate([ask("a"), ask("b")])] == ["fine", "fine"]
    assert server.batches_created == 2
    ledger.close()


def test_a_recorded_job_that_expired_while_no_one_waited_is_submitted_again(tmp_path):
    down = {"polls": True}
    api_fail = lambda method, path: 503 if down["polls"] and path.startswith("/v1/batches/") else None  # noqa: E731
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with FakeOpenAIBatchServer(api_fail=api_fail, batch_fates=["expired"], expired_answers=0) as server:
        client = RoleClient(batch(server, max_retries=0), ledger, "expert")
        with pytest.raises(TeamsRLError):
            client.generate([ask("a"), ask("b")])
        down["polls"] = False
        results = client.generate([ask("a"), ask("b")])
    assert [r.ok for r in results] == [True, True] and server.batches_created == 2
    assert server.batches["batch_fake_1"]["status"] == "expired"
    ledger.close()


# ---------------------------------------------------------------------------------------------- score


def test_score_through_a_job_gives_the_direct_routes_logprobs():
    def top(messages):
        return [("Yes", -0.2), (" yes", -2.0), ("No", -1.8)] if last_user(messages) == "good" else [("No", -0.1)]

    requests = [judge("good"), judge("bad"), judge("good", ("No", "Yes"))]
    with FakeOpenAIBatchServer(top_logprobs=top) as server:
        expected = direct(server).score(requests)
        got = batch(server).score(requests)
    assert [r.logprobs for r in got] == [r.logprobs for r in expected]
    assert got[0].logprobs == pytest.approx([math.log(math.exp(-0.2) + math.exp(-2.0)), -1.8])
    assert all(r.ok for r in got) and server.batches_created == 1
    body = server.batch_bodies[0]
    assert (body["logprobs"], body["top_logprobs"], body["max_tokens"], body["temperature"]) == (True, 20, 1, 0.0)


def test_score_lines_that_refuse_logprobs_are_asked_again_without_them_in_a_second_job(tmp_path):
    fail = lambda body: 400 if body.get("logprobs") and last_user(body["messages"]) != "fine" else None  # noqa: E731
    error_body = lambda status, auth: "logprobs are not supported with this model"  # noqa: E731
    ledger = Ledger(tmp_path / "ledger.sqlite")
    with FakeOpenAIBatchServer(fail=fail, error_body=error_body, reply=lambda m: "No") as server:
        client = RoleClient(batch(server), ledger, "reviewer")
        fine, refused = client.score([judge("fine"), judge("reasoning model")])
    assert fine.ok and fine.logprobs[0] > fine.logprobs[1]  # scored by its logprobs
    assert (refused.ok, refused.logprobs) == (True, [float("-inf"), 0.0])  # by its one-token answer
    assert server.batches_created == 2 and "logprobs" not in server.batch_bodies[-1]
    assert len(uploaded(server, "batch_fake_2")) == 1  # only the refused line was asked again
    assert [(j["requests"], j["status"]) for j in ledger.batch_jobs()] == [(2, "completed"), (1, "completed")]
    ledger.close()


# ---------------------------------------------------------------------------------------------- crash while waiting


def _reply(messages) -> str:
    if messages[0]["role"] == "system":  # an action prompt: answer with a rewrite
        return f"Describe topic number {len(last_user(messages)) % 97} in three detailed steps with an example."
    return "Here is a careful answer that walks through the question step by step and ends with a summary."


def _synthesize(seeds: Path, run: Path, port: int) -> subprocess.Popen:
    args = [
        *("synthesize", "--dataset_name", seeds, "--output_dir", run, "--depth", 1, "--chunk_size", 4),
        *("--expert_backend", "openai_batch", "--expert_model", "fake-model"),
        *("--expert_base_url", f"http://127.0.0.1:{port}/v1", "--expert_batch_poll_s", 0.05),
        *("--reviewer_backend", "python", "--reviewer_model", "scripted:make_backend"),
        *("--reviewer_modes", "judge_logprob:1", "--screen_language", "none", "--screen_min_similarity", 0),
        *("--screen_breadth_min_similarity", 0, "--screen_min_relevance", 0, "--reviewer_gain_threshold", 0),
        *("--screen_min_novelty", 0),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), OPENAI_API_KEY=KEY)
    command = [sys.executable, "-m", "teams_rl.cli", *map(str, args)]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert KEY not in err


def _recorded_jobs(run: Path) -> list[tuple[str, str]]:
    try:
        with sqlite3.connect(f"file:{run / 'ledger.sqlite'}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT batch_id, status FROM batch_jobs ORDER BY created").fetchall()
    except sqlite3.OperationalError:  # no ledger, or no table, yet
        return []


def test_a_run_killed_while_waiting_polls_the_same_job_when_re_run(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        "".join(json.dumps({"id": f"b{i}", "instruction": f"Explain idea {i}."}) + "\n" for i in range(4))
    )
    with FakeOpenAIBatchServer(reply=_reply) as server:
        _finished(_synthesize(seeds, tmp_path / "reference", server.port))
        reference_jobs = server.batches_created
    reference_rows = load_rows(tmp_path / "reference" / "dataset")[0]
    assert reference_rows and reference_jobs == 2  # depth 1: the rewrites' job, then the answers' job

    run = tmp_path / "run"
    with FakeOpenAIBatchServer(reply=_reply, hold_batches=True) as server:
        victim = _synthesize(seeds, run, server.port)
        wait_for(lambda: _recorded_jobs(run) and server.batch_polls_seen >= 1, "a recorded, polled job", 60.0)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=30)
        assert victim.returncode == -signal.SIGKILL
        ((recorded, status),) = _recorded_jobs(run)
        assert status == "submitted" and server.batches[recorded]["status"] == "in_progress"
        polls_before = server.polled_ids.count(recorded)

        server.release_batches()
        _finished(_synthesize(seeds, run, server.port))
        assert server.polled_ids.count(recorded) > polls_before  # the re-run waited on the recorded job
        assert server.batches_created == reference_jobs  # and paid for no second one
        jobs = _recorded_jobs(run)
    assert jobs[0] == (recorded, "completed") and [s for _, s in jobs] == ["completed"] * reference_jobs
    assert load_rows(run / "dataset")[0] == reference_rows
