"""`teams-rl run`: the whole pipeline on a tiny config (scripted LLMs, a tiny Llama) as a user runs it, a re-run that
skips every finished stage, --dry-run, --redo, recipe errors, and a run killed during SFT that resumes."""

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTED = "tests.scripted:make_backend"  # `backend: python` imports it in each stage's process


def _write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _recipes(folder: Path, model: str) -> dict[str, Path]:
    """Tiny stage recipes: 8 seeds, scripted expert/rewriter/reviewer, the classic policy, 6 LoRA steps, lm-eval on
    a few questions. Every stage runs for real, just small."""
    seeds = folder / "seeds.jsonl"
    seeds.write_text(
        "".join(
            json.dumps({"id": f"t{i}", "instruction": f"Explain idea number {i} to a beginner."}) + "\n"
            for i in range(8)
        ),
        encoding="utf-8",
    )
    review = {"reviewer_model": SCRIPTED, "reviewer_backend": "python", "reviewer_modes": "judge_logprob:1"}
    policy = _write(
        folder / "policy.yaml",
        {
            "dataset_name": str(seeds),
            "algorithm": "classic",
            "depth": 1,
            "episode_slots": 4,
            "iterations": 2,
            "rollout_steps": 1,
            "state_features": "last_action",
            "report_to": "none",
            "rewriter_model": SCRIPTED,
            "rewriter_backend": "python",
            **review,
        },
    )
    synth = _write(
        folder / "synth.yaml",
        {
            "dataset_name": str(seeds),
            "depth": 2,
            "chunk_size": 4,
            "expert_model": SCRIPTED,
            "expert_backend": "python",
            **review,
        },
    )
    sft = _write(
        folder / "sft.yaml",
        {
            "model_name_or_path": model,
            "dtype": "float32",
            "use_peft": True,
            "lora_r": 4,
            "lora_alpha": 8,
            "lora_target_modules": ["q_proj", "v_proj"],
            "test_split_size": 0.25,
            "max_length": 128,
            "max_steps": 6,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "save_strategy": "steps",
            "save_steps": 2,
            "eval_strategy": "no",
            "report_to": "none",
            "dataloader_pin_memory": False,
            "bf16": False,
            "seed": 3,
        },
    )
    evaluate = _write(
        folder / "eval.yaml",
        {
            "base_model": model,
            "dtype": "float32",
            "tasks": ["teams_rl_mc:0"],
            "tasks_dir": str(ROOT / "eval"),
            "limit": 4,
            "bootstrap_iters": 10,
            "privacy": True,
            "privacy_bootstrap": 20,
            "batch_size": 4,
        },
    )
    return {"policy": policy, "synth": synth, "sft": sft, "eval": evaluate}


