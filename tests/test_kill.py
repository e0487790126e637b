"""A synthesis process killed with SIGKILL mid-run, then re-run: nothing lost, nothing duplicated, nothing re-paid."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from teams_rl.env.dataset import load_rows

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [{"id": f"k{i:02d}", "instruction": f"Explain idea number {i} to a beginner."} for i in range(12)]

# Synthesis with the scripted LLMs, each batch slowed down so the parent has time to kill it mid-run.
DRIVER = textwrap.dedent("""
    import sys, time
    from teams_rl.synthesize import run as synthesize
    from teams_rl.llm.factory import BackendPool
    from tests.scripted import make_backend

    backend = make_backend()
    slow = float(sys.argv[1])
    generate = backend.generate
    def slowed(requests):
        time.sleep(slow)
        return generate(requests)
    backend.generate = slowed
    BackendPool.get = lambda self, settings, role: backend
    synthesize.main(sys.argv[2:])
    print("CALLS", backend.generate_calls)
""")


def _run(seeds_file, out, slow, **popen):
    argv = [
        sys.executable,
        "-c",
        DRIVER,
        str(slow),
        "--dataset_name",
        str(seeds_file),
        "--output_dir",
        str(out),
        "--depth",
        "2",
        "--chunk_size",
        "2",
        "--reviewer_modes",
        "judge_logprob:1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def _paid_calls(ledger: Path, kind: str = "%") -> int:
    if not ledger.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM calls WHERE kind LIKE ?", (kind,)).fetchone()[0]
    except sqlite3.OperationalError:  # the table is not created yet
        return 0


def _calls_of(proc) -> int:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return int(out.split("CALLS")[-1])


def test_kill_9_mid_run_then_rerun(tmp_path):
    seeds_file = tmp_path / "seeds.jsonl"
    seeds_file.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")

    reference_calls = _calls_of(_run(seeds_file, tmp_path / "reference", 0.0))
    reference_rows = load_rows(tmp_path / "reference" / "dataset")[0]

    run_dir = tmp_path / "run"
    victim = _run(seeds_file, run_dir, 0.3)
    deadline = time.monotonic() + 60
    while _paid_calls(run_dir / "ledger.sqlite") < 10:  # some chunks done, far from all
        assert victim.poll() is None, "the run finished before it could be killed; slow it down"
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    paid_before_kill = _paid_calls(run_dir / "ledger.sqlite")
    generated_before_kill = _paid_calls(run_dir / "ledger.sqlite", "generate")
    assert paid_before_kill >= 10 and generated_before_kill < reference_calls
    assert not (run_dir / "dataset").exists()  # no half-written dataset

    rerun_calls = _calls_of(_run(seeds_file, run_dir, 0.0))
    rows = load_rows(run_dir / "dataset")[0]
    assert rows == reference_rows  # nothing lost, nothing duplicated, same content
    assert len({r["id"] for r in rows}) == len(rows)
    assert rerun_calls == reference_calls - generated_before_kill  # what the ledger held was not paid again
    assert _paid_calls(run_dir / "ledger.sqlite") == _paid_calls(tmp_path / "reference" / "ledger.sqlite")
