"""The codebase's shape as checked facts: one package per stage under the layers contract, every stage started the
same way with the same exit codes, and a wheel that carries every package and the shipped data."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (python -m module, teams-rl command) for every stage that reads a recipe
STAGES = [
    ("teams_rl.policy", "train-policy"),
    ("teams_rl.synthesize", "synthesize"),
    ("teams_rl.sft", "sft"),
    ("teams_rl.evaluate", "evaluate"),
    ("teams_rl.pipeline", "run"),
]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module,command", STAGES)
def test_every_stage_runs_as_a_module_and_as_a_command_with_the_same_error_and_exit_2(module, command, tmp_path):
    missing = str(tmp_path / "missing.yaml")
    as_module = _run("-m", module, "--config", missing)
    as_command = _run("-m", "teams_rl.cli", command, "--config", missing)
    for done in (as_module, as_command):
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.strip().splitlines()[-1] == f"error: {missing}: recipe file not found"


def test_push_runs_as_a_module_too():
    done = _run("-m", "teams_rl.hub", "--help")
    assert done.returncode == 0 and "teams-rl push" in done.stdout


def test_the_layers_contract_holds():
    """import-linter's contract in pyproject.toml: each package imports only those below it."""
    pytest.importorskip("importlinter")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:]
    assert "0 broken" in done.stdout


def test_the_wheel_lists_every_package_and_ships_the_eval_tasks():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    found = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "teams_rl").rglob("__init__.py")}
    assert found | {"teams_rl.evaluate.tasks"} == set(config["packages"])
    assert config["package-dir"]["teams_rl.evaluate.tasks"] == "eval"
    assert (ROOT / "eval" / "teams_rl_mc" / "teams_rl_mc.yaml").is_file()
    data_dirs = dict(config["package-data"])
    for folder in ("prompts", "data"):
        assert any(g.startswith(folder) for g in data_dirs["teams_rl.env"])
    for pkg in ("teams_rl.sft", "teams_rl.hub"):
        assert (ROOT / pkg.replace(".", "/") / "templates").is_dir() and data_dirs[pkg] == ["templates/*"]


def test_the_default_eval_task_is_found_from_any_folder(tmp_path, monkeypatch):
    from teams_rl.evaluate.inputs import tasks_dir

    monkeypatch.chdir(tmp_path)
    assert (tasks_dir("eval") / "teams_rl_mc" / "teams_rl_mc.yaml").is_file()
