"""Keys never land anywhere: masked in log lines, saved recipes, cards, hub.json, ledger rows and error lines.

The end-to-end tests put a fake key in OPENAI_API_KEY and in the ``*_base_url`` (``http://user:KEY@host/v1``), run
synthesis through the CLI against the local OpenAI-compatible server (which echoes the Authorization header in its
error bodies), push the dataset to the local fake Hub, then search every byte of the run folder, of what reached
the Hub and of everything printed."""

import base64
import json
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_hub_server import FakeHub
from fake_openai_server import FakeOpenAIServer

from teams_rl.core import secrets
from teams_rl.core.errors import TeamsRLError

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-FAKEKEY123456"
URL_PASSWORD = "pw-FAKEurlSECRET789"  # a base_url's own password, in the unit tests
HUB_TOKEN = "hf_FAKEhubToken0123456789abcd"
SEEDS = [{"id": f"s{i}", "instruction": f"Explain idea number {i} to a beginner."} for i in range(6)]


def _needles() -> dict[str, bytes]:
    """Every form a leak could take: the raw values, and HTTP Basic auth built from the URL's user:password."""
    basic = base64.b64encode(f"user:{KEY}".encode())
    return {
        "key": KEY.encode(),
        "url password": URL_PASSWORD.encode(),
        "hub token": HUB_TOKEN.encode(),
        "basic auth": basic,
        "basic auth (password)": base64.b64encode(f"user:{URL_PASSWORD}".encode()),
    }


def _assert_clean(where: str, data: bytes) -> None:
    for name, needle in _needles().items():
        assert needle not in data, f"{name} leaked into {where}"


# ---------------------------------------------------------------------------------------------- mask


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)


def test_mask_covers_urls_known_values_and_key_shapes(key_env, monkeypatch):
    monkeypatch.setenv("MY_LAB_KEY", "lab-secret-value-42")  # named like a key
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # not a key, and too short to be one
    text = (
        f"GET https://user:{URL_PASSWORD}@host:8000/v1 with {KEY}, Authorization: Bearer abc.def-123456789 "
        f"token {HUB_TOKEN}, lab-secret-value-42, sk-proj-AAAA1111bbbb2222cccc, api_key=zzzz9999yyyy, "
        '"password": "hunter2hunter2", parse false'
    )
    masked = secrets.mask(text)
    for leak in (URL_PASSWORD, KEY, "abc.def-123456789", HUB_TOKEN, "lab-secret-value-42", "sk-proj-AAAA", "zzzz9999"):
        assert leak not in masked
    assert "hunter2" not in masked and "https://***@host:8000/v1" in masked and "parse false" in masked
    assert secrets.mask(masked) == masked  # idempotent


def test_model_text_is_masked_by_value_only(key_env):
    answer = f"An example key looks like sk-abcdefgh12345678abcd; yours is {KEY}. Task-description-0123456789 stays."
    masked = secrets.mask_known(answer)
    assert KEY not in masked and "sk-abcdefgh12345678abcd" in masked and "Task-description-0123456789" in masked
    assert secrets.mask("task-description-0123456789abcdef") == "task-description-0123456789abcdef"  # no \bsk-
    assert (
        secrets.mask("max_new_tokens=256, pad_token: <|im_end|>, expert_api_key_env: OPENAI_API_KEY")
        == "max_new_tokens=256, pad_token: <|im_end|>, expert_api_key_env: OPENAI_API_KEY"
    )


def test_mask_data_walks_nested_data(key_env):
    data = {"a": [KEY, {"b": (f"x {KEY}", 3)}], "n": None, "f": 1.5}
    assert secrets.mask_data(data) == {"a": ["***", {"b": ("x ***", 3)}], "n": None, "f": 1.5}


