"""Synthesis end to end on the real embedded SmolLM2-135M (no scripted LLMs): a handful of seeds, short outputs."""

import json

import datasets
import pytest

from teams_rl.env.dataset import load_rows
from teams_rl.llm.ledger import Ledger
from teams_rl.synthesize import run as synth_mod

SEEDS = [
    {"id": "r1", "instruction": "Give three tips for sleeping better."},
    {"id": "r2", "instruction": "Explain what a prime number is."},
    {
        "id": "r3",
        "instruction": "Summarise the text in one sentence.",
        "input": "The library will close early on Friday because the heating system is being repaired.",
    },
]


def _argv(seeds_file, out):
    return [
        "--dataset_name",
        str(seeds_file),
        "--output_dir",
        str(out),
        "--depth",
        "1",
        "--chunk_size",
        "3",
        "--rewrite_max_new_tokens",
        "64",
        "--seed",
        "3",  # the screens drop most of a 135M model's rewrites: this seed keeps one of the three
        "--expert_max_new_tokens",
        "40",
        "--drop_truncated_responses",  # answers are cut at 40 tokens for speed; the rows are what is checked
        "false",
        "--expert_model",
        "smollm2-135m",
        "--reviewer_model",
        "smollm2-135m",
        "--reviewer_modes",
        "judge_logprob:1,embedding:1",
        "--expert_dtype",
        "float32",
        "--reviewer_dtype",
        "float32",
    ]


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, smollm2_dir):
    tmp = tmp_path_factory.mktemp("real")
    seeds_file = tmp / "seeds.jsonl"
    seeds_file.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    summary = synth_mod.main(_argv(seeds_file, tmp / "run"))
    return seeds_file, tmp / "run", summary


def test_real_model_writes_rows_with_answers_and_lineage(real_run):
    _, run_dir, summary = real_run
    rows, rejected, _ = load_rows(run_dir / "dataset")
    assert summary["steps"] == len(SEEDS)
    assert len(rows) + len(rejected) == len(SEEDS)  # depth 1: each seed is either a row or a rejected rewrite
    assert len(datasets.load_from_disk(str(run_dir / "dataset"))) == len(rows)
    for row in rows:
        assert row["instruction"].strip() and row["response"].strip()
        assert row["instruction"] != row["seed_instruction"]
        assert row["expert_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert 0.0 <= row["score_judge_logprob"] <= 1.0 and 0.0 <= row["score_embedding"] <= 1.0
        assert len(row["actions"]) == 1
    for item in rejected:
        assert item["reason"]
    # every expert and reviewer call is in the ledger with real token counts: one rewrite per seed, one answer
    # per rewrite that survived review, one review per rewrite that passed the text rules
    ledger = Ledger(run_dir / "ledger.sqlite")
    totals = ledger.totals()
    ledger.close()
    answered = len(rows) + sum(1 for r in rejected if r["stage"] == "answer")
    assert totals["expert"].calls == len(SEEDS) + answered
    assert totals["expert"].completion_tokens > 0 and totals["expert"].prompt_tokens > 0
    assert 0 < totals["reviewer"].calls <= len(SEEDS)


def test_real_model_rerun_makes_no_new_calls(real_run):
    seeds_file, run_dir, first = real_run
    before = (run_dir / "dataset" / "rows.jsonl").read_text(encoding="utf-8")
    again = synth_mod.main(_argv(seeds_file, run_dir))
    assert sum(c["new"] for c in again["calls"]) == 0
    assert sum(c["cached"] for c in again["calls"]) > 0
    assert (run_dir / "dataset" / "rows.jsonl").read_text(encoding="utf-8") == before
