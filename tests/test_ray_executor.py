"""`teams-rl synthesize --executor ray`: the shards as Ray tasks on one local Ray instance (scripted LLMs, and once the
embedded model) give the single-process run's rows; a killed worker is retried and resumes from its shard's ledger;
budgets are split; user errors stay one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from teams_rl.cli import main as cli_main  # noqa: E402
from teams_rl.core.errors import TeamsRLError  # noqa: E402
from teams_rl.env.dataset import load_rows  # noqa: E402
from teams_rl.evaluate.dataset_metrics import query_counts  # noqa: E402
from teams_rl.llm.tables import run_totals  # noqa: E402
from teams_rl.synthesize import run as synth_mod  # noqa: E402
from teams_rl.synthesize.shards import budget_share  # noqa: E402
from tests.scripted import make_backend  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPTED = "tests.scripted:make_backend"
HELPERS = "tests.test_ray_executor"  # the backend factories below, as a worker imports them
SEEDS = [{"id": f"t{i:02d}", "instruction": f"Explain idea number {i} to a beginner."} for i in range(12)]
KILL_AFTER = 3  # generate calls a worker answers before it dies (after its first batch is in the ledger)
HELPERS_ENV = "TEAMS_RL_TEST_RAY_DIR"  # where the helper backends below keep their marker files


@pytest.fixture(scope="module")
def ray_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ray-helpers")


@pytest.fixture(scope="module", autouse=True)
def local_ray(ray_dir):
    """One local Ray instance for the module (startup takes seconds); the executor uses it and leaves it running.
    Workers import this checkout's tests package and find the helpers' folder through the job's environment."""
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=128 * 1024**2,
        log_to_driver=False,
        logging_level="error",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), HELPERS_ENV: str(ray_dir)}},
    )
    yield
    ray.shutdown()


def dying_backend():
    """The scripted backend, except that the first worker process to have answered ``KILL_AFTER`` calls dies
    there (``os._exit``, as a kill would leave it) the first time only: a marker file says it has happened."""
    backend = make_backend()
    answer = backend.generate
    marker = Path(os.environ[HELPERS_ENV]) / "killed"

    def generate(requests):
        if backend.generate_calls >= KILL_AFTER:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return answer(requests)

    backend.generate = generate
    return backend


def refusing_backend():
    """A factory that counts its calls in a file, then fails as a user error would (an unreachable server)."""
    from teams_rl.core.errors import TeamsRLError

    with (Path(os.environ[HELPERS_ENV]) / "attempts").open("a") as f:
        f.write("attempt\n")
    raise TeamsRLError("no model server at http://nowhere:8000/v1", field="expert_model")


@pytest.fixture(scope="module")
def seeds_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    return path


