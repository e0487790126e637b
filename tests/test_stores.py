"""When the store fails: a corrupt or empty ledger, a read-only run folder or dataset/, a disk that fills mid-write.
Each gives one `error:` line naming the file and what to do (exit 2, no traceback); what was committed stays intact
and the next run, once the cause is gone, resumes from it. Runs go through the CLI in a fresh process with the
scripted LLMs (`backend: python`); a full disk is a file-size limit (RLIMIT_FSIZE, SIGXFSZ ignored), a read-only
folder is chmod a-w (root drops CAP_DAC_OVERRIDE for the run, else it could write anyway)."""

import ctypes
import hashlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import atomic_folder, atomic_write_text, read_jsonl
from teams_rl.llm.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
SCRIPTED = "tests.scripted:make_backend"
LONG = " ".join(f"word{i}" for i in range(700))  # long seeds: the dataset files outgrow SQLite's 32 KiB -shm file
SEEDS = [{"id": f"s{i}", "instruction": f"{i} Explain in great detail {LONG}"} for i in range(6)]
FILE_LIMIT_LEDGER = 100_000  # the run's WAL outgrows it after a few batches
FILE_LIMIT_DATASET = 45_000  # above the -shm file, below the dataset's arrow and rows.jsonl files


def _drop_override() -> None:
    """In the child, before exec: as root, give up the capabilities that ignore file modes."""
    if os.geteuid() == 0:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
            if prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone from the exec'd program's permitted set
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _preexec(file_limit: int | None, honour_modes: bool):
    def run() -> None:
        if file_limit is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        if honour_modes:
            _drop_override()

    return run


def _synth(seeds: Path, out: Path, *, file_limit: int | None = None, honour_modes: bool = False):
    argv = [
        sys.executable,
        "-m",
        "teams_rl.cli",
        "synthesize",
        *("--dataset_name", seeds, "--output_dir", out, "--depth", 2, "--chunk_size", 2),
        *("--expert_backend", "python", "--expert_model", SCRIPTED),
        *("--reviewer_backend", "python", "--reviewer_model", SCRIPTED, "--reviewer_modes", "judge_logprob:1"),
        # no embedding screens (no model to load); long seeds must not count as shrunk
        *("--screen_min_similarity", 0, "--screen_breadth_min_similarity", 0, "--screen_min_relevance", 0),
        *("--screen_min_novelty", 0),
        *("--screen_language", "none", "--screen_min_length_ratio", 0),
    ]
    return subprocess.run(
        [str(a) for a in argv],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_preexec(file_limit, honour_modes),
    )


def _one_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _keys(ledger: Path) -> set[str]:
    with sqlite3.connect(ledger) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {k for (k,) in db.execute("SELECT key FROM calls")}


def _new_calls(run: Path) -> int:
    summary = json.loads((run / "dataset" / "summary.json").read_text(encoding="utf-8"))
    return sum(c["new"] for c in summary["calls"])


def _leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith(".dataset"))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seeds") / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(seeds, tmp_path_factory) -> dict:
    """One finished run: each test works on a copy of it."""
    run = tmp_path_factory.mktemp("base") / "run"
    done = _synth(seeds, run)
    assert done.returncode == 0, done.stderr
    return {
        "run": run,
        "rows": read_jsonl(run / "dataset" / "rows.jsonl"),
        "files": _files(run / "dataset"),
        "keys": _keys(run / "ledger.sqlite"),
    }


@pytest.fixture
def run(base, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(base["run"], copy, symlinks=True)
    yield copy
    for folder in (copy, copy / "dataset"):  # let pytest clean up
        if folder.exists():
            folder.chmod(0o755)


@pytest.fixture(scope="module")
def modes_hold(tmp_path_factory) -> None:
    """Skip where this user writes into a chmod a-w folder anyway (root that cannot drop its override)."""
    folder = tmp_path_factory.mktemp("probe")
    folder.chmod(0o555)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", f"open({str(folder / 'x')!r}, 'w')"],
            capture_output=True,
            preexec_fn=_preexec(None, True),
        )
    except subprocess.SubprocessError:
        probe = None
    finally:
        folder.chmod(0o755)
    if probe is None or probe.returncode == 0:
        pytest.skip("this user can write into read-only folders here")


