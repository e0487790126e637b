"""Atomic files and folders (readers see the old or the new, never half), JSONL, and file hashes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds it is renamed over ``path``, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path`` and rename it over ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def swap_in(staging: str | Path, final: str | Path) -> None:
    """Replace the folder ``final`` by the complete folder ``staging``: two renames, so a crash at any moment leaves
    the previous folder (restored by ``recover``) or the new one, never a mix."""
    staging, final = Path(staging), Path(final)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def recover(folder: str | Path) -> None:
    """If a crash fell between the two renames of ``swap_in``, put the previous complete folder back."""
    folder = Path(folder)
    if folder.exists():
        return
    olds = sorted(folder.parent.glob(f".{folder.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.rename(olds[-1], folder)
        logger.warning("restored %s after an interrupted write", folder)


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Build a folder in a temp folder beside ``folder`` and swap it in on success (see ``swap_in``).
    Yields the temp folder to write into."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        yield tmp
        swap_in(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256(paths: str | Path | Iterable[str | Path]) -> str:
    """The sha256 of a file, or of several files' bytes in sorted path order."""
    files = [Path(paths)] if isinstance(paths, str | Path) else sorted(Path(p) for p in paths)
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSONL file; none when it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