def _pipeline(folder: Path, recipes: dict[str, Path], run_dir: Path, **extra) -> Path:
    return _write(
        folder / "pipeline.yaml",
        {
            "run_dir": str(run_dir),
            "policy_recipe": str(recipes["policy"]),
            "synthesize_recipe": str(recipes["synth"]),
            "sft_recipe": str(recipes["sft"]),
            "eval_recipe": str(recipes["eval"]),
            **extra,
        },
    )


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "teams_rl.cli", "run", *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _calls(ledger: Path) -> int:
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """One complete tiny pipeline run, then a second run of the same command."""
    folder = tmp_path_factory.mktemp("pipeline")
    recipes = _recipes(folder, tiny_model_dir)
    config = _pipeline(
        folder, recipes, folder / "run", stages=["train-policy", "synthesize", "baseline", "sft", "evaluate"]
    )
    first = _run("--config", str(config))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    run = folder / "run"
    before = {
        "ledger": _calls(run / "ledger.sqlite"),
        "baseline": _calls(run / "baseline-random" / "ledger.sqlite"),
        "adapter": (run / "sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns,
        "results": (run / "eval" / "results.json").stat().st_mtime_ns,
        "logs": {p.name: p.read_text() for p in (run / "logs").glob("*.log")},
    }
    second = _run("--config", str(config))
    return folder, config, run, first, second, before


def test_pipeline_runs_every_stage_into_one_run_folder(finished):
    _, _, run, first, _, _ = finished
    state = json.loads((run / "pipeline.json").read_text())
    assert [s for s, e in state["stages"].items() if e["status"] == "done"] == [
        "train-policy",
        "synthesize",
        "baseline",
        "sft",
        "evaluate",
    ]
    assert json.loads((run / "policy" / "policy.json").read_text())["algorithm"] == "classic"
    rows = [json.loads(line) for line in (run / "dataset" / "rows.jsonl").read_text().splitlines()]
    assert rows and all(r["policy"] == "classic:policy" for r in rows)  # synthesis used the policy trained here
    baseline = [
        json.loads(line) for line in (run / "baseline-random" / "dataset" / "rows.jsonl").read_text().splitlines()
    ]
    assert baseline and all(r["policy"] == "random" for r in baseline)
    assert (run / "sft" / "adapter" / "README.md").is_file()
    sft_config = yaml.safe_load((run / "sft" / "config" / "sft.yaml").read_text())
    assert sft_config["dataset_name"] == str(run / "dataset")  # the pipeline wired the dataset in
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["table"] and results["privacy"] and results["config"]["tuned_model"] == str(run / "sft" / "adapter")
    assert (run / "baseline-random" / "eval" / "metrics.json").is_file()
    for stage in ("train-policy", "synthesize", "baseline", "sft", "evaluate"):
        assert (run / "logs" / f"{stage}.log").stat().st_size > 0
    assert "report:" in first.stdout


def test_report_shows_policy_vs_random_queries_eval_and_plots(finished):
    _, _, run, _, _, _ = finished
    report = (run / "report.md").read_text()
    policy = json.loads((run / "eval" / "metrics.json").read_text())
    random = json.loads((run / "baseline-random" / "eval" / "metrics.json").read_text())
    kept = f"| rows kept | {policy['review']['kept']}"
    assert "## Summary: trained policy vs random" in report
    assert kept in report.replace("**", "") and f"| {random['review']['kept']} |" in report.replace("**", "")
    assert "## Queries per role" in report and "| expert |" in report and "| rewriter |" in report
    assert "## Base vs tuned (lm-eval)" in report and "teams_rl_mc" in report
    assert "## Membership inference (privacy)" in report and "## Policy" in report
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert "plots/action_mix_by_policy.png" in images and "sft/plots/loss.png" in images
    assert all((run / image).is_file() for image in images)
    html = (run / "report.html").read_text()
    assert "<table>" in html and '<img src="plots/action_mix_by_policy.png"' in html


def test_second_run_skips_every_stage_with_no_new_calls_or_training(finished):
    _, _, run, _, second, before = finished
    assert second.returncode == 0, second.stderr[-3000:]
    for stage in ("train-policy", "synthesize", "baseline", "sft", "evaluate"):
        assert f"{stage}: done, skipped" in second.stdout
    assert _calls(run / "ledger.sqlite") == before["ledger"]
    assert _calls(run / "baseline-random" / "ledger.sqlite") == before["baseline"]
    assert (run / "sft" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before["adapter"]
    assert (run / "eval" / "results.json").stat().st_mtime_ns == before["results"]
    assert {p.name: p.read_text() for p in (run / "logs").glob("*.log")} == before["logs"]  # no stage launched


def test_dry_run_shows_status_and_commands_and_writes_nothing(finished, tmp_path):
    folder, config, run, _, _, _ = finished
    done = _run("--config", str(config), "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("done (") == 5 and "teams-rl sft" in done.stdout
    fresh = _run("--config", str(config), "--run_dir", str(tmp_path / "new"), "--dry-run")
    assert fresh.returncode == 0 and fresh.stdout.count("to run") == 5
    assert not (tmp_path / "new").exists()


def test_push_stage_publishes_dataset_and_model_and_never_writes_the_token(finished, tmp_path):
    from tests.fake_hub_server import FakeHub

    _, config, run, _, _, _ = finished
    hub = FakeHub()
    hub.start()
    token = "hf_FAKEpipelineToken0987654321"
    env = {
        **_env(),
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_TOKEN": token,
    }
    argv = [
        sys.executable,
        "-m",
        "teams_rl.cli",
        "run",
        "--config",
        str(config),
        "--stages",
        "train-policy",
        "synthesize",
        "baseline",
        "sft",
        "evaluate",
        "push",
        "--push_dataset_repo_id",
        "me/demo-data",
        "--push_model_repo_id",
        "me/demo-model",
        "--push_revision",
        "exp-1",
    ]
    try:
        pushed = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert pushed.returncode == 0, pushed.stdout[-3000:] + pushed.stderr[-3000:]
        assert "sft: done, skipped" in pushed.stdout and "push: running" in pushed.stdout
        data, model = hub.files("dataset", "me/demo-data", "exp-1"), hub.files("model", "me/demo-model", "exp-1")
        assert "README.md" in data and any(name.endswith(".parquet") for name in data)
        assert "adapter_model.safetensors" in model and b"me/demo-data" in model["README.md"]
        assert hub.files("dataset", "me/demo-data", "main").keys() <= {".gitattributes"}  # main untouched
        recorded = json.loads((run / "hub.json").read_text())
        assert recorded["dataset"]["revision"] == recorded["model"]["revision"] == "exp-1"
        writes = len(hub.writes())

        again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0 and "push: done, skipped" in again.stdout
        assert len(hub.writes()) == writes  # nothing uploaded twice
    finally:
        hub.stop()
    for output in (pushed.stdout, pushed.stderr, again.stdout, again.stderr):
        assert token not in output
    for path in run.rglob("*"):
        assert not path.is_file() or token.encode() not in path.read_bytes(), path  # logs, state, cards, configs
    for content in (*data.values(), *model.values()):
        assert token.encode() not in content


def test_changed_recipe_is_refused_until_redo_which_reruns_from_that_stage(finished):
    folder, config, run, _, _, _ = finished
    changed = _run("--config", str(config), "--eval_overrides", "limit=3", "--dry-run")
    assert changed.returncode == 0 and "changed" in changed.stdout
    refused = _run("--config", str(config), "--eval_overrides", "limit=3")
    assert refused.returncode == 2 and "--redo evaluate" in refused.stderr.strip().splitlines()[-1]
    old_results = (run / "eval" / "results.json").read_text()

    redone = _run("--config", str(config), "--eval_overrides", "limit=3", "--redo", "evaluate")
    assert redone.returncode == 0, redone.stdout[-3000:] + redone.stderr[-3000:]
    assert "sft: done, skipped" in redone.stdout and "evaluate: running" in redone.stdout
    assert json.loads((run / "eval" / "results.json").read_text())["config"]["limit"] == 3
    kept_aside = list((run / "superseded").glob("*/eval/results.json"))
    assert len(kept_aside) == 1 and kept_aside[0].read_text() == old_results  # moved, not deleted


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"stages": ["synthesize", "polish"]},
            "stages: must be one of train-policy, synthesize, baseline, sft, evaluate, push, got 'polish'",
        ),
        ({"sft_overrides": ["output_dir=elsewhere"]}, "'output_dir' is set by the pipeline"),
        ({"sft_overrides": ["max_stepz=3"]}, "max_stepz"),
        ({"synth_recipe": "x.yaml"}, "synth_recipe: unknown key"),
    ],
)
def test_bad_pipeline_recipe_is_one_line_and_exit_2(tiny_model_dir, tmp_path, extra, message):
    config = _pipeline(tmp_path, _recipes(tmp_path, tiny_model_dir), tmp_path / "run", **extra)
    done = _run("--config", str(config))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]  # (libraries may log warnings on import above it)
    assert last.startswith("error: ") and message in last and str(tmp_path / "pipeline.yaml") in last
    assert not (tmp_path / "run").exists()  # nothing started


