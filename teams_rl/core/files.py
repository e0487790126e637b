"""Atomic files and folders (readers see the old or the new, never half), JSONL, and file hashes.

A write that fails because of the store (a full disk, a file-size limit, a read-only folder) raises one
``TeamsRLError`` naming the file and what to do, and leaves the previous file or folder as it was."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from teams_rl.core.errors import TeamsRLError

logger = logging.getLogger(__name__)

_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)  # pyarrow's OSError carries it only in its text


def _errno(err: OSError) -> int | None:
    if err.errno is not None:
        return err.errno
    found = _ERRNO_IN_TEXT.search(str(err))
    return int(found.group(1)) if found else None


def unwritable(path: Path) -> Path:
    """The folder that refuses writes around ``path``: the nearest existing one this user cannot write."""
    existing = [f for f in (path, *path.parents) if f.is_dir()]
    return next((f for f in existing if not os.access(f, os.W_OK)), existing[0] if existing else path.parent)


def store_error(err: OSError, path: str | Path, kept: str = "") -> TeamsRLError | None:
    """The one-line user error for a write to ``path`` that the store refused (full disk, file-size limit, read-only
    folder or file system), ending with ``kept`` (what is still intact); None for any other ``OSError``."""
    path = Path(path)
    code = _errno(err)
    reason = (err.strerror or os.strerror(code)) if code else str(err)
    if code in _FULL:
        cause = {
            errno.ENOSPC: "the disk is full",
            errno.EDQUOT: "the disk quota is used up",
        }.get(code, "a file-size limit (ulimit -f) was reached, or the disk is full")
        hint = "free some space and re-run the same command"
    elif code in _DENIED:
        folder = unwritable(Path(err.filename) if isinstance(err.filename, str) else path)
        if code == errno.EROFS:
            cause, hint = "the file system is read-only", "choose an output folder on a writable disk"
        else:
            cause = f"{folder} is read-only for this user"
            hint = f"make it writable (chmod -R u+w {folder}) or choose another output folder, then re-run"
    else:
        return None
    return TeamsRLError(f"cannot write ({reason}): {cause}; {hint}" + (f"; {kept}" if kept else ""), file=str(path))


@contextmanager
def store_errors(path: str | Path, kept: str = "") -> Iterator[None]:
    """Turn a store failure inside the block into ``store_error``'s one line; other errors pass unchanged."""
    try:
        yield
    except OSError as err:
        located = store_error(err, path, kept)
        if located is None:
            raise
        raise located from None


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # no /proc: read it the racy way
    os.umask(old)
    return old


def _mode(path: Path, default: int) -> int:
    """The permissions a replaced file keeps, or the usual ones (``default`` less the umask) for a new one; temp
    files are made 0600 / 0700, which would otherwise stick to the result."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return default & ~_umask()


def _kept(path: Path) -> str:
    shown = f"{path.name}/" if path.is_dir() else path.name
    return f"the {shown} already there is unchanged" if path.exists() else "nothing was left half-written"


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds it is renamed over ``path``, else removed."""
    path = Path(path)
    with store_errors(path, _kept(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            os.chmod(tmp, _mode(path, 0o666))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, flushed to disk, and rename it over ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def swap_in(staging: str | Path, final: str | Path) -> None:
    """Replace the folder ``final`` by the complete folder ``staging``: two renames, so a crash at any moment leaves
    the previous folder (restored by ``recover``) or the new one, never a mix. A refused rename puts the previous
    folder back."""
    staging, final = Path(staging), Path(final)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    with store_errors(final, _kept(final)):
        shutil.rmtree(old, ignore_errors=True)
        moved = final.exists()
        if moved:
            os.rename(final, old)
        try:
            os.rename(staging, final)
        except OSError:
            if moved:
                os.rename(old, final)
            raise
    shutil.rmtree(old, ignore_errors=True)


def recover(folder: str | Path) -> None:
    """If a crash fell between the two renames of ``swap_in``, put the previous complete folder back."""
    folder = Path(folder)
    if folder.exists():
        return
    olds = sorted(folder.parent.glob(f".{folder.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        with store_errors(folder, f"the previous folder is still at {olds[-1]}"):
            os.rename(olds[-1], folder)
        logger.warning("restored %s after an interrupted write", folder)


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Build a folder in a temp folder beside ``folder`` and swap it in on success (see ``swap_in``).
    Yields the temp folder to write into. A full disk or a read-only place fails with one ``TeamsRLError``,
    the previous folder unchanged and no partial one left."""
    folder = Path(folder)
    with store_errors(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        recover(folder)
    with store_errors(folder, _kept(folder)):
        if folder.is_dir() and not os.access(folder, os.W_OK):  # the rename would pass, its old copy stay behind
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            yield tmp
            os.chmod(tmp, _mode(folder, 0o777))
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
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise TeamsRLError(
                    f"not a JSON line ({err.msg}): the file is damaged; re-run the stage that wrote it",
                    file=str(path),
                    line=number,
                ) from None
    return rows


def write_jsonl(path: str | Path, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
