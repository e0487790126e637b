"""The CLI as a user runs it: help, one-line user errors with exit code 2, and the ledger table."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from teams_rl.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "smollm2-135m" / "synthesize" / "config_random.yaml"


def cli(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "teams_rl.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_help_lists_stages_and_stage_help_documents_keys():
    top = cli("--help")
    assert top.returncode == 0 and "synthesize" in top.stdout and "ledger" in top.stdout
    stage = cli("synthesize", "--help")
    assert stage.returncode == 0
    for key in ("--expert_model", "--reviewer_modes", "--depth", "--shard", "--dataset_name"):
        assert key in stage.stdout


def _error_line(result):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


def test_unknown_recipe_key_names_file_line_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("depth: 2\nexpert_temprature: 0.5\n", encoding="utf-8")
    line = _error_line(cli("synthesize", "--config", str(recipe)))
    assert f"{recipe}:2: expert_temprature: unknown key" in line
    assert "expert_temperature" in line  # the suggestion


def test_unknown_command_line_flag_is_named_without_blaming_the_recipe(tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("depth: 2\n", encoding="utf-8")
    line = _error_line(cli("synthesize", "--config", str(recipe), "--expert_temprature", "0.5"))
    assert line == "error: unknown option --expert_temprature (see --help)"


def test_wrong_value_type_names_the_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("output_dir: x\n\ndepth: three\n", encoding="utf-8")
    line = _error_line(cli("synthesize", "--config", str(recipe)))
    assert f"{recipe}:3: depth:" in line and "int" in line


def test_bad_seed_line_is_reported_and_nothing_written(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "ok"}\n{"instruction": "fine"}\n{"instruction": \n', encoding="utf-8")
    out = tmp_path / "run"
    line = _error_line(cli("synthesize", "--dataset_name", str(seeds), "--output_dir", str(out)))
    assert f"{seeds}:3" in line
    assert not (out / "dataset").exists()


def test_missing_model_path_points_at_the_recipe_line(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Say hi."}\n', encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"dataset_name: {seeds}\noutput_dir: {tmp_path / 'run'}\nexpert_model: ./no/such/model\n", encoding="utf-8"
    )
    line = _error_line(cli("synthesize", "--config", str(recipe)))
    assert f"{recipe}:3: expert_model:" in line and "does not exist" in line


def test_unreadable_recipe_and_missing_recipe(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("depth: 2\n  bad: [\n", encoding="utf-8")
    assert str(recipe) in _error_line(cli("synthesize", "--config", str(recipe)))
    assert "recipe file not found" in _error_line(cli("synthesize", "--config", str(tmp_path / "nope.yaml")))


def test_shipped_recipe_parses():
    from teams_rl.core.recipes import parse_args
    from teams_rl.env.seeds import load_seeds
    from teams_rl.synthesize.args import ARGUMENTS

    (seed_args, args, expert, reviewer, review, env), _ = parse_args(ARGUMENTS, ["--config", str(RECIPE)])
    assert args.policy == "random" and expert.expert_model == "smollm2-135m" and env.rewrite_max_new_tokens == 96
    assert seed_args.dataset_name == "builtin"
    assert len(load_seeds(seed_args.dataset_name, limit=seed_args.max_seeds)) == seed_args.max_seeds


def test_ledger_command_prints_roles(tmp_path, capsys):
    from teams_rl.llm.ledger import Ledger
    from teams_rl.llm.role_client import RoleClient
    from tests.scripted import make_backend

    ledger = Ledger(tmp_path / "ledger.sqlite")
    from teams_rl.llm.base import GenerationRequest

    RoleClient(make_backend(), ledger, "expert").generate(
        [GenerationRequest(({"role": "user", "content": "hi"},), seed=s) for s in range(3)]
    )
    ledger.close()
    assert main(["ledger", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "expert" in out and "3" in out
    assert main(["ledger", str(tmp_path / "missing")]) == 2


@pytest.mark.parametrize("argv", [["merge", "/nonexistent-run"]])
def test_merge_without_shards_is_a_user_error(argv):
    assert main(argv) == 2


def test_summary_json_is_valid(tmp_path):
    # write_dataset produces a summary a person (and the merge command) can read back
    from teams_rl.env.dataset import load_rows, write_dataset

    write_dataset(tmp_path / "d", [{"id": "a/1", "instruction": "x"}], [], {"rows": 1})
    rows, rejected, summary = load_rows(tmp_path / "d")
    assert rows == [{"id": "a/1", "instruction": "x"}] and rejected == [] and summary == {"rows": 1}
    json.loads((tmp_path / "d" / "summary.json").read_text())


def test_unreachable_server_is_one_line_and_keeps_the_previous_dataset(tmp_path):
    import socket

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Say hi."}\n', encoding="utf-8")
    out = tmp_path / "run"
    dataset = out / "dataset"
    dataset.mkdir(parents=True)
    (dataset / "rows.jsonl").write_text('{"id": "earlier"}\n', encoding="utf-8")
    (dataset / "summary.json").write_text("{}", encoding="utf-8")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"dataset_name: {seeds}\noutput_dir: {out}\nexpert_backend: openai\nexpert_model: m\n"
        f"expert_base_url: http://127.0.0.1:{port}/v1\nreviewer_modes: embedding\n",
        encoding="utf-8",
    )
    # The earlier dataset was finished by this same recipe (a different one would be refused before any call).
    from teams_rl.core.recipes import parse_args, to_yaml
    from teams_rl.synthesize.args import ARGUMENTS

    earlier = to_yaml(*parse_args(ARGUMENTS, ["--config", str(recipe)])[0])
    (out / "config").mkdir()
    (out / "config" / "synthesize.yaml").write_text(earlier, encoding="utf-8")
    line = _error_line(cli("synthesize", "--config", str(recipe)))
    assert f"{recipe}:5: expert_base_url:" in line and f"127.0.0.1:{port}" in line
    assert (dataset / "rows.jsonl").read_text(encoding="utf-8") == '{"id": "earlier"}\n'
    assert (out / "config" / "synthesize.yaml").read_text(encoding="utf-8") == earlier


def test_known_harmless_warnings_are_quieted_and_others_still_shown():
    """TRL's PPO warns about the variance of a single importance ratio on every CPU step; nothing else is hidden."""
    import warnings

    from teams_rl.core.entry import prepare_process

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        prepare_process()
        warnings.warn(
            "var(): degrees of freedom is <= 0. Correction should be strictly less", UserWarning, stacklevel=1
        )
        warnings.warn("a warning a user must see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["a warning a user must see"]
