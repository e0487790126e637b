"""bench/crash_soak.py's accounting, without running a stage: call identity (server body = ledger row), what
counts as paid twice or in flight at a kill, rows lost/duplicated, training steps lost/repeated, the weight
comparison, and the kill-then-resume loop (on a tiny stand-in process)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from teams_rl.llm.base import GenerationRequest, GenerationResult, SamplingParams, ScoreRequest, ScoreResult
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.role_client import RoleClient

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def soak(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the server process imports the module by name too
    import crash_soak

    return crash_soak


class _Echo:
    model_id = "fake-expert"

    def generate(self, requests):
        return [GenerationResult(text="ok", finish_reason="stop") for _ in requests]

    def score(self, requests):
        return [ScoreResult(logprobs=[-0.1, -2.0]) for _ in requests]


def test_a_request_body_and_its_ledger_row_have_one_call_id(soak, tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    client = RoleClient(_Echo(), ledger, "expert")
    messages = ({"role": "user", "content": "Explain tides."},)
    client.generate([GenerationRequest(messages, SamplingParams(max_new_tokens=8), seed=7)])
    client.score([ScoreRequest(messages, ("Yes", "No"), seed=7)])
    ledger.close()
    # what OpenAIBackend sends for each (see its _body): the server sees the same call
    bodies = [
        {"model": "fake-expert", "messages": list(messages), "seed": 7, "temperature": 1.0, "max_tokens": 8},
        {"model": "fake-expert", "messages": list(messages), "seed": 7, "max_tokens": 1, "logprobs": True},
    ]
    recorded = soak.ledger_rows(tmp_path / "ledger.sqlite")
    assert sorted(cid for cid, _ in recorded) == sorted(soak.body_call_id(b) for b in bodies)
    assert len({cid for cid, _ in recorded}) == 2  # generate and score of the same messages are two calls
    assert soak.recorded_twice(recorded, {cid for cid, _ in recorded}) == 0
    assert soak.recorded_twice(recorded + recorded[:1], {recorded[0][0]}) == 2
    assert soak.ledger_rows(tmp_path / "absent.sqlite") == []


def test_repaid_calls_split_by_what_became_of_the_first_execution(soak):
    # attempt 1 runs 0..10 and is killed at 10; attempt 2 (the resume) runs 11..20 to the end
    attempts = [(0.0, 10.0, 10.0), (11.0, 20.0, None)]
    events = [
        ("once", 1.0, 2.0),  # paid once: fine
        ("flight", 9.0, 10.5),  # answered after the kill: lost with the process
        ("flight", 12.0, 12.5),
        ("answered", 8.0, 9.0),  # answered before the kill, never committed: paid twice
        ("answered", 12.0, 12.5),
        ("stored", 3.0, 4.0),  # committed at 5.0, then asked again: a resume bug
        ("stored", 13.0, 13.5),
        ("twice-in-run", 14.0, 14.5),  # one uninterrupted process asking twice
        ("twice-in-run", 15.0, 15.5),
    ]
    reference = Counter({"once": 1, "flight": 1, "answered": 1, "stored": 1, "twice-in-run": 1})
    recorded = {"once": 2.5, "flight": 13.0, "answered": 13.0, "stored": 5.0, "twice-in-run": 14.6}
    out = soak.classify_repaid(events, reference, attempts, recorded)
    assert (out.in_flight, out.unrecorded, out.recorded) == (1, 1, 2)
    assert out.paid_twice == 3
    assert out.unrecorded_margin_s == [1.0]  # its answer left the server 1 s before the kill
    # executions the uninterrupted run also made twice are not extra
    assert soak.classify_repaid(events, reference + Counter(events[i][0] for i in range(9)), attempts, {}) == (
        soak.PaidTwice()
    )


def test_rows_lost_duplicated_changed(soak):
    ref = [{"id": "a/1", "x": 1}, {"id": "a/2", "x": 2}, {"id": "b/1", "x": 3}]
    rows = [{"id": "a/1", "x": 1}, {"id": "a/1", "x": 1}, {"id": "b/1", "x": 4}, {"id": "c/1", "x": 5}]
    assert soak.compare_rows(ref, rows) == {"lost": 1, "duplicated": 1, "extra": 1, "changed": 1}
    assert soak.compare_rows(ref, list(reversed(ref))) == {"lost": 0, "duplicated": 0, "extra": 0, "changed": 0}


def test_training_steps_lost_or_repeated_in_the_log_history(soak, tmp_path):
    history = [{"step": s, "loss": 1.0} for s in (1, 2, 2, 4)] + [{"step": 4, "train_runtime": 1.0}]
    assert soak.step_check(history, 4) == {"lost": 1, "repeated": 1}
    assert soak.step_check([{"step": s, "loss": 0.5} for s in range(1, 5)], 4) == {"lost": 0, "repeated": 0}
    # the checkpoint a resume starts from: the newest one the trainer finished writing
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert soak.last_complete_checkpoint(tmp_path) == 4
    assert soak.last_complete_checkpoint(tmp_path / "none") == 0


def test_the_fake_llms_are_deterministic_and_pass_the_screens(soak):
    from teams_rl.env.actions import load_actions

    action = load_actions()[0]
    prompt = [
        {"role": "system", "content": action.system},
        {"role": "user", "content": action.template.format(instruction="Explain tides.", input="")},
    ]
    rewrite = soak.fake_reply(prompt)
    assert rewrite == soak.fake_reply(prompt) and rewrite.startswith("Explain tides. ")
    answer = soak.fake_reply([{"role": "user", "content": rewrite}])
    assert answer.startswith("Here is a careful answer") and answer == soak.fake_reply(
        [{"role": "user", "content": rewrite}]
    )
    yes = {round(soak.fake_top_logprobs([{"role": "user", "content": f"q{i}"}])[0][1], 3) for i in range(30)}
    assert len(yes) == 2  # some rewrites judged no gain, most a gain


def test_weights_compare_by_max_abs_difference(soak):
    import torch

    a = {"lora_A": torch.zeros(2, 3), "lora_B": torch.ones(3, 2)}
    assert soak.max_abs_diff(a, {k: v.clone() for k, v in a.items()}) == 0.0
    assert soak.max_abs_diff(a, {**a, "lora_B": a["lora_B"] + 2.5e-7}) <= soak.WEIGHT_ATOL
    assert soak.max_abs_diff(a, {**a, "lora_A": a["lora_A"] - 0.25}) == pytest.approx(0.25)
    # a missing adapter, another set of tensors or another shape is never "within tolerance"
    assert soak.max_abs_diff({}, a) is None
    assert soak.max_abs_diff(a, {"lora_A": a["lora_A"]}) is None
    assert soak.max_abs_diff(a, {**a, "lora_A": torch.zeros(3, 2)}) is None


def test_a_run_is_killed_at_its_step_then_resumed_to_the_end(soak, tmp_path):
    # a stand-in trainer: a tqdm-like "n/5 [" bar, 0.1 s a step, resuming from the steps it wrote down
    script = (
        "import pathlib, sys, time\n"
        "done = pathlib.Path(sys.argv[1])\n"
        "start = int(done.read_text()) if done.exists() else 0\n"
        "for n in range(start + 1, 6):\n"
        "    time.sleep(0.1)\n"
        "    done.write_text(str(n))\n"
        "    print(f'{n}/5 [', flush=True)\n"
    )
    done = tmp_path / "done"
    cmd = [sys.executable, "-c", script, str(done)]
    starts = []

    def plan(start):
        starts.append(start)
        return soak.Kill(lambda w: w.progress >= 2, 0.0, lambda w, t: f"step {w.progress}/5")

    def start_step():
        return int(done.read_text()) if done.exists() else 0

    attempts = soak.kill_and_resume(cmd, tmp_path / "log", {}, plan, 1, total=5, start_step=start_step)
    assert [a.rc for a in attempts] == [-9, 0] and attempts[1].killed_at is None
    assert attempts[0].killed_at is not None and attempts[0].moment.startswith("step ")
    assert starts == [0] and 2 <= attempts[1].start_step < 5 and done.read_text() == "5"
    # a kill that never arms: the run finishes first and ends the trial
    never = soak.Kill(lambda w: False, 0.0, str)
    attempts = soak.kill_and_resume(cmd, tmp_path / "log", {}, lambda start: never, 2, total=5)
    assert len(attempts) == 1 and attempts[0].rc == 0 and "finished before the kill" in attempts[0].moment


def test_commands_name_every_flag(soak):
    cmd = soak.synth_cmd(Path("out"), "http://127.0.0.1:1/v1", 3)
    flags = dict(zip(cmd[cmd.index("synthesize") + 1 :: 2], cmd[cmd.index("synthesize") + 2 :: 2], strict=True))
    assert flags["--max_seeds"] == "3" and flags["--output_dir"] == "out"
    for role, model in (("expert", "fake-expert"), ("reviewer", "fake-judge")):
        assert flags[f"--{role}_backend"] == "openai" and flags[f"--{role}_model"] == model
        assert flags[f"--{role}_base_url"] == "http://127.0.0.1:1/v1"