def test_run_killed_during_sft_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    recipes = _recipes(tmp_path, tiny_model_dir)
    config = _pipeline(
        tmp_path,
        recipes,
        tmp_path / "run",
        stages=["synthesize", "sft"],
        sft_overrides=["max_steps=40", "save_total_limit=50"],
    )
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "teams_rl.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (run / "sft" / "checkpoint-4").is_dir():
        assert proc.poll() is None, "the pipeline ended before it could be killed"
        assert time.monotonic() < deadline, "SFT never saved a checkpoint"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the pipeline and its SFT process, as a crash or an OOM kill would
    proc.wait(timeout=30)
    assert not (run / "sft" / "adapter").exists()
    calls = _calls(run / "ledger.sqlite")
    state = json.loads((run / "pipeline.json").read_text())
    assert state["stages"]["synthesize"]["status"] == "done" and state["stages"]["sft"]["status"] == "running"

    again = _run("--config", str(config))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "synthesize: done, skipped" in again.stdout and "sft: resuming" in again.stdout
    assert _calls(run / "ledger.sqlite") == calls
    resumed = re.search(r"resuming from \S*checkpoint-(\d+)", again.stdout)
    assert resumed and 2 <= int(resumed.group(1)) <= 4, again.stdout[-3000:]  # not from scratch
    trainer_state = json.loads((run / "sft" / "checkpoint-40" / "trainer_state.json").read_text())
    assert trainer_state["global_step"] == 40 and (run / "sft" / "adapter" / "README.md").is_file()


@pytest.mark.parametrize("recipe", sorted(ROOT.glob("recipes/*/pipeline.yaml")), ids=lambda p: p.parent.name)
def test_every_pipeline_recipe_plans_and_every_stage_command_parses(recipe, monkeypatch):
    from teams_rl.core.recipes import parse_args
    from teams_rl.pipeline.plan import PipelineArguments, plan
    from teams_rl.pipeline.validate import validate

    monkeypatch.chdir(ROOT)
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine unless use_cpu is set.
    raw = yaml.safe_load(recipe.read_text())
    cpu = (
        {
            "policy_overrides": [*raw["policy_overrides"], "use_cpu=true"],
            "sft_overrides": [*raw["sft_overrides"], "use_cpu=true"],
        }
        if "bf16" in (ROOT / raw["sft_recipe"]).read_text()
        else {}
    )
    argv = ["--config", str(recipe)] + [x for k, v in cpu.items() for x in (f"--{k}", *v)]
    (args,), path = parse_args([PipelineArguments], argv)
    stages = plan(args, path)
    validate(stages, path)
    assert [s.name for s in stages] == raw["stages"]
    by_name = {s.name: s for s in stages}
    synth = by_name["synthesize"].commands[0]
    assert synth[synth.index("--policy") + 1] == str(Path(args.run_dir) / "policy")
    sft = by_name["sft"].commands[0]
    assert sft[sft.index("--dataset_name") + 1] == str(Path(args.run_dir) / "dataset")
    for stage in stages:  # every recipe a stage names exists
        assert stage.recipe is None or (ROOT / stage.recipe).is_file()
    # TRL's PPO is the default trainer in every pipeline (GRPO and classic are alternatives)
    assert yaml.safe_load((ROOT / raw["policy_recipe"]).read_text())["algorithm"] == "ppo", raw["policy_recipe"]
