"""The evaluation stage: lm-eval on the shipped local task, the adapter really applied, clear task errors, the
metrics CLI and an end-to-end `teams-rl evaluate` on a tiny model with a random LoRA adapter."""

import json
from pathlib import Path

import pytest
import yaml

from teams_rl.core.errors import TeamsRLError
from teams_rl.evaluate import lmeval as lmeval

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "sft_dataset"


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory) -> Path:
    return lmeval.resolve_tasks_dir(REPO / "eval", tmp_path_factory.mktemp("tasks") / "tasks")


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory) -> str:
    """A random LoRA adapter on the tiny model (B initialised non-zero, so it changes the outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    return str(out)


def test_shipped_task_is_well_formed():
    rows = [json.loads(x) for x in (REPO / "eval" / "teams_rl_mc" / "test.jsonl").read_text().splitlines()]
    assert 40 <= len(rows) <= 70
    assert all(len(r["choices"]) == 4 and 0 <= r["answer"] < 4 for r in rows)
    assert len({r["question"] for r in rows}) == len(rows)
    counts = [sum(r["answer"] == i for r in rows) for i in range(4)]
    assert max(counts) - min(counts) <= 2  # a position-biased model cannot score well by always picking one slot


def test_resolve_tasks_dir_makes_data_files_absolute(tasks_dir):
    config = yaml.safe_load((tasks_dir / "teams_rl_mc" / "teams_rl_mc.yaml").read_text())
    files = config["dataset_kwargs"]["data_files"]
    assert Path(files["test"]).is_absolute() and Path(files["test"]).is_file()
    assert files["test"] == str((REPO / "eval" / "teams_rl_mc" / "test.jsonl").resolve())
    assert lmeval.local_task_names(tasks_dir) == ["teams_rl_mc"]


def test_task_spec_parsing():
    assert lmeval.TaskSpec.parse("arc_challenge:25") == lmeval.TaskSpec("arc_challenge", 25)
    assert lmeval.TaskSpec.parse("hellaswag") == lmeval.TaskSpec("hellaswag", None)
    with pytest.raises(TeamsRLError, match="NAME:SHOTS"):
        lmeval.TaskSpec.parse("mmlu:five")


def test_lm_eval_on_the_local_task_returns_scores_and_a_table(tiny_model_dir, tasks_dir):
    specs = [lmeval.TaskSpec("teams_rl_mc", 1)]
    manager = lmeval.task_manager(specs, tasks_dir)
    lmeval.check_tasks(manager, specs, tasks_dir)
    lm = lmeval.load_lm(tiny_model_dir, dtype="float32", batch_size=8)
    assert lmeval.has_chat_template(lm)  # SmolLM2's tokenizer carries one
    result = lmeval.run_tasks(lm, specs, manager, chat_template=True, limit=8, bootstrap_iters=10)["teams_rl_mc"]
    acc, stderr = result["metrics"]["acc"]
    assert 0.0 <= acc <= 1.0 and stderr is not None and stderr > 0
    assert result["samples"] == 8 and result["num_fewshot"] == 1 and result["version"] == 1.0
    rows = lmeval.comparison_rows(
        {"teams_rl_mc": result},
        {"teams_rl_mc": {**result, "metrics": {"acc": (acc + 0.25, 0.1), "acc_norm": result["metrics"]["acc_norm"]}}},
    )
    acc_row = next(r for r in rows if r["metric"] == "acc")
    assert acc_row["delta"] == pytest.approx(0.25)
    assert acc_row["delta_stderr"] == pytest.approx((stderr**2 + 0.01) ** 0.5)
    table = lmeval.markdown_table(rows)
    assert table.splitlines()[0] == "| task | metric | shots | n | base | tuned | delta |"
    assert f"| teams_rl_mc | acc | 1 | 8 | {acc:.4f} ± {stderr:.4f} | {acc + 0.25:.4f} ± 0.1000 | +0.2500 ±" in table


def test_the_adapter_is_really_applied(tiny_model_dir, adapter_dir):
    from lm_eval.api.instance import Instance

    def loglik(lm):
        request = Instance("loglikelihood", doc={}, arguments=("The capital of France is", " Paris"), idx=0)
        return lm.loglikelihood([request])[0][0]

    base = loglik(lmeval.load_lm(tiny_model_dir, dtype="float32"))
    tuned = loglik(lmeval.load_lm(tiny_model_dir, adapter=adapter_dir, dtype="float32"))
    again = loglik(lmeval.load_lm(tiny_model_dir, dtype="float32"))
    assert base == pytest.approx(again)  # deterministic, so a difference is the adapter's
    assert abs(tuned - base) > 1e-3


def test_unknown_task_and_unreachable_data_are_clear_errors(tasks_dir):
    specs = [lmeval.TaskSpec("arc_challenge"), lmeval.TaskSpec("teams_rl_mc")]
    manager = lmeval.task_manager(specs, tasks_dir)  # indexes lm-eval's built-in tasks (~20 s)
    with pytest.raises(TeamsRLError) as err:
        lmeval.check_tasks(manager, [lmeval.TaskSpec("arc_challeng")], tasks_dir)
    text = str(err.value)
    assert "unknown lm-eval task 'arc_challeng'" in text and "did you mean 'arc_challenge'" in text
    assert "teams_rl_mc" in text and "\n" not in text
    with pytest.raises(TeamsRLError) as err:  # HF_HUB_OFFLINE=1 (conftest): the Hub cannot be reached
        lmeval.check_tasks(manager, [lmeval.TaskSpec("arc_challenge", 25)], tasks_dir)
    text = str(err.value)
    assert "task 'arc_challenge': its data cannot be reached" in text and "Hugging Face Hub" in text
    assert "use the local task teams_rl_mc" in text


def test_bad_task_in_a_recipe_exits_2_with_the_recipe_line(tmp_path, capsys):
    from teams_rl.cli import main

    recipe = tmp_path / "eval.yaml"
    recipe.write_text(f"output_dir: {tmp_path}\nbase_model: {tmp_path}/nowhere\ntasks: [teams_rl_mc:three]\n")
    assert main(["evaluate", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {recipe}:3: tasks: bad task 'teams_rl_mc:three'")
    recipe.write_text(f"output_dir: {tmp_path}\ntuned_model: {tmp_path}/no-adapter\n")
    assert main(["evaluate", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{recipe}:2: tuned_model:" in err and "run `teams-rl sft` first" in err


def test_evaluate_help_lists_every_key(capsys):
    from teams_rl.cli import main
    from teams_rl.evaluate.args import EvalArguments

    with pytest.raises(SystemExit) as done:
        main(["evaluate", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert all(f"--{f.name}" in text for f in EvalArguments.__dataclass_fields__.values())


def test_metrics_cli_on_the_fixture_writes_json_and_plots(tmp_path):
    from teams_rl.cli import main

    assert main(["metrics", str(FIXTURE), "--output_dir", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["rows"] == 20 and metrics["depth"] == {"1": 20}
    assert metrics["actions"]["kept"] == {"concretize": 20}
    assert 1.0 < metrics["diversity"]["vendi_instruction"] <= 20.0
    assert metrics["near_duplicates"]["rate"] == 0.0  # 20 distinct hand-written rows
    plots = sorted(p.name for p in (tmp_path / "eval" / "plots").glob("*.png"))
    assert plots == ["actions.png", "depth_and_eliminations.png", "lengths.png"]  # no score_* columns in the fixture
    assert all((tmp_path / "eval" / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_evaluate_end_to_end_on_the_tiny_model(tiny_model_dir, adapter_dir, tmp_path):
    from teams_rl.evaluate.run import main

    members, others = tmp_path / "members.jsonl", tmp_path / "others.jsonl"
    rows = [json.loads(x) for x in (FIXTURE / "rows.jsonl").read_text().splitlines()]
    members.write_text("".join(json.dumps(r) + "\n" for r in rows[:10]))
    others.write_text("".join(json.dumps(r) + "\n" for r in rows[10:]))
    argv = [
        "--output_dir",
        str(tmp_path / "run"),
        "--base_model",
        tiny_model_dir,
        "--tuned_model",
        adapter_dir,
        "--tasks",
        "teams_rl_mc:0",
        "--limit",
        "6",
        "--bootstrap_iters",
        "10",
        "--dtype",
        "float32",
        "--privacy",
        "--privacy_members",
        str(members),
        "--privacy_non_members",
        str(others),
        "--privacy_bootstrap",
        "50",
        "--dataset",
        str(FIXTURE),
    ]
    results = main(argv)
    out = tmp_path / "run" / "eval"
    saved = json.loads((out / "results.json").read_text())
    assert saved["lm_eval_version"] == lmeval.lm_eval_version() != "not installed"
    assert saved["tasks"]["teams_rl_mc"] == {"version": 1.0, "num_fewshot": 0, "samples": 6, "source": "local"}
    assert saved["models"]["tuned"]["kind"] == "peft adapter"
    acc = next(r for r in saved["table"] if r["metric"] == "acc")
    assert acc["base"] is not None and acc["tuned"] is not None
    assert acc["delta"] == pytest.approx(acc["tuned"] - acc["base"])
    for label in ("base", "tuned"):
        for signal in ("neg_loss", "min_k"):
            report = saved["privacy"]["models"][label][signal]
            assert 0.0 <= report["auc"] <= 1.0 and report["members"] == 10 and report["non_members"] == 10
    calibrated = saved["privacy"]["models"]["tuned"]["neg_loss_vs_base"]  # tuned minus base, row by row
    rows_scored = saved["privacy"]["row_scores"]
    assert calibrated["members"] == 10 and "neg_loss_vs_base" not in saved["privacy"]["models"]["base"]
    assert rows_scored["tuned"]["neg_loss_vs_base"][0] == pytest.approx(
        rows_scored["tuned"]["neg_loss"][0] - rows_scored["base"]["neg_loss"][0], abs=1e-4
    )
    md = (out / "results.md").read_text()
    assert "| teams_rl_mc | acc | 0 | 6 |" in md and "## Membership inference" in md and "lm-eval 0.4" in md
    assert (out / "metrics.json").is_file() and (out / "config" / "evaluate.yaml").is_file()
    for name in ("benchmarks.png", "privacy_roc_neg_loss.png", "privacy_roc_min_k.png", "lengths.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    assert main(argv)["created"] == results["created"]  # complete for this config: skipped, not recomputed
    with pytest.raises(TeamsRLError, match=r"another configuration \(privacy_min_k: 0.2 -> 0.3\)"):
        main([*argv, "--privacy_min_k", "0.3"])  # another config: refused, the results stay
    assert json.loads((out / "results.json").read_text())["created"] == results["created"]


@pytest.mark.parametrize("recipe", ["recipes/smollm2-135m/eval/config.yaml", "recipes/llama-3.1-8b/eval/config.yaml"])
def test_shipped_recipes_parse(recipe):
    from teams_rl.core.recipes import parse_args
    from teams_rl.evaluate.args import EvalArguments

    (args,), _ = parse_args([EvalArguments], ["--config", str(REPO / recipe), "--privacy", "--limit", "5"])
    assert args.privacy is True and args.limit == 5  # a bare --privacy flag and CLI overrides win over the recipe
    specs = [lmeval.TaskSpec.parse(t) for t in args.tasks]
    if "llama" in recipe:  # the paper's benchmarks and shots
        assert specs == [
            lmeval.TaskSpec("arc_challenge", 25),
            lmeval.TaskSpec("hellaswag", 10),
            lmeval.TaskSpec("mmlu", 5),
            lmeval.TaskSpec("truthfulqa_mc2", 0),
        ]
    else:
        assert specs[0].name in lmeval.local_task_names(REPO / args.tasks_dir) and args.device is None
