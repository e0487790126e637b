"""``pipeline.json``: the record of which stage finished with which fingerprint, and each stage's status from it."""

from __future__ import annotations

import json
from pathlib import Path

from teams_rl.core.files import atomic_write_text
from teams_rl.core.layout import STATE_FILE
from teams_rl.pipeline.plan import Stage


def read_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"stages": {}}


def write_state(run_dir: Path, state: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def status_of(stage: Stage, state: dict) -> str:
    """done, changed (finished with another recipe or upstream), failed, interrupted, or to run."""
    entry = state["stages"].get(stage.name, {})
    if stage.note:
        return "nothing to do"
    if entry.get("status") == "done" and stage.done_marker.exists():
        return "done" if entry.get("fingerprint") == stage.fingerprint else "changed"
    if entry.get("status") == "running":  # the run lock is ours, so nobody runs it now: it was killed
        return "interrupted"
    return entry.get("status") if entry.get("status") in ("failed", "interrupted") else "to run"
