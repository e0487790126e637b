"""Which folders a push reads (a run folder, a synthesis or SFT folder, or the dataset / adapter folder itself), and
``hub.json``, the run folder's record of what went where."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import atomic_write_text
from teams_rl.core.layout import HUB_FILE, ROWS_FILE


@dataclass
class Run:
    """What to push: ``folder`` (a dataset folder, or an adapter/model folder inside ``sft``); ``root`` is the run
    folder around it, where ``config/``, ``ledger.sqlite``, ``plots/``, ``eval/`` and ``hub.json`` live."""

    root: Path
    folder: Path
    sft: Path | None = None


# --- Which folder ----------------------------------------------------------------------------------------------------
def _folder(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise TeamsRLError("no such folder", file=str(run_dir))
    return path


def find_dataset(run_dir: str | Path) -> Run:
    """A run folder holding ``dataset/``, or the dataset folder itself."""
    path = _folder(run_dir)
    if (path / ROWS_FILE).is_file():
        parent = path.parent
        return Run(parent if (parent / "ledger.sqlite").is_file() or (parent / "config").is_dir() else path, path)
    if (path / "dataset" / ROWS_FILE).is_file():
        return Run(path, path / "dataset")
    raise TeamsRLError(
        "no dataset here (neither rows.jsonl nor dataset/rows.jsonl): run `teams-rl synthesize` first",
        file=str(run_dir),
    )


def _has_weights(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file() or (
        (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    )


def find_model(run_dir: str | Path, merged: bool = False) -> Run:
    """A pipeline run folder (``sft/``), an SFT output folder (``adapter/``, ``model/``, ``merged/``), or the weights
    folder itself. ``merged`` picks ``merged/`` over the adapter."""
    path = _folder(run_dir)
    if _has_weights(path):
        sft = path.parent if path.name in ("adapter", "model", "merged") else None
        return Run(sft.parent if sft and sft.name == "sft" else sft or path, path, sft)
    sft = path / "sft" if (path / "sft").is_dir() else path
    for name in ("merged",) if merged else ("adapter", "model"):
        if _has_weights(sft / name):
            return Run(path, sft / name, sft)
    what = "merged/ (train with save_merged: true)" if merged else "adapter/ or model/"
    raise TeamsRLError(f"no {what} here or under sft/: run `teams-rl sft` first", file=str(run_dir))


# --- hub.json --------------------------------------------------------------------------------------------------------
def read_pushes(root: Path) -> dict:
    path = Path(root) / HUB_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def record_push(root: Path, kind: str, entry: dict) -> None:
    """Keep what was pushed where, per kind (``dataset``, ``model``), in ``ROOT/hub.json``."""
    pushes = {**read_pushes(root), kind: entry}
    atomic_write_text(Path(root) / HUB_FILE, json.dumps(pushes, indent=2, ensure_ascii=False) + "\n")


def repo_url(kind: str, repo_id: str, revision: str | None = None) -> str:
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
    return url + (f"/tree/{quote(revision, safe='')}" if revision and revision != "main" else "")
