"""Writing and merging synthesis outputs: an HF ``datasets`` folder plus JSONL, swapped in atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from teams_rl.errors import TeamsRLError

logger = logging.getLogger(__name__)

ROWS_FILE, REJECTED_FILE, SUMMARY_FILE = "rows.jsonl", "rejected.jsonl", "summary.json"


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path``: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Build a folder in a temp folder beside ``folder`` and swap it in on success: a crash at any moment leaves
    either the previous complete folder or the new one, never a mix. Yields the temp folder to write into."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _recover(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        old = folder.parent / f".{folder.name}.old-{os.getpid()}"
        if folder.exists():
            os.rename(folder, old)
        os.rename(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_dataset(folder: str | Path, rows: Sequence[dict], rejected: Sequence[dict], summary: dict) -> Path:
    """Write ``folder`` as a complete unit (see ``atomic_folder``): ``datasets`` files (``load_from_disk``),
    ``rows.jsonl``, ``rejected.jsonl`` and ``summary.json``."""
    import datasets

    with atomic_folder(folder) as tmp:
        table = datasets.Dataset.from_list(list(rows)) if rows else datasets.Dataset.from_dict({"id": []})
        table.save_to_disk(str(tmp))
        _write_jsonl(tmp / ROWS_FILE, rows)
        _write_jsonl(tmp / REJECTED_FILE, rejected)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(folder)


def _recover(folder: Path) -> None:
    """If a crash fell between the two renames, put the previous complete folder back."""
    if folder.exists():
        return
    olds = sorted(folder.parent.glob(f".{folder.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.rename(olds[-1], folder)
        logger.warning("restored %s after an interrupted write", folder)


def load_rows(folder: str | Path) -> tuple[list[dict], list[dict], dict]:
    """Rows, rejected rows and summary of a dataset folder written by ``write_dataset``."""
    folder = Path(folder)
    if not (folder / ROWS_FILE).exists():
        raise TeamsRLError("not a teams-rl dataset folder (no rows.jsonl); run synthesize first", file=str(folder))
    summary_path = folder / SUMMARY_FILE
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    return read_jsonl(folder / ROWS_FILE), read_jsonl(folder / REJECTED_FILE), summary


def merge_datasets(sources: Sequence[str | Path], out: str | Path) -> dict:
    """Join shard folders into ``out``: rows keyed by ``id``, each kept once (first seen wins), order by id."""
    rows: dict[str, dict] = {}
    rejected: dict[tuple, dict] = {}
    summaries = []
    duplicates = 0
    for source in sources:
        part_rows, part_rejected, summary = load_rows(source)
        for row in part_rows:
            if row["id"] in rows:
                duplicates += 1
                continue
            rows[row["id"]] = row
        for row in part_rejected:
            rejected.setdefault((row.get("id"), row.get("stage"), row.get("step")), row)
        summaries.append(summary)
    merged = {
        "merged_from": [str(s) for s in sources],
        "rows": len(rows),
        "duplicates_dropped": duplicates,
        "shards": summaries,
    }
    write_dataset(out, [rows[k] for k in sorted(rows)], list(rejected.values()), merged)
    return merged
