"""``teams-rl push`` against a local fake Hub: what arrives, the cards, branches, refusals, where the token goes."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fake_hub_server import FakeHub

from teams_rl.env.dataset import load_rows, write_dataset

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_FAKEtoken1234567890"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))  # binary: goes through LFS like a real plot
EXPERT = "HuggingFaceTB/SmolLM2-135M-Instruct"
LINEAGE = {
    "policy": "grpo:policy",
    "run_seed": 42,
    "reviewer_modes": "judge_logprob:1,embedding:1",
    "expert_model": EXPERT,
    "expert_backend": "transformers",
    "reviewer_model": EXPERT,
    "expert_sampling": {"rewrite": {"temperature": 0.7}, "answer": {"temperature": 0.7}},
}


@pytest.fixture
def hub():
    server = FakeHub()
    server.start()
    yield server
    server.stop()


def _push(hub: FakeHub, home: Path, *args: str, token: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: a fresh process that reads HF_ENDPOINT and the token from its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=hub.endpoint,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HOME=str(home),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    if token:
        env["HF_TOKEN"] = TOKEN
    return subprocess.run(
        [sys.executable, "-m", "teams_rl.cli", "push", *map(str, args)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _synthesis_run(run: Path, *, policy: str = "random") -> list[dict]:
    """A run folder as synthesize leaves it: dataset/, ledger.sqlite, config/synthesize.yaml."""
    from teams_rl.llm.ledger import Ledger

    lineage = {**LINEAGE, "policy": "grpo:policy" if policy != "random" else "random"}
    rows = [
        {
            "id": f"s00{i}/1",
            "seed_id": f"s00{i}",
            "instruction": f"Explain topic {i} with two constraints.",
            "input": "",
            "response": f"Answer number {i} about the topic.",
            "depth": 1,
            "step": 1,
            "actions": ["add_constraints"],
            "parent_instruction": f"Explain topic {i}.",
            "reward": 0.4,
            "gain": True,
            "score_judge_logprob": 0.6,
            "score_embedding": 0.2,
            "review_parse_failures": 0,
            "rewrite_finish_reason": "stop",
            "response_finish_reason": "stop",
            **lineage,
            "seed_instruction": f"Explain topic {i}.",
            "seed_input": "",
        }
        for i in range(4)
    ]
    rejected = [
        {
            "id": "s004/1",
            "seed_id": "s004",
            "step": 1,
            "stage": "rewrite",
            "reason": "no_gain",
            "action": "deepen",
            "parent_instruction": "Explain topic 4.",
            "text": "Explain topic 4.",
            "scores": None,
        }
    ]
    summary = {
        "dataset": str(run / "dataset"),
        "recipe": None,
        "seeds_total": 5,
        "seeds_done": 5,
        "steps": 5,
        "rows": 4,
        "eliminated": {"no_gain": 1},
        "stopped": None,
        "calls": [],
        "wall_s": 1.5,
        "lineage": lineage,
    }
    write_dataset(run / "dataset", rows, rejected, summary)
    ledger = Ledger(run / "ledger.sqlite")
    calls = [("expert", 100, 10), ("expert", 200, 20), ("expert", 300, 30), ("reviewer", 50, 0), ("reviewer", 70, 0)]
    ledger.put_many(
        [
            (f"k{i}", role, "smollm2-135m", "generate", {}, {}, pt, ct, 0.1, "stop")
            for i, (role, pt, ct) in enumerate(calls)
        ]
    )
    ledger.close()
    (run / "config").mkdir()
    recipe = {
        "dataset_name": "builtin",
        "output_dir": str(run),
        "policy": policy,
        "depth": 2,
        "expert_model": "smollm2-135m",
        "expert_backend": "transformers",
        "reviewer_model": "smollm2-135m",
        "reviewer_backend": "transformers",
        "reviewer_modes": "judge_logprob:1,embedding:1",
        "reviewer_embedding_model": "minilm",
    }
    (run / "config" / "synthesize.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return rows


@pytest.fixture
def pipeline_run(tmp_path, tiny_model_dir) -> Path:
    """runs/<name>/ after the whole pipeline: trained policy, dataset, eval, SFT adapter with its card."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from teams_rl.evaluate import dataset_metrics as eval_dataset
    from teams_rl.evaluate import lmeval as lmeval
    from teams_rl.sft.card import model_facts, write_card

    run = tmp_path / "runs" / "demo"
    rows = _synthesis_run(run, policy=str(run / "policy"))
    (run / "policy").mkdir()
    (run / "policy" / "policy.json").write_text(
        json.dumps(
            {
                "kind": "instructor",
                "actions": ["add_constraints", "deepen"],
                "algorithm": "grpo",
                "base_model": "smollm2-135m",
                "steps": 40,
                "episodes": 320,
                "probe_before": {"add_constraints": 0.6, "deepen": 0.4},
                "probe_after": {"add_constraints": 0.25, "deepen": 0.75},
                "stopped": None,
            }
        ),
        encoding="utf-8",
    )
    (run / "config" / "train-policy.yaml").write_text(
        yaml.safe_dump(
            {
                "algorithm": "grpo",
                "model_name_or_path": "smollm2-135m",
                "rewriter_model": "instructor",
                "rewriter_backend": "transformers",
                "learning_rate": 0.0002,
                "depth": 2,
            }
        ),
        encoding="utf-8",
    )
    (run / "plots").mkdir()
    for name in ("reward.png", "action_mix.png"):
        (run / "plots" / name).write_bytes(PNG)

    # eval/: dataset metrics (no embeddings: the real shape, cheap) and a base-vs-tuned results.json
    metrics = {
        "dataset": str(run / "dataset"),
        "embedding_model": None,
        **eval_dataset.dataset_metrics(*load_rows(run / "dataset"), run_dir=run),
    }
    (run / "eval" / "plots").mkdir(parents=True)
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    for name in ("lengths.png", "benchmarks.png"):
        (run / "eval" / "plots" / name).write_bytes(PNG)
    base = {"arc_easy": {"metrics": {"acc": (0.25, 0.02)}, "num_fewshot": 0, "samples": 50}}
    tuned = {"arc_easy": {"metrics": {"acc": (0.31, 0.02)}, "num_fewshot": 0, "samples": 50}}
    auc = {"auc": 0.537, "ci95": [0.41, 0.66], "members": 40, "non_members": 40}
    results = {
        "config": {"output_dir": str(run)},
        "lm_eval_version": "0.4.9",
        "teams_rl_version": "0.1.0",
        "device": "cpu",
        "models": {
            "base": {"ref": "smollm2-135m", "upstream": EXPERT, "chat_template": True},
            "tuned": {"ref": str(run / "sft" / "adapter"), "kind": "peft adapter", "chat_template": True},
        },
        "tasks": {"arc_easy": {"version": 1.0, "source": "local"}},
        "table": lmeval.comparison_rows(base, tuned),
        "privacy": {
            "source": "SFT recipe",
            "members": 40,
            "non_members": 40,
            "note": "AUC near 0.5 = chance",
            "models": {"base": {"neg_loss": auc}, "tuned": {"neg_loss": auc}},
        },
    }
    (run / "eval" / "results.json").write_text(json.dumps(results), encoding="utf-8")

    # sft/: a real (tiny) peft adapter, its card as teams-rl sft writes it, the resolved recipe and the loss plot
    sft = run / "sft"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    adapter = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    adapter.save_pretrained(sft / "adapter")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(sft / "adapter")
    facts = model_facts(
        base_model=EXPERT,
        base_revision="revision main",
        kind="adapter",
        recipe="config.yaml",
        recipe_sha256=None,
        command="teams-rl sft --config config.yaml",
        sources=[{"path": str(run / "dataset"), "kind": "local", "rows": len(rows)}],
        settings={"output_dir": str(sft), "method": "LoRA", "lora_r": 2},
        results={"train_loss": 2.5},
    )
    write_card(sft / "adapter", facts)
    (sft / "config").mkdir()
    (sft / "config" / "sft.yaml").write_text(
        yaml.safe_dump({"dataset_name": str(run / "dataset"), "hub_token": None}), encoding="utf-8"
    )
    (sft / "plots").mkdir()
    (sft / "plots" / "loss.png").write_bytes(PNG)
    return run


