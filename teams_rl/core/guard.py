"""Who may write a stage's output folder: one process at a time (a lock), and a finished result is never replaced by
another configuration's unless asked (``--overwrite``, which moves the old one to ``superseded/``, never deletes)."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import atomic_write_text, recover

logger = logging.getLogger(__name__)

SUPERSEDED_DIR = "superseded"
# Keys that say where or how patiently a stage runs, not what it makes: a change in them is the same result.
_NOT_THE_RESULT = (
    "overwrite",
    "output_dir",
    "logging_dir",
    "resume_from_checkpoint",
    # where synthesis runs: a Ray run of a recipe makes the rows its single-process run makes (tested)
    "executor",
    "num_shards",
    "ray_address",
    "ray_num_cpus",
    "ray_num_gpus",
)
# Role keys that change what a run costs or how long it waits, never which rows it makes
_NOT_THE_RESULT_SUFFIXES = ("_timeout_s", "_usd_per_mtok_in", "_usd_per_mtok_out", "_batch_discount", "_batch_poll_s")


def is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch`` (or the only process): the one that locks, checks and moves."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def output_lock(folder: str | Path, stage: str) -> Iterator[None]:
    """Hold ``<folder>/.<stage>.lock`` while the block runs; a second process asking for it is refused at once.
    The kernel drops the lock when its process dies, so a killed run never leaves the folder locked."""
    if not is_main_process():
        yield
        return
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = (folder / f".{stage}.lock").open("a+")
    except OSError as err:
        raise TeamsRLError(f"cannot write here: {err.strerror}", file=str(folder)) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise TeamsRLError(
                f"another `teams-rl {stage}` ({holder}) is writing to this folder; wait for it or use another one",
                file=str(folder),
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield


def config_changes(saved: str, now: str, ignore: Sequence[str] = ()) -> list[str]:
    """``key: old -> new`` for each key whose value differs between two resolved recipes (YAML texts)."""
    before, after = yaml.safe_load(saved) or {}, yaml.safe_load(now) or {}
    skip = set(_NOT_THE_RESULT) | set(ignore)
    out = []
    for key in dict.fromkeys([*before, *after]):
        if key in skip or key.endswith(_NOT_THE_RESULT_SUFFIXES) or before.get(key) == after.get(key):
            continue
        out.append(f"{key}: {_short(before.get(key, '(unset)'))} -> {_short(after.get(key, '(unset)'))}")
    return out


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def refusal(folder: str | Path, changes: Sequence[str]) -> TeamsRLError:
    """The error for a finished result that another configuration made."""
    shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
    return TeamsRLError(
        f"holds a finished result made by another configuration ({shown}): re-run with --overwrite true to move it "
        f"to {SUPERSEDED_DIR}/ and make a new one, or choose another output folder",
        file=str(folder),
    )


def move_aside(root: str | Path, paths: Sequence[str | Path]) -> Path | None:
    """Move each existing path to ``<root>/superseded/<time>/<its path under root>``; returns that folder."""
    root = Path(root)
    present = [Path(p) for p in paths if Path(p).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = root / SUPERSEDED_DIR / stamp
    n = 1
    while target.exists():
        n += 1
        target = root / SUPERSEDED_DIR / f"{stamp}-{n}"
    for path in present:
        dest = target / path.resolve().relative_to(root.resolve())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, dest)
        logger.warning("moved %s to %s", path, dest)
    return target


def claim(
    *,
    root: str | Path,
    finished: str | Path,
    record: str | Path,
    config: str,
    outputs: Sequence[str | Path],
    overwrite: bool,
) -> bool:
    """Before a stage writes: True when ``finished`` (its done marker) exists and ``record`` (the resolved recipe
    saved beside it) says this configuration made it, so the stage may skip or resume. A result made by another
    configuration is refused, unless ``overwrite``: then ``outputs`` and ``record`` move aside and False is returned.
    On False the new ``config`` is saved as ``record`` now, so that whatever the stage finishes carries its recipe
    even if the process dies right after."""
    finished, record = Path(finished), Path(record)
    recover(finished.parent)  # a swap cut short by a kill: put the complete folder back before judging it
    if finished.exists():
        if overwrite:
            move_aside(root, [*outputs, record])
        else:
            saved = record.read_text(encoding="utf-8") if record.is_file() else None
            if saved is None:
                raise refusal(finished.parent, [f"no {record.name} says which"])
            changes = config_changes(saved, config)
            if not changes:
                return True
            raise refusal(finished.parent, changes)
    if is_main_process():
        atomic_write_text(record, config)
    return False
