"""bench/faults.py, the fault table: its verdicts catch crashes, hangs and silently empty rows, and a few of its
cases run end to end against the fake server in its own process."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from teams_rl.llm.base import GenerationResult, ScoreResult

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture
def faults(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the server process imports the module by name too
    import faults

    return faults


def test_cases_run_end_to_end_and_write_the_json(faults, tmp_path, capsys):
    out = tmp_path / "faults.json"
    cases = ["invalid JSON", "no content", "500 forever, key echoed", "nothing listening"]
    code = faults.main([arg for name in cases for arg in ("--case", name)] + ["--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and (report["passed"], report["failed"]) == (4, 0)
    rows = {row["case"]: row for row in report["cases"]}
    assert rows["invalid JSON"]["outcome"] == "retried, then ok" and rows["invalid JSON"]["attempts"] == 2
    assert rows["no content"]["outcome"] == "recorded"
    assert "Bearer ***" in rows["500 forever, key echoed"]["detail"]
    assert rows["nothing listening"]["outcome"] == "TeamsRLError"
    printed = capsys.readouterr().out
    assert "4/4 cases pass" in printed and faults.KEY[:8] not in printed + out.read_text()


def test_a_case_past_the_watchdog_is_a_hang_and_fails(faults, monkeypatch):
    monkeypatch.setattr(faults, "WATCHDOG_S", 0.5)
    stuck = dataclasses.replace(faults.BY_NAME["timeout"], timeout_s=5.0, max_retries=0)
    (row,) = faults.run((stuck,))
    assert (row.outcome, row.verdict) == ("HANG", "FAIL") and "a hang" in row.problems


def test_a_crash_fails_the_case(faults, monkeypatch):
    def boom(case, client):
        raise KeyError("choices")

    monkeypatch.setattr(faults, "_drive", boom)
    row = faults.run_case(faults.BY_NAME["nothing listening"], None)  # no server needed
    assert (row.outcome, row.verdict) == ("CRASH", "FAIL") and row.detail == "KeyError: 'choices'"


def test_silently_empty_rows_are_caught(faults):
    generate, review = faults.BY_NAME["500"], faults.BY_NAME["no logprobs, answer Yes"]
    assert faults._classify(generate, GenerationResult(""), 1)[0] == "SILENT EMPTY"
    assert faults._classify(generate, GenerationResult("", "length"), 1)[0] == "recorded"
    assert faults._classify(review, ScoreResult([float("-inf")] * 2), 1)[0] == "SILENT EMPTY"
    assert faults._classify(generate, GenerationResult("hi"), 2)[0] == "retried, then ok"
