"""Synthesis end to end with scripted LLMs: dataset and lineage, resume, budgets, crash safety, shards."""

import json

import datasets
import pytest

from teams_rl.env.dataset import load_rows
from teams_rl.llm.factory import BackendPool
from teams_rl.synthesize import run as synth_mod
from tests.scripted import make_backend

SEEDS = [
    {
        "id": f"t{i:02d}",
        "instruction": f"Explain idea number {i} to a beginner.",
        "input": "x = 1" if i % 4 == 0 else "",
    }
    for i in range(10)
]


@pytest.fixture
def seeds_file(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    return path


def run(seeds_file, out, *extra):
    argv = [
        "--dataset_name",
        str(seeds_file),
        "--output_dir",
        str(out),
        "--depth",
        "2",
        "--chunk_size",
        "3",
        "--reviewer_modes",
        "judge_logprob:1",
        *extra,
    ]
    return synth_mod.main(argv)


def test_writes_dataset_with_lineage(seeds_file, tmp_path, backend):
    summary = run(seeds_file, tmp_path / "run")
    folder = tmp_path / "run" / "dataset"
    table = datasets.load_from_disk(str(folder))
    rows, rejected, saved = load_rows(folder)
    assert len(table) == len(rows) == summary["rows"] > 0
    assert saved["rows"] == summary["rows"]
    # every step is either a row or a rejected rewrite: nothing silently lost
    assert summary["steps"] == len(SEEDS) * 2
    assert (
        len(rows)
        + sum(1 for r in rejected if r["stage"] == "rewrite")
        + sum(1 for r in rejected if r["stage"] == "answer")
        == summary["steps"]
    )
    assert summary["eliminated"].get("no_gain", 0) > 0
    row = rows[0]
    for key in (
        "instruction",
        "input",
        "response",
        "seed_id",
        "seed_instruction",
        "actions",
        "parent_instruction",
        "reward",
        "score_judge_logprob",
        "policy",
        "expert_model",
        "run_seed",
        "depth",
        "step",
    ):
        assert key in row, key
    assert row["policy"] == "random" and row["expert_model"] == "scripted"
    assert row["seed_instruction"] == next(s["instruction"] for s in SEEDS if s["id"] == row["seed_id"])
    assert len(row["actions"]) == row["depth"] >= 1
    assert len({r["id"] for r in rows}) == len(rows)
    assert (tmp_path / "run" / "config" / "synthesize.yaml").exists()


def test_a_cut_answer_is_eliminated_by_default_and_kept_only_when_asked(seeds_file, tmp_path, backend):
    # the scripted answer has about 30 words; at 10 tokens every answer is cut (finish_reason "length")
    summary = run(seeds_file, tmp_path / "drop", "--expert_max_new_tokens", "10")
    rows, rejected, _ = load_rows(tmp_path / "drop" / "dataset")
    answers = [r for r in rejected if r["stage"] == "answer"]
    assert rows == [] and summary["rows"] == 0 and answers
    assert {r["reason"] for r in answers} == {"answer_truncated"}
    assert summary["eliminated"]["answer_truncated"] == len(answers)
    kept = run(seeds_file, tmp_path / "keep", "--expert_max_new_tokens", "10", "--drop_truncated_responses", "false")
    rows = load_rows(tmp_path / "keep" / "dataset")[0]
    assert len(rows) == kept["rows"] == len(answers)
    assert {r["response_finish_reason"] for r in rows} == {"length"}


def test_rerun_spends_zero_new_calls_and_gives_identical_rows(seeds_file, tmp_path, backend):
    first = run(seeds_file, tmp_path / "run")
    rows_before = load_rows(tmp_path / "run" / "dataset")[0]
    calls = (backend.generate_calls, backend.score_calls)
    second = run(seeds_file, tmp_path / "run")
    assert (backend.generate_calls, backend.score_calls) == calls
    assert all(entry["new"] == 0 for entry in second["calls"])
    assert sum(entry["cached"] for entry in second["calls"]) == sum(entry["new"] for entry in first["calls"])
    assert load_rows(tmp_path / "run" / "dataset")[0] == rows_before


def test_budget_stops_cleanly_and_keeps_finished_rows(seeds_file, tmp_path, backend):
    # one chunk of 3 seeds x 2 steps costs at most 6 rewrites + 6 answers = 12 expert calls
    summary = run(seeds_file, tmp_path / "run", "--expert_max_calls", "14")
    assert summary["stopped"] and "expert" in summary["stopped"]
    assert 0 < summary["seeds_done"] < len(SEEDS)
    rows = load_rows(tmp_path / "run" / "dataset")[0]
    assert len(rows) == summary["rows"] > 0
    assert {r["seed_id"] for r in rows} <= {s["id"] for s in SEEDS[: summary["seeds_done"]]}
    assert backend.generate_calls == 14  # the cap is exact


def test_crash_mid_run_then_rerun_loses_and_duplicates_nothing(seeds_file, tmp_path, backend, monkeypatch):
    run(seeds_file, tmp_path / "reference")
    reference_rows = load_rows(tmp_path / "reference" / "dataset")[0]
    total_calls = backend.generate_calls

    crashing = make_backend()
    original = crashing.generate

    def generate(requests):
        if crashing.generate_calls >= 15:
            raise RuntimeError("simulated kill")
        return original(requests)

    crashing.generate = generate
    monkeypatch.setattr(BackendPool, "get", lambda self, settings, role: crashing)
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(seeds_file, tmp_path / "run")
    assert not (tmp_path / "run" / "dataset").exists()  # nothing half-written
    paid_before_crash = crashing.generate_calls

    fresh = make_backend()
    monkeypatch.setattr(BackendPool, "get", lambda self, settings, role: fresh)
    run(seeds_file, tmp_path / "run")
    assert load_rows(tmp_path / "run" / "dataset")[0] == reference_rows
    assert fresh.generate_calls == total_calls - paid_before_crash  # only what was missing


def test_shards_merge_into_the_unsharded_dataset(seeds_file, tmp_path, backend):
    from teams_rl.env.dataset import merge_datasets

    run(seeds_file, tmp_path / "whole")
    whole = load_rows(tmp_path / "whole" / "dataset")[0]
    parts = []
    for i in range(3):
        summary = run(seeds_file, tmp_path / "sharded", "--shard", f"{i}/3")
        parts.append(summary["dataset"])
    shard_ids = [{r["id"] for r in load_rows(p)[0]} for p in parts]
    assert not (shard_ids[0] & shard_ids[1] or shard_ids[0] & shard_ids[2] or shard_ids[1] & shard_ids[2])
    merged = merge_datasets(parts + parts[:1], tmp_path / "sharded" / "dataset")  # a shard given twice
    assert merged["duplicates_dropped"] == len(shard_ids[0])
    rows = load_rows(tmp_path / "sharded" / "dataset")[0]
    assert sorted(rows, key=lambda r: r["id"]) == sorted(whole, key=lambda r: r["id"])


def test_a_dataset_with_no_rows_still_loads(tmp_path):
    import datasets

    from teams_rl.env.dataset import load_rows, write_dataset

    write_dataset(tmp_path / "dataset", [], [{"id": "s/1", "reason": "answered"}], {"rows": 0})
    assert len(datasets.load_from_disk(str(tmp_path / "dataset"))) == 0
    rows, rejected, summary = load_rows(tmp_path / "dataset")
    assert rows == [] and rejected[0]["reason"] == "answered" and summary == {"rows": 0}