def _card(files: dict[str, bytes]) -> tuple[dict, str]:
    _, header, body = files["README.md"].decode().split("---\n", 2)
    return yaml.safe_load(header), body


def _assert_token_kept_safe(hub: FakeHub, run: Path, *outputs: str) -> None:
    """The token travels in the Authorization header and nowhere else: not in the run folder (hub.json included),
    not in anything that reached the Hub, not in what the CLI printed."""
    needle = TOKEN.encode()
    for path in run.rglob("*"):
        assert not path.is_file() or needle not in path.read_bytes(), path
    for repo in hub.repos.values():
        for snapshot in repo.commits.values():
            assert not any(needle in data for data, _ in snapshot.values())
    assert all(TOKEN not in out for out in outputs)
    assert any(
        r.headers.get("Authorization", r.headers.get("authorization")) == f"Bearer {TOKEN}" for r in hub.requests
    )  # it was used, where it belongs
    for request in hub.requests:
        assert needle not in request.body and TOKEN not in request.path, request.path
        for key, value in request.headers.items():
            assert TOKEN not in value or (key.lower() == "authorization" and value == f"Bearer {TOKEN}"), key


def test_push_dataset_then_model(hub, pipeline_run, tmp_path):
    home = tmp_path / "hf-home"
    done = _push(hub, home, "dataset", pipeline_run, "--repo-id", "me/demo-data")
    assert done.returncode == 0, done.stderr
    assert f"{hub.endpoint}/datasets/me/demo-data" in done.stdout

    repo = hub.repos[("dataset", "me/demo-data")]
    assert repo.private  # private unless --public
    files = hub.files("dataset", "me/demo-data")
    assert {
        "README.md",
        "data/train-00000-of-00001.parquet",
        "recipes/synthesize.yaml",
        "recipes/train-policy.yaml",
        "rejected.jsonl",
        "summary.json",
        "plots/reward.png",
        "plots/action_mix.png",
        "plots/lengths.png",
    } <= set(files)
    assert "plots/benchmarks.png" not in files  # a model plot: it goes with the model card
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(files["data/train-00000-of-00001.parquet"]))
    rows = [json.loads(line) for line in (pipeline_run / "dataset" / "rows.jsonl").read_text().splitlines()]
    assert table.num_rows == 4 and set(rows[0]) == set(table.column_names)  # every lineage column, nothing dropped
    assert files["recipes/synthesize.yaml"] == (pipeline_run / "config" / "synthesize.yaml").read_bytes()

    meta, body = _card(files)
    assert meta["license"] == "apache-2.0" and meta["task_categories"] == ["text-generation"]
    assert {"teams-rl", "synthetic", "instruction-tuning"} <= set(meta["tags"]) and meta["size_categories"] == ["n<1K"]
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 4 and meta["configs"]  # push_to_hub's header kept
    assert f"| expert | `{EXPERT}` | transformers |" in body and f"| reviewer | `{EXPERT}` | transformers |" in body
    assert "| instructor | `HuggingFaceTB/SmolLM2-135M-Instruct` | transformers + LoRA adapter |" in body
    assert "| expert | 3 | 600 | 60 |" in body and "| reviewer | 2 | 120 | 0 |" in body  # the ledger built above
    assert "| rows kept | 4 |" in body and "| eliminated: no_gain | 1 |" in body.replace("  ", " ")
    assert "trained **grpo** policy" in body and "| add_constraints | 0.600 | 0.250 |" in body
    assert "teams-rl's own seed instructions" in body and "embedded default" in body
    assert "distinct 1 instruction" in body and "![reward](plots/reward.png)" in body
    assert "`teams-rl train-policy --config recipes/train-policy.yaml`" in body
    pushes = json.loads((pipeline_run / "hub.json").read_text())
    assert pushes["dataset"]["commit"] == repo.branches["main"] and pushes["dataset"]["revision"] == "main"

    done_model = _push(hub, home, "model", pipeline_run, "--repo-id", "me/demo-model")
    assert done_model.returncode == 0, done_model.stderr
    files = hub.files("model", "me/demo-model")
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "README.md",
        "recipes/sft.yaml",
        "plots/loss.png",
        "plots/benchmarks.png",
    } <= set(files)
    meta, body = _card(files)
    assert meta["base_model"] == EXPERT and meta["library_name"] == "peft" and meta["datasets"] == ["me/demo-data"]
    assert {"trl", "sft", "teams-rl"} <= set(meta["tags"])
    commit = pushes["dataset"]["commit"][:12]
    link = f"[`me/demo-data`]({hub.endpoint}/datasets/me/demo-data) at revision `main` (commit `{commit}`)"
    assert link in body
    assert "| arc_easy | acc | 0 | 50 | 0.2500 ± 0.0200 | 0.3100 ± 0.0200 | +0.0600" in body and "0.537" in body
    assert 'from_pretrained("me/demo-model")' in body and "## Framework versions" in body  # the SFT card, extended
    assert set(json.loads((pipeline_run / "hub.json").read_text())) == {"dataset", "model"}
    _assert_token_kept_safe(hub, pipeline_run, done.stdout, done.stderr, done_model.stdout, done_model.stderr)


