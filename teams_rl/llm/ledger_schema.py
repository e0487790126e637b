"""The ledger file's layout: its three tables (calls, errors, batch_jobs), the columns added since the first
release and how an older file gets them, and how a new file is created whole under its name."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s REAL NOT NULL,
    finish_reason TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_role ON calls(role);
CREATE TABLE IF NOT EXISTS errors (
    role TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL, error TEXT NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    fingerprint TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
"""
# Columns added after the first release: a ledger written before them gets them (NULL in old rows) when opened.
ADDED_COLUMNS = (("calls", "usd", "REAL"), ("calls", "batch", "INTEGER NOT NULL DEFAULT 0"))
CALL_COLUMNS = (
    "key, role, model, kind, request, response, prompt_tokens, completion_tokens, latency_s, finish_reason, created, "
    "usd, batch"
)


def create(path: Path) -> None:
    """A new ledger appears whole (schema written, WAL mode set) under its name, never as a 0-byte file a kill
    could leave behind: built under a temp name, then hard-linked (which never replaces another process's)."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        db = sqlite3.connect(tmp)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            db.commit()
        finally:
            db.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        except OSError:  # no hard links on this file system
            if not path.exists():
                os.replace(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)


def add_columns(db: sqlite3.Connection) -> None:
    """Give a ledger written before ``ADDED_COLUMNS`` existed the columns it lacks (left uncommitted)."""
    for table, column, decl in ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            except sqlite3.OperationalError as err:
                if "duplicate column" not in str(err):  # another process added it a moment ago
                    raise