def test_the_log_filter_masks_messages_args_and_tracebacks(key_env):
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "failed with %s at %s", (KEY, "h"), None)
    try:
        raise RuntimeError(f"boom {KEY}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert secrets.FILTER.filter(record)
    text = logging.Formatter().format(record)
    assert KEY not in text and "failed with *** at h" in text and "boom ***" in text


def test_saved_recipes_mask_url_credentials_and_key_values(key_env, monkeypatch):
    from teams_rl.core.recipes import role_arguments, to_yaml

    monkeypatch.setenv("LAB_SERVER_CREDENTIAL", "c-0123456789abcdef")  # named only by the recipe
    Expert = role_arguments("expert")
    args = Expert(
        expert_base_url=f"https://user:{URL_PASSWORD}@host/v1",
        expert_api_key_env="LAB_SERVER_CREDENTIAL",
        expert_model=f"model-{KEY}",
    )
    saved = to_yaml(args)
    assert URL_PASSWORD not in saved and KEY not in saved
    assert yaml.safe_load(saved)["expert_base_url"] == "https://***@host/v1"
    assert "c-0123456789abcdef" not in secrets.mask("the server said c-0123456789abcdef")  # registered by name


def test_the_ledger_stores_masked_errors_and_answers_and_returns_the_same_on_a_rerun(key_env, tmp_path):
    from teams_rl.llm.base import GenerationRequest, GenerationResult, SamplingParams
    from teams_rl.llm.ledger import Ledger
    from teams_rl.llm.role_client import RoleClient

    class Echo:
        model_id = "echo"
        api_key_env = "OPENAI_API_KEY"

        def generate(self, requests):
            return [
                GenerationResult(text=f"the key is {KEY}")
                if r.seed == 0
                else GenerationResult(text="", finish_reason="error", error=f"http 400: bad key Bearer {KEY}")
                for r in requests
            ]

    reqs = [GenerationRequest(({"role": "user", "content": "hi"},), SamplingParams(), seed=s) for s in (0, 1)]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    first = RoleClient(Echo(), ledger, "expert").generate(reqs)
    second = RoleClient(Echo(), ledger, "expert").generate(reqs[:1])
    ledger.close()
    assert first[0].text == second[0].text == "the key is ***" and second[0].cached
    assert KEY not in first[1].error
    _assert_clean("the ledger", (tmp_path / "ledger.sqlite").read_bytes())


def test_dataset_rows_and_summary_are_masked(key_env, tmp_path):
    from teams_rl.env.dataset import write_dataset

    rows = [{"id": "a/1", "response": f"use {KEY}", "note": "sk-abcdefgh12345678abcd stays"}]
    write_dataset(tmp_path / "dataset", rows, [{"id": "a/2", "text": KEY}], {"stopped": f"Bearer {KEY}"})
    for path in (tmp_path / "dataset").iterdir():
        _assert_clean(path.name, path.read_bytes())
    assert b"sk-abcdefgh12345678abcd stays" in (tmp_path / "dataset" / "rows.jsonl").read_bytes()


def test_cards_mask_what_they_render(key_env, tmp_path):
    from teams_rl.sft.card import command_line, model_facts, write_card

    facts = model_facts(
        base_model="m",
        base_revision="r",
        kind="adapter",
        sources=[{"path": f"https://user:{URL_PASSWORD}@host/data", "kind": "local", "rows": 4}],
        recipe=None,
        recipe_sha256=None,
        settings={"output_dir": str(tmp_path), "method": "LoRA"},
        results={},
        command=command_line(["--config", "c.yaml", f"--report_to={KEY}"]),
    )
    write_card(tmp_path, facts)
    for path in tmp_path.iterdir():
        _assert_clean(path.name, path.read_bytes())


# ---------------------------------------------------------------------------------------------- end to end


def _reply(messages) -> str:
    if messages[0]["role"] == "system":  # an action prompt: answer with a rewrite
        return "Describe topic number 7 in three detailed steps with one concrete example."
    return "Here is a careful answer that walks through the question step by step and ends with a summary."


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "OPENAI_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        OPENAI_API_KEY=KEY,
        HF_TOKEN=HUB_TOKEN,
        TEAMS_RL_LOG_LEVEL="DEBUG",
        **extra,
    )
    return env


