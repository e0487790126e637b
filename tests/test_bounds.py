"""Every numeric or enumerated recipe key of every stage declares a bound, and a value out of it stops the command
with one line naming the file, line and key (exit 2) before any model loads."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from teams_rl.core.bounds import SHARD, at_least, between, bound_of, bounded, is_numeric, resolved_fields
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.recipe_check import inert_keys
from teams_rl.core.recipes import parse_args

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "smollm2-135m"


def stage_dataclasses() -> dict[str, tuple[type, ...]]:
    """The dataclasses each stage's command line parses into (train-policy: one set per algorithm)."""
    from teams_rl.evaluate.args import EvalArguments
    from teams_rl.pipeline.plan import PipelineArguments
    from teams_rl.pipeline.run import RunOptions
    from teams_rl.policy import train
    from teams_rl.policy.explore import ExploreArguments
    from teams_rl.sft.args import CONFIG_CLASSES as SFT
    from teams_rl.synthesize.args import ARGUMENTS as SYNTHESIZE

    stages = {
        "synthesize": SYNTHESIZE,
        "sft": SFT,
        "evaluate": (EvalArguments,),
        "run": (PipelineArguments, RunOptions),  # push has no recipe: its keys are the pipeline's push_*
    }
    for algorithm in ("ppo", "grpo", "classic"):
        stages[f"train-policy/{algorithm}"] = train.argument_classes(["--algorithm", algorithm])
    stages["explore"] = (*train.argument_classes(["--algorithm", "ppo"]), ExploreArguments)
    return stages


def test_every_numeric_or_enumerated_key_has_a_bound():
    missing = []
    for stage, classes in stage_dataclasses().items():
        hidden = inert_keys(classes)
        for dc in classes:
            for f, typ in resolved_fields(dc):
                if f.name in hidden:
                    continue
                if is_numeric(typ) and bound_of(f, typ) is None:
                    missing.append(f"{stage}: {dc.__name__}.{f.name}")
    assert not missing, "numeric keys with no bound:\n" + "\n".join(sorted(set(missing)))