def _resumes(seeds: Path, run: Path, base: dict, recorded: set[str]) -> None:
    """The next run finishes with the reference rows and pays only for the calls the ledger did not hold."""
    done = _synth(seeds, run)
    assert done.returncode == 0, done.stderr
    assert read_jsonl(run / "dataset" / "rows.jsonl") == base["rows"]
    after = _keys(run / "ledger.sqlite")
    assert recorded <= after and after == base["keys"]
    assert _new_calls(run) == len(after - recorded)  # nothing recorded was paid for twice


# ---------------------------------------------------------------------------------------------- corrupt ledger


def test_a_truncated_ledger_is_one_error_and_moving_it_aside_starts_over(seeds, run, base):
    ledger = run / "ledger.sqlite"
    os.truncate(ledger, ledger.stat().st_size // 2)
    damaged = ledger.read_bytes()
    line = _one_error(_synth(seeds, run))
    assert str(ledger) in line and "corrupt" in line and f"mv {ledger} {ledger}.corrupt" in line
    assert ledger.read_bytes() == damaged  # evidence left as it was
    assert _files(run / "dataset") == base["files"]  # the dataset it made is untouched

    ledger.rename(f"{ledger}.corrupt")  # what the message says to do
    done = _synth(seeds, run)
    assert done.returncode == 0, done.stderr
    assert read_jsonl(run / "dataset" / "rows.jsonl") == base["rows"]
    assert _new_calls(run) == len(base["keys"])  # a new ledger: every call paid again, as the message said


def _ledger_with_calls(path: Path, n: int = 40) -> None:
    ledger = Ledger(path)
    payload, answer = {"p": "x" * 500}, {"text": "y" * 500}
    ledger.put_many([(f"k{i}", "expert", "m", "generate", payload, answer, 1, 1, 0.1, "stop") for i in range(n)])
    ledger.close()


@pytest.mark.parametrize("damage", ["half", "header", "empty"])
def test_a_damaged_ledger_refuses_to_open_and_is_left_as_it_was(tmp_path, damage):
    path = tmp_path / "ledger.sqlite"
    _ledger_with_calls(path)
    if damage == "half":
        os.truncate(path, path.stat().st_size // 2)
    elif damage == "header":
        with open(path, "r+b") as fh:
            fh.write(b"garbage!" * 8)
    else:
        path.write_bytes(b"")
    before = path.read_bytes()
    with pytest.raises(TeamsRLError) as info:
        Ledger(path)
    assert info.value.file == str(path) and "corrupt" in str(info.value) and "mv " in str(info.value)
    assert "\n" not in str(info.value)
    assert path.read_bytes() == before


def test_corruption_found_mid_run_is_the_same_one_error(tmp_path):
    path = tmp_path / "ledger.sqlite"
    _ledger_with_calls(path, n=200)
    with open(path, "r+b") as fh:  # page 1 (the schema) intact, the table's pages garbage
        fh.seek(4096 * 3)
        fh.write(os.urandom(4096 * 4))
    ledger = Ledger(path)
    with pytest.raises(TeamsRLError) as info:
        ledger.get_many([f"k{i}" for i in range(200)])
        ledger.totals()
    ledger.close()
    assert info.value.file == str(path) and "corrupt" in str(info.value)


def test_a_new_ledger_appears_whole_even_when_several_create_it_at_once(tmp_path):
    path = tmp_path / "ledger.sqlite"
    made, errors = [], []

    def make() -> None:
        try:
            made.append(Ledger(path))
        except Exception as err:  # pragma: no cover - the assertion shows it
            errors.append(err)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    made[0].put_many([("k", "expert", "m", "generate", {}, {"text": "a"}, 1, 1, 0.1, "stop")])
    assert all(led.get_many(["k"]) == {"k": {"text": "a"}} for led in made)  # one file, shared
    for led in made:
        led.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.sqlite"]  # no temp file left
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# ---------------------------------------------------------------------------------------------- read-only


def test_a_read_only_run_folder_is_one_error_then_resumes(seeds, run, base, modes_hold):
    run.chmod(0o555)
    line = _one_error(_synth(seeds, run, honour_modes=True))
    assert str(run) in line and "read-only" in line and f"chmod -R u+w {run}" in line
    run.chmod(0o755)
    assert _keys(run / "ledger.sqlite") == base["keys"] and _files(run / "dataset") == base["files"]
    _resumes(seeds, run, base, base["keys"])
    assert _new_calls(run) == 0


def test_a_read_only_dataset_folder_is_one_error_and_is_not_replaced(seeds, run, base, modes_hold):
    (run / "dataset").chmod(0o555)
    line = _one_error(_synth(seeds, run, honour_modes=True))
    assert f"{run / 'dataset'}:" in line and "read-only" in line and "unchanged" in line
    assert _files(run / "dataset") == base["files"] and _leftovers(run) == []
    (run / "dataset").chmod(0o755)
    _resumes(seeds, run, base, base["keys"])


# ---------------------------------------------------------------------------------------------- disk full


def test_a_disk_full_while_the_ledger_is_written_keeps_the_batches_before_it(seeds, base, tmp_path):
    run = tmp_path / "run"
    line = _one_error(_synth(seeds, run, file_limit=FILE_LIMIT_LEDGER))
    assert f"{run / 'ledger.sqlite'}:" in line and "free some space" in line and "not paid for again" in line
    recorded = _keys(run / "ledger.sqlite")  # whole and readable
    assert 0 < len(recorded) < len(base["keys"])  # some batches were committed, the run was cut short
    assert not (run / "dataset").exists() and _leftovers(run) == []
    _resumes(seeds, run, base, recorded)


def test_a_disk_full_while_the_dataset_is_written_keeps_the_old_dataset(seeds, run, base):
    line = _one_error(_synth(seeds, run, file_limit=FILE_LIMIT_DATASET))
    assert f"{run / 'dataset'}:" in line and "free some space" in line and "unchanged" in line
    assert _files(run / "dataset") == base["files"] and _leftovers(run) == []
    _resumes(seeds, run, base, base["keys"])
    assert _new_calls(run) == 0


# ---------------------------------------------------------------------------------------------- atomic files

WRITE_UNDER_LIMIT = textwrap.dedent("""
    import sys
    from teams_rl.core.errors import TeamsRLError
    from teams_rl.core.files import atomic_write_text
    try:
        atomic_write_text(sys.argv[1], "new " * 50_000)
    except TeamsRLError as err:
        print(err)
""")


def test_a_failed_write_leaves_the_old_file_and_no_half_file(tmp_path):
    path = tmp_path / "config" / "synthesize.yaml"
    atomic_write_text(path, "old: 1\n")
    done = subprocess.run(
        [sys.executable, "-c", WRITE_UNDER_LIMIT, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_preexec(50_000, False),
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith(f"{path}: cannot write")
    assert "synthesize.yaml already there is unchanged" in done.stdout
    assert path.read_text() == "old: 1\n"
    assert [p.name for p in path.parent.iterdir()] == ["synthesize.yaml"]


def test_written_files_and_folders_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        with atomic_folder(tmp_path / "folder") as tmp:
            (tmp / "a").write_text("a")
        private = tmp_path / "private.txt"
        private.write_text("x")
        private.chmod(0o600)
        atomic_write_text(private, "y")
    finally:
        os.umask(umask)
    assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0700
    assert private.stat().st_mode & 0o777 == 0o600  # a replaced file keeps its mode