def argv(seeds_file, out, *extra) -> list[str]:
    return [
        *("--dataset_name", str(seeds_file), "--output_dir", str(out), "--depth", "2", "--chunk_size", "3"),
        *("--expert_backend", "python", "--expert_model", SCRIPTED),
        *("--reviewer_backend", "python", "--reviewer_model", SCRIPTED, "--reviewer_modes", "judge_logprob:1"),
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(seeds_file, tmp_path_factory) -> dict:
    """The single-process run of the scripted recipe: its summary, rows and rejected rows by id."""
    out = tmp_path_factory.mktemp("local")
    summary = synth_mod.main(argv(seeds_file, out))
    rows, rejected, _ = load_rows(out / "dataset")
    return {"summary": summary, "rows": _by_id(rows), "rejected": _rejected(rejected)}


def _by_id(rows: list[dict]) -> dict[str, dict]:
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "duplicate ids"
    return by_id


def _rejected(rows: list[dict]) -> list:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def _calls(summary: dict) -> dict:
    """Calls paid or replayed per (role, purpose), whatever process made them."""
    return {(c["role"], c["purpose"]): c["new"] + c["cached"] for c in summary["calls"]}


def test_ray_shards_give_the_single_process_rows_with_a_ledger_each(seeds_file, tmp_path, reference):
    run = tmp_path / "run"
    summary = synth_mod.main(argv(seeds_file, run, "--executor", "ray", "--num_shards", "4"))
    rows, rejected, saved = load_rows(run / "dataset")
    assert _by_id(rows) == reference["rows"]  # every field of every row: the scripted backend has no timings
    assert _rejected(rejected) == reference["rejected"]
    assert summary["rows"] == len(rows) == reference["summary"]["rows"] > 0
    assert summary["steps"] == reference["summary"]["steps"] == len(SEEDS) * 2
    assert summary["eliminated"] == reference["summary"]["eliminated"]
    assert summary["seeds_done"] == summary["seeds_total"] == len(SEEDS)
    assert _calls(summary) == _calls(reference["summary"])  # the shards' calls summed
    assert all(c["cached"] == 0 for c in summary["calls"])
    for i in range(4):
        assert (run / "shards" / f"{i}-of-4" / "ledger.sqlite").is_file()
        assert (run / "config" / f"synthesize-shard-{i}-of-4.yaml").is_file()
    assert not (run / "ledger.sqlite").exists()  # the manual --shard path's shared ledger is not used
    # the merged folder reads as a merge: the card and the metrics find each shard's calls (and `ledger`, each ledger)
    assert len(saved["merged_from"]) == len(saved["shards"]) == 4 and saved["duplicates_dropped"] == 0
    per_role = query_counts(len(rows), saved, None)["synthesis"]
    assert per_role == query_counts(len(rows), reference["summary"], None)["synthesis"]
    totals, _ = run_totals(run)
    assert totals["expert"].calls == sum(n for (role, _), n in _calls(summary).items() if role == "expert")

    again = synth_mod.main(argv(seeds_file, run, "--executor", "ray", "--num_shards", "4"))
    assert all(c["new"] == 0 for c in again["calls"]) and _calls(again) == _calls(summary)  # resumed, all cached
    assert _by_id(load_rows(run / "dataset")[0]) == reference["rows"]


def test_a_killed_worker_is_retried_and_resumes_from_its_shard_ledger(seeds_file, tmp_path, ray_dir, reference):
    run = tmp_path / "run"
    summary = synth_mod.main(
        argv(seeds_file, run, "--executor", "ray", "--num_shards", "4", "--expert_model", f"{HELPERS}:dying_backend")
    )
    assert (ray_dir / "killed").exists()  # a worker did die
    retried = [s for s in summary["shard_summaries"] if any(c["cached"] for c in s["calls"])]
    assert len(retried) == 1, [s["calls"] for s in summary["shard_summaries"]]
    assert _by_id(load_rows(run / "dataset")[0]) == reference["rows"]
    # what the dead worker had finished was answered by its ledger on the retry, not paid again
    paid = sum(c["new"] + c["cached"] for c in summary["calls"])
    assert paid == sum(c["new"] for c in reference["summary"]["calls"])


def test_role_budgets_are_split_so_the_whole_run_keeps_them(seeds_file, tmp_path):
    run = tmp_path / "run"
    # one seed per chunk costs at most 2 rewrites + 2 answers: each share (5, 5, 4, 4) finishes a seed, not all
    budget = ("--chunk_size", "1", "--expert_max_calls", "18")
    summary = synth_mod.main(argv(seeds_file, run, "--executor", "ray", "--num_shards", "4", *budget))
    assert summary["stopped"] and "expert" in summary["stopped"]
    totals, _ = run_totals(run)
    assert 0 < totals["expert"].calls <= 18
    shares = [budget_share(18, i, 4) for i in range(4)]
    assert shares == [5, 5, 4, 4]
    for i, (shard, share) in enumerate(zip(summary["shard_summaries"], shares, strict=True)):
        assert sum(c["new"] for c in shard["calls"] if c["role"] == "expert") <= share
        assert f"expert_max_calls: {share}\n" in (run / "config" / f"synthesize-shard-{i}-of-4.yaml").read_text()
    assert "expert_max_calls: 18\n" in (run / "config" / "synthesize.yaml").read_text()  # the run's own recipe
    assert len(load_rows(run / "dataset")[0]) == summary["rows"] > 0  # each shard kept what it finished
    assert budget_share(None, 0, 4) is None and budget_share(2, 3, 4) == 0
    assert sum(budget_share(0.1, i, 3, whole=False) for i in range(3)) == pytest.approx(0.1, abs=1e-15)


def test_a_changed_recipe_is_refused_and_its_stale_shards_superseded_once_the_run_is_claimed(seeds_file, tmp_path):
    from teams_rl.core.errors import TeamsRLError
    from teams_rl.core.guard import move_aside

    run, on_ray = tmp_path / "run", ("--executor", "ray", "--num_shards", "2")
    synth_mod.main(argv(seeds_file, run, *on_ray))
    with pytest.raises(TeamsRLError, match="another configuration"):  # the merged result guards the folder
        synth_mod.main(argv(seeds_file, run, *on_ray, "--depth", "1"))
    # what `teams-rl run --redo synthesize` does: the merged result and its recipe move aside, the shards stay
    move_aside(run, [run / "dataset", run / "config" / "synthesize.yaml"])
    summary = synth_mod.main(argv(seeds_file, run, *on_ray, "--depth", "1"))
    assert summary["steps"] == len(SEEDS)  # depth 1, made anew: no shard refused to run
    assert len(list((run / "superseded").glob("*/shards/*-of-2/dataset"))) == 2  # moved, never deleted


def test_pipeline_synthesize_overrides_put_both_synthesis_stages_on_ray(tmp_path, monkeypatch):
    """No pipeline key of its own: `synthesize_overrides: [executor=ray, num_shards=4]` reaches the synthesize and
    the random-baseline commands as flags, which parse."""
    from teams_rl.pipeline.plan import PipelineArguments, plan
    from teams_rl.pipeline.validate import parse_stage, validate

    monkeypatch.chdir(ROOT)
    args = PipelineArguments(
        run_dir=str(tmp_path / "run"),
        stages=["synthesize", "baseline"],
        synthesize_recipe="recipes/smollm2-135m/synthesize/config_random.yaml",
        synthesize_overrides=["executor=ray", "num_shards=4", "ray_address=auto"],
    )
    stages = plan(args)
    validate(stages)
    assert [s.name for s in stages] == ["synthesize", "baseline"]
    for stage in stages:
        command = stage.commands[0]
        parsed = parse_stage(stage.name, command[command.index("--config") :])[1]
        assert (parsed.executor, parsed.num_shards, parsed.ray_address) == ("ray", 4, "auto")

    args.synthesize_overrides = ["executor=ray", "shard=0/2"]  # refused when the pipeline is checked, not mid-run
    with pytest.raises(TeamsRLError) as err:
        validate(plan(args))
    assert err.value.field == "shard" and "executor ray runs every shard itself" in err.value.message


def _one_line_error(capsys) -> str:
    """The error line (the one bar's last state may be above it, as in a local run), with no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err and "RayTaskError" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    ("extra", "field"),
    [(("--executor", "ray", "--num_shards", "2", "--shard", "0/2"), "shard"), (("--num_shards", "2"), "num_shards")],
    ids=["ray-and-shard", "shards-without-ray"],
)
def test_contradicting_executor_keys_are_one_line_and_exit_2(seeds_file, tmp_path, capsys, extra, field):
    code = cli_main(["synthesize", *argv(seeds_file, tmp_path / "run", *extra)])
    assert code == 2
    assert f"{field}: " in _one_line_error(capsys)
    assert not (tmp_path / "run" / "config").exists()  # refused before anything was written


def test_a_user_error_in_a_task_is_its_one_line_and_never_retried(seeds_file, tmp_path, ray_dir, capsys):
    missing = tmp_path / "no-such-seeds.jsonl"
    code = cli_main(
        ["synthesize", *argv(missing, tmp_path / "a", "--executor", "ray", "--num_shards", "2")],
    )
    assert code == 2 and str(missing) in _one_line_error(capsys)

    refusing = ("--expert_model", f"{HELPERS}:refusing_backend", "--executor", "ray")
    code = cli_main(["synthesize", *argv(seeds_file, tmp_path / "b", *refusing)])
    assert code == 2 and "expert_model: no model server" in _one_line_error(capsys)
    assert (ray_dir / "attempts").read_text().count("attempt") == 1  # one shard, one attempt: Ray did not retry it


def test_embedded_model_two_ray_shards_equal_the_local_run(tmp_path, smollm2_dir):
    recipe = str(ROOT / "recipes" / "smollm2-135m" / "synthesize" / "config_random.yaml")
    tiny = ["--max_seeds", "4", "--depth", "1", "--expert_max_new_tokens", "24", "--rewrite_max_new_tokens", "48"]
    tiny += ["--drop_truncated_responses", "false"]  # 24-token answers are cut: keep them, shards must agree on rows
    local = synth_mod.main(["--config", recipe, *tiny, "--output_dir", str(tmp_path / "local")])
    sharded = synth_mod.main(
        ["--config", recipe, *tiny, "--output_dir", str(tmp_path / "ray"), "--executor", "ray", "--num_shards", "2"]
    )
    local_rows = _by_id(load_rows(tmp_path / "local" / "dataset")[0])
    ray_rows = _by_id(load_rows(tmp_path / "ray" / "dataset")[0])
    assert ray_rows.keys() == local_rows.keys() and local_rows
    for key, row in local_rows.items():  # the same texts; a reviewer's float32 score may differ in its 6th digit
        # (its batch mates, fewer in a shard, change the order of the sums), not enough to flip a threshold here
        floats = {k for k, v in row.items() if isinstance(v, float)}
        assert {k: v for k, v in ray_rows[key].items() if k not in floats} == {
            k: v for k, v in row.items() if k not in floats
        }
        assert {k: ray_rows[key][k] for k in floats} == pytest.approx({k: row[k] for k in floats}, rel=1e-4), key
    assert sharded["rows"] == local["rows"] and sharded["eliminated"] == local["eliminated"]
    assert _calls(sharded) == _calls(local)


def test_cli_runs_the_ray_executor_end_to_end_and_prints_the_tables(seeds_file, tmp_path):
    config = tmp_path / "synth.yaml"
    config.write_text(
        "\n".join(
            [
                f"dataset_name: {seeds_file}",
                f"output_dir: {tmp_path / 'run'}",
                "depth: 2",
                "chunk_size: 3",
                *(f"{role}_backend: python\n{role}_model: {SCRIPTED}" for role in ("expert", "reviewer")),
                "reviewer_modes: judge_logprob:1",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # workers import tests.scripted; Ray is its own local instance
    command = [sys.executable, "-m", "teams_rl.cli", "synthesize", "--config", str(config)]
    done = subprocess.run(
        [*command, "--executor", "ray", "--num_shards", "2"], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "rows kept" in done.stdout and "LLM calls this run" in done.stdout and "dataset written to" in done.stdout
    assert "Traceback" not in done.stderr and "WARNING" not in done.stderr, done.stderr[-3000:]
    assert len(load_rows(tmp_path / "run" / "dataset")[0]) > 0

    gpu = subprocess.run(
        [*command, "--executor", "ray", "--ray_num_gpus", "64", "--output_dir", str(tmp_path / "gpu")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert gpu.returncode == 2 and "ray_num_gpus: each shard asks for 64 GPUs" in gpu.stderr, gpu.stderr[-3000:]
