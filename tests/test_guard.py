"""Results are never replaced silently: a finished output made by another recipe is refused unless --overwrite (which
moves it to superseded/), the same recipe resumes or skips, and a second process on one output folder is refused."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.guard import claim, config_changes, move_aside, output_lock
from teams_rl.synthesize import run as synth_mod

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [{"id": f"g{i}", "instruction": f"Explain idea number {i} to a beginner."} for i in range(4)]


@pytest.fixture
def seeds_file(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    return path


def synthesize(seeds_file, out, *extra):
    argv = ["--dataset_name", str(seeds_file), "--output_dir", str(out), "--reviewer_modes", "judge_logprob:1"]
    return synth_mod.main([*argv, "--depth", "2", *extra])


def rows_of(folder: Path) -> str:
    return (folder / "dataset" / "rows.jsonl").read_text(encoding="utf-8")


def test_another_recipe_is_refused_and_the_dataset_kept(seeds_file, tmp_path, backend):
    out = tmp_path / "run"
    synthesize(seeds_file, out)
    before = rows_of(out)
    with pytest.raises(TeamsRLError) as err:
        synthesize(seeds_file, out, "--depth", "1")
    assert err.value.file == str(out / "dataset")
    assert "made by another configuration (depth: 2 -> 1)" in str(err.value) and "--overwrite true" in str(err.value)
    assert rows_of(out) == before
    assert "depth: 2" in (out / "config" / "synthesize.yaml").read_text(encoding="utf-8")


def test_the_same_recipe_resumes_with_no_new_calls(seeds_file, tmp_path, backend):
    out = tmp_path / "run"
    synthesize(seeds_file, out)
    before, calls = rows_of(out), backend.generate_calls
    synthesize(seeds_file, out, "--expert_timeout_s", "5")  # how long to wait is not what is made
    assert rows_of(out) == before and backend.generate_calls == calls


def test_overwrite_moves_the_old_result_and_its_recipe_aside(seeds_file, tmp_path, backend):
    out = tmp_path / "run"
    synthesize(seeds_file, out)
    before = rows_of(out)
    synthesize(seeds_file, out, "--depth", "1", "--overwrite", "true")
    [moved] = (out / "superseded").iterdir()
    assert (moved / "dataset" / "rows.jsonl").read_text(encoding="utf-8") == before
    assert "depth: 2" in (moved / "config" / "synthesize.yaml").read_text(encoding="utf-8")
    assert "depth: 1" in (out / "config" / "synthesize.yaml").read_text(encoding="utf-8")
    assert rows_of(out) != before


def test_a_result_with_no_saved_recipe_is_refused(tmp_path):
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "summary.json").write_text("{}", encoding="utf-8")
    with pytest.raises(TeamsRLError, match="no synthesize.yaml says which"):
        claim(
            root=tmp_path,
            finished=tmp_path / "dataset" / "summary.json",
            record=tmp_path / "config" / "synthesize.yaml",
            config="depth: 1\n",
            outputs=[tmp_path / "dataset"],
            overwrite=False,
        )


def test_config_changes_names_keys_and_ignores_where_and_how_long():
    saved = "depth: 2\noutput_dir: a\nexpert_timeout_s: 5\nseed: 1\n"
    assert config_changes(saved, "depth: 3\noutput_dir: b\nexpert_timeout_s: 9\nseed: 1\nnew: x\n") == [
        "depth: 2 -> 3",
        "new: (unset) -> x",
    ]


def test_prices_polls_and_the_executor_are_not_the_result_but_a_dollar_budget_is():
    saved = "depth: 2\nexpert_usd_per_mtok_in: null\nexecutor: local\nexpert_max_usd: null\n"
    now = (
        "depth: 2\nexpert_usd_per_mtok_in: 0.15\nexpert_usd_per_mtok_out: 0.6\nexpert_batch_poll_s: 5\n"
        "executor: ray\nnum_shards: 4\nexpert_max_usd: 3\n"
    )
    assert config_changes(saved, now) == ["expert_max_usd: None -> 3"]


def test_move_aside_never_overwrites_an_earlier_move(tmp_path):
    for n in range(2):
        (tmp_path / "eval").mkdir()
        (tmp_path / "eval" / "results.json").write_text(str(n), encoding="utf-8")
        move_aside(tmp_path, [tmp_path / "eval"])
    moved = sorted((tmp_path / "superseded").glob("*/eval/results.json"))
    assert [p.read_text(encoding="utf-8") for p in moved] == ["0", "1"]


HOLD = textwrap.dedent("""
    import sys, time
    from teams_rl.core.guard import output_lock
    with output_lock(sys.argv[1], "synthesize"):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_process_on_the_same_folder_is_refused(seeds_file, tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "teams_rl.synthesize",
                "--dataset_name",
                str(seeds_file),
                "--output_dir",
                str(out),
                "--depth",
                "1",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"another `teams-rl synthesize` (pid {holder.pid})" in lines[0], proc.stderr
    assert not (out / "dataset").exists()
    with output_lock(out, "synthesize"):  # a dead holder leaves no lock behind
        pass