def test_every_default_is_within_its_bound():
    from teams_rl.core.bounds import check_value

    bad = []
    for classes in stage_dataclasses().values():
        for dc in classes:
            for f, typ in resolved_fields(dc):
                if f.default is dataclasses.MISSING or f.name in inert_keys([dc]):
                    continue
                if problem := check_value(f, typ, f.default):
                    bad.append(f"{dc.__name__}.{f.name}: {problem}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_bound_phrases():
    assert at_least(1).problem(0) == "must be >= 1"
    assert at_least(1).problem(None) is None
    assert between(0, 1, lo_open=True).problem(0.0) == "must be in (0, 1]"
    assert between(0, 1, lo_open=True).problem(1.0) is None
    assert between(0, 1, lo_open=True).problem(float("nan")) == "must be in (0, 1], not NaN"
    assert at_least(1).problem([3, 0]) == "must be >= 1"
    assert SHARD.problem("1/2") is None and SHARD.problem("2/2") and SHARD.problem("x")


def test_bounded_decorator_leaves_the_parent_untouched():
    @dataclasses.dataclass
    class Parent:
        steps: int = dataclasses.field(default=3, metadata={"help": "h"})

    @bounded(steps=at_least(1))
    @dataclasses.dataclass
    class Child(Parent):
        pass

    child = {f.name: f for f in dataclasses.fields(Child)}["steps"]
    parent = {f.name: f for f in dataclasses.fields(Parent)}["steps"]
    assert bound_of(child) == at_least(1) and bound_of(parent) is None
    assert child.metadata["help"] == "h" and child.default == 3


@pytest.mark.parametrize(
    ("recipe", "key", "value", "phrase"),
    [
        ("synthesize/config_random.yaml", "depth", 0, ">= 1"),
        ("synthesize/config_random.yaml", "depth", -1, ">= 1"),
        ("synthesize/config_random.yaml", "expert_max_calls", -5, ">= 0"),
        ("synthesize/config_random.yaml", "chunk_size", 0, ">= 1"),
        ("synthesize/config_random.yaml", "expert_temperature", -1.0, ">= 0"),
        ("synthesize/config_random.yaml", "expert_top_p", 0.0, "(0, 1]"),
        ("synthesize/config_random.yaml", "expert_backend", "vllm", "one of"),
        ("synthesize/config_random.yaml", "shard", "3/2", "i/N"),
        ("sft/config_lora.yaml", "learning_rate", 0.0, "> 0"),
        ("sft/config_lora.yaml", "lr_scheduler_type", "sometimes", "one of"),
        ("sft/config_lora.yaml", "test_split_size", 1.0, "[0, 1)"),
        ("policy/config_ppo.yaml", "kl_coef", -0.1, ">= 0"),
        ("policy/config_grpo.yaml", "num_generations", 1, ">= 2"),
    ],
)
def test_a_recipe_value_out_of_bounds_names_file_line_and_key(tmp_path, recipe, key, value, phrase):
    import yaml

    from teams_rl.core.recipe_check import validate_recipe

    source = (RECIPES / recipe).read_text(encoding="utf-8")
    path = tmp_path / "recipe.yaml"
    path.write_text(source + f"\n# a user's edit\n{key}: {yaml.safe_dump(value).splitlines()[0]}\n", encoding="utf-8")
    stage = recipe.split("/")[0]
    classes = {
        "synthesize": "synthesize",
        "sft": "sft",
        "policy": "train-policy/" + recipe.split("_")[-1].split(".")[0],
    }[stage]
    with pytest.raises(TeamsRLError) as err:
        validate_recipe(path, stage_dataclasses()[classes])
    line = len(path.read_text(encoding="utf-8").splitlines())
    assert (err.value.file, err.value.line, err.value.field) == (str(path), line, key)
    assert phrase in str(err.value)


def test_a_flag_out_of_bounds_is_refused_before_parsing():
    from teams_rl.synthesize.args import ARGUMENTS

    recipe = str(RECIPES / "synthesize" / "config_random.yaml")
    for argv, key in ([["--depth", "0"], "--depth"], [["--chunk_size=0"], "--chunk_size"]):
        with pytest.raises(TeamsRLError, match=f"{key}: must be >= 1, got 0"):
            parse_args(ARGUMENTS, ["--config", recipe, *argv])
    parsed, _ = parse_args(ARGUMENTS, ["--config", recipe, "--depth", "2", "--expert_max_calls", "None"])
    assert parsed[1].depth == 2 and parsed[2].expert_max_calls is None


def test_the_help_shows_each_bound(capsys):
    from teams_rl.synthesize.args import ARGUMENTS

    with pytest.raises(SystemExit):
        parse_args(ARGUMENTS, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "becomes a row. [>= 1]" in text and "Nucleus sampling mass. [in (0, 1]]" in text


@pytest.mark.parametrize(
    "flags",
    [
        ["--depth", "0"],
        ["--depth", "-1"],
        ["--expert_max_calls", "-5"],
        ["--chunk_size", "0"],
        ["--expert_temperature", "-1"],
    ],
)
def test_the_cases_of_the_issue_exit_2_with_one_line_and_keep_the_dataset(tmp_path, flags):
    out = tmp_path / "run"
    dataset = out / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "summary.json").write_text("{}", encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "teams_rl.synthesize",
            "--config",
            str(RECIPES / "synthesize" / "config_random.yaml"),
            "--output_dir",
            str(out),
            *flags,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and flags[0] in errors[0], proc.stderr
    assert (dataset / "summary.json").read_text(encoding="utf-8") == "{}"


def test_every_recipe_dataclass_still_works_with_trl_and_transformers_parsers():
    """HfArgumentParser hands each listed metadata key to argparse; a listed ``bound`` would make it raise."""
    from transformers import HfArgumentParser

    for stage, classes in stage_dataclasses().items():
        for dc in classes:
            listed = [f.name for f in dataclasses.fields(dc) if "bound" in list(f.metadata)]
            assert not listed, f"{stage}: {dc.__name__} needs @bounded(): {listed}"
        HfArgumentParser(list(classes))