def test_branch_public_refuse_then_overwrite(hub, tmp_path):
    run = tmp_path / "synth"
    _synthesis_run(run)
    (run / "config" / "extra.yaml").write_text("note: gone after the overwrite\n")
    home = tmp_path / "hf-home"
    args = ("dataset", run, "--repo-id", "me/data", "--revision", "exp-1", "--no-metrics")
    first = _push(hub, home, *args, "--public")
    assert first.returncode == 0, first.stderr
    repo = hub.repos[("dataset", "me/data")]
    assert not repo.private
    assert set(hub.files("dataset", "me/data")) == {".gitattributes"}  # main untouched
    assert "recipes/extra.yaml" in hub.files("dataset", "me/data", "exp-1")
    _, body = _card(hub.files("dataset", "me/data", "exp-1"))
    assert "**random** policy" in body and "Not computed for this push" in body
    assert json.loads((run / "hub.json").read_text())["dataset"]["url"].endswith("/datasets/me/data/tree/exp-1")

    branches, writes = dict(repo.branches), len(hub.writes())
    again = _push(hub, home, *args)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and again.stderr.startswith("error: ")
    assert "me/data" in again.stderr and "exp-1" in again.stderr and "--overwrite" in again.stderr
    assert repo.branches == branches and len(hub.writes()) == writes  # nothing changed on the server

    (run / "config" / "extra.yaml").unlink()
    rows, rejected, summary = load_rows(run / "dataset")
    write_dataset(
        run / "dataset",
        [{k: v for k, v in r.items() if k != "score_embedding"} for r in rows][:3],
        rejected,
        {**summary, "rows": 3},
    )
    replaced = _push(hub, home, *args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert repo.branches["exp-1"] != branches["exp-1"] and repo.branches["main"] == branches["main"]
    files = hub.files("dataset", "me/data", "exp-1")
    assert "recipes/extra.yaml" not in files  # an earlier push's leftovers go
    meta, _ = _card(files)  # and its card header: the features and sizes are the new data's
    assert meta["dataset_info"]["splits"][0]["num_examples"] == 3
    assert "score_embedding" not in {f["name"] for f in meta["dataset_info"]["features"]}
    _assert_token_kept_safe(hub, run, first.stderr, again.stderr, replaced.stderr)


def test_refusals_before_any_request(hub, tmp_path):
    run = tmp_path / "synth"
    _synthesis_run(run)
    no_token = _push(hub, tmp_path / "empty-home", "dataset", run, "--repo-id", "me/data", token=False)
    assert no_token.returncode == 2 and "hf auth login" in no_token.stderr
    assert no_token.stderr.strip().count("\n") == 0
    missing = _push(hub, tmp_path / "hf-home", "model", tmp_path / "nope", "--repo-id", "me/model")
    assert missing.returncode == 2 and str(tmp_path / "nope") in missing.stderr
    not_a_run = _push(hub, tmp_path / "hf-home", "dataset", tmp_path, "--repo-id", "me/data")
    assert not_a_run.returncode == 2 and "no dataset here" in not_a_run.stderr and str(tmp_path) in not_a_run.stderr
    assert hub.requests == []


def test_run_folder_layouts(tmp_path):
    """Every folder the stages write resolves to what to push and the run folder around it."""
    from teams_rl.core.errors import TeamsRLError
    from teams_rl.hub.runs import find_dataset, find_model

    run = tmp_path / "run"
    for folder in ("dataset", "sft/adapter", "sft/merged", "baseline-random/dataset"):
        (run / folder).mkdir(parents=True)
    (run / "config").mkdir()
    for folder in ("dataset", "baseline-random/dataset"):
        (run / folder / "rows.jsonl").write_text("")
    (run / "sft" / "adapter" / "adapter_config.json").write_text("{}")
    (run / "sft" / "merged" / "config.json").write_text("{}")
    (run / "sft" / "merged" / "model.safetensors").write_bytes(b"")
    assert find_dataset(run) == find_dataset(run / "dataset")
    assert (
        find_dataset(run).root == run and find_dataset(run / "baseline-random").folder.parent.name == "baseline-random"
    )
    assert find_model(run).folder == run / "sft" / "adapter" and find_model(run).root == run
    assert find_model(run, merged=True).folder == run / "sft" / "merged"
    assert find_model(run / "sft").root == run / "sft"  # a plain SFT output folder is its own run folder
    assert find_model(run / "sft" / "adapter").root == run and find_model(run / "sft" / "adapter").sft == run / "sft"
    with pytest.raises(TeamsRLError, match="no merged/"):
        find_model(run / "config", merged=True)