def _cli(*args, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "teams_rl.cli", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _synth_args(seeds: Path, run: Path, port: int) -> list:
    """The expert's URL carries the key as its password (the HTTP client sends it as Basic auth); the reviewer's
    has none, so the key from OPENAI_API_KEY goes as a Bearer token."""
    with_key, plain = f"http://user:{KEY}@127.0.0.1:{port}/v1", f"http://127.0.0.1:{port}/v1"
    return [
        "synthesize",
        *("--dataset_name", seeds, "--output_dir", run, "--depth", 1, "--chunk_size", 3),
        *("--expert_backend", "openai", "--expert_model", "fake-model", "--expert_base_url", with_key),
        *("--reviewer_backend", "openai", "--reviewer_model", "fake-model", "--reviewer_base_url", plain),
        *("--expert_timeout_s", 10, "--reviewer_timeout_s", 10, "--reviewer_modes", "judge_logprob:1"),
        *("--screen_min_similarity", 0, "--screen_breadth_min_similarity", 0, "--screen_min_relevance", 0),
        *("--screen_min_novelty", 0),
        *("--screen_language", "none"),
    ]


def test_a_key_in_the_url_the_environment_and_echoed_errors_lands_nowhere(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    run = tmp_path / "run"
    state = {"fatal": False}

    def fail(body):
        if state["fatal"]:
            return 401
        text = json.dumps(body.get("messages"))  # seed 3's rewrite fails; so does seed 4's review, asked for logprobs
        return 400 if "idea number 3" in text or ("idea number 4" in text and body.get("logprobs")) else None

    def echo(status, auth):  # what careless servers do: the key back in the error, raw and as sent
        return f"Incorrect API key provided: {auth.removeprefix('Bearer ')} (header {auth!r})"

    outputs = []
    hub = FakeHub()
    hub.start()
    try:
        with FakeOpenAIServer(reply=_reply, fail=fail, error_body=echo) as server:
            done = _cli(*_synth_args(seeds, run, server.port), env=_env())
            outputs.append(done)
            assert done.returncode == 0, done.stderr
            sent = set(server.auth_headers)  # the key really went out, both ways, and was echoed back
            assert f"Bearer {KEY}" in sent and f"Basic {_needles()['basic auth'].decode()}" in sent
            with sqlite3.connect(run / "ledger.sqlite") as db:
                assert db.execute("SELECT COUNT(*) FROM errors").fetchone()[0] > 0  # the echoes were recorded

            state["fatal"] = True  # the failed calls are retried, and the server now rejects the key
            refused = _cli(*_synth_args(seeds, run, server.port), env=_env())
            outputs.append(refused)
            assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
            assert refused.stderr.strip().splitlines()[-1].startswith("error:")

        pushed = _cli(
            "push",
            *("dataset", run, "--repo-id", "me/secret-test", "--no-metrics"),
            env=_env(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_XET="1"),
        )
        outputs.append(pushed)
        assert pushed.returncode == 0, pushed.stderr
        uploaded = hub.files("dataset", "me/secret-test")
    finally:
        hub.stop()

    assert (run / "hub.json").is_file() and "README.md" in uploaded
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"ledger.sqlite", "synthesize.yaml", "rows.jsonl", "rejected.jsonl", "hub.json"} <= {p.name for p in files}
    for path in files:
        _assert_clean(str(path.relative_to(run)), path.read_bytes())
    for name, data in uploaded.items():
        _assert_clean(f"the Hub's {name}", data)
    for i, result in enumerate(outputs):
        _assert_clean(f"the output of command {i}", (result.stdout + result.stderr).encode())
    assert "***" in (run / "config" / "synthesize.yaml").read_text()  # the URL was there, masked


def leaky_backend():
    """A ``backend: python`` factory whose exception message carries the key (see the test below)."""
    key = os.environ["OPENAI_API_KEY"]
    if os.environ.get("LEAK_AS") == "user-error":
        raise TeamsRLError(f"login failed with key {key}", field="expert_model")
    raise RuntimeError(f"login failed with key {key} at https://user:{URL_PASSWORD}@host/v1")


@pytest.mark.parametrize("leak_as", ["user-error", "crash"])
def test_a_key_in_an_exception_message_is_masked_in_the_error_line_and_the_traceback(tmp_path, leak_as):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS[:1]), encoding="utf-8")
    args = [
        *("synthesize", "--dataset_name", seeds, "--output_dir", tmp_path / "run"),
        *("--expert_backend", "python", "--expert_model", "test_secrets:leaky_backend"),
        *("--reviewer_backend", "python", "--reviewer_model", "scripted:make_backend"),
        *("--reviewer_modes", "judge_logprob:1", "--screen_min_similarity", 0, "--screen_min_relevance", 0),
        *("--screen_breadth_min_similarity", 0, "--screen_min_novelty", 0),
    ]
    done = _cli(*args, env=_env(LEAK_AS=leak_as))
    assert done.returncode == (2 if leak_as == "user-error" else 1), done.stderr
    assert "login failed with key ***" in done.stderr
    assert ("Traceback" in done.stderr) == (leak_as == "crash")
    _assert_clean("the output", (done.stdout + done.stderr).encode())
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            _assert_clean(str(path), path.read_bytes())
