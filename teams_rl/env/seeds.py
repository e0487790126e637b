"""Seed instructions: load them from JSON/JSONL/CSV/Parquet, a saved ``datasets`` folder or the Hub, and shard them."""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.seed_files import _missing, _raw_rows

logger = logging.getLogger(__name__)

# `dataset_name: builtin` names the 80 seeds shipped inside the package, wherever it is installed.
BUILTIN = "builtin"
BUILTIN_PATH = Path(__file__).parent / "data" / "seeds.jsonl"


@dataclass(frozen=True)
class Seed:
    """One instruction to evolve; ``input`` is its optional context (a paragraph, a table, code)."""

    id: str
    instruction: str
    input: str = ""
    category: str = ""  # the stratum of the held-out split; "" when the source has no category column


_Columns = tuple[str, str | None, str | None]  # the instruction, input and id column names


def _fail(source: str, message: str, line: int | None, row: int | None, field: str | None) -> TeamsRLError:
    # Formats without meaningful line numbers (JSON list, Parquet, datasets) name the row in the message instead.
    if line is None and row is not None:
        message = f"row {row}: {message}"
    return TeamsRLError(message, file=source, line=line, field=field)


def _content_id(instruction: str, input_text: str) -> str:
    return "seed-" + hashlib.sha256((instruction + "\x1f" + input_text).encode("utf-8")).hexdigest()[:12]


def _parse_row(item: Any, source: str, line: int | None, row: int, columns: _Columns, max_chars: int) -> Seed:
    instruction_column, input_column, id_column = columns

    def fail(message: str, field: str | None = instruction_column) -> TeamsRLError:
        return _fail(source, message, line, row, field)

    if not isinstance(item, dict):
        raise fail(f"row is not an object (got {type(item).__name__})", None)
    if instruction_column not in item:
        raise fail(_missing(instruction_column, item))
    instruction = item[instruction_column]
    if not isinstance(instruction, str):
        raise fail(f"instruction must be a string, got {type(instruction).__name__}")
    instruction = instruction.strip()
    if not instruction:
        raise fail("instruction is empty")
    input_text = item.get(input_column) if input_column is not None else None
    input_text = "" if input_text is None else input_text
    if not isinstance(input_text, str):
        raise fail(f"input must be a string, got {type(input_text).__name__}", input_column)
    # Input is kept verbatim (code indentation matters); only a whitespace-only input counts as none.
    input_text = input_text if input_text.strip() else ""
    size = len(instruction) + len(input_text)
    if size > max_chars:
        raise fail(f"instruction + input is {size} characters, over the limit of {max_chars} (max_chars)")

    raw_id = item.get(id_column) if id_column is not None else None
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        seed_id = _content_id(instruction, input_text)  # No id given: hash the content so it survives reordering.
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        seed_id = str(raw_id).strip()  # Integer ids from JSON/Parquet are fine; they become strings.
    else:
        raise fail(f"id must be a string or an integer, got {type(raw_id).__name__}", id_column)
    category = item.get("category")
    category = str(category).strip() if isinstance(category, (str, int)) and not isinstance(category, bool) else ""
    return Seed(id=seed_id, instruction=instruction, input=input_text, category=category)


def load_seeds(
    source: str,
    *,
    instruction_column: str = "instruction",
    input_column: str | None = "input",
    id_column: str | None = "id",
    split: str = "train",
    max_chars: int = 20_000,
    limit: int | None = None,
) -> list[Seed]:
    """Read seed instructions from ``source`` (``"builtin"``: the shipped seeds), its columns mapped onto ``Seed``.

    A missing or null input reads as ""; without an id column a row's id is a hash of its content, so ids stay
    stable when the file is reordered. Exact (instruction, input) duplicates are dropped with a warning (the first
    is kept); a repeated explicit id is an error. ``limit`` keeps the first N seeds after dedup, and rows beyond
    them are not read. The instruction is stripped; the input is kept verbatim unless it is all whitespace.
    """
    source = str(BUILTIN_PATH) if str(source) == BUILTIN else str(source)
    if limit is not None and limit < 1:
        raise TeamsRLError(f"limit must be at least 1, got {limit}", field="limit")
    seeds: list[Seed] = []
    first_seen: dict[tuple[str, str], str] = {}  # content -> where it was first seen, for the dedup warning
    id_seen: dict[str, str] = {}
    dropped: list[str] = []
    n_rows = 0
    for item, line, row in _raw_rows(source, split, instruction_column):
        n_rows += 1
        seed = _parse_row(item, source, line, row, (instruction_column, input_column, id_column), max_chars)
        where = f"line {line}" if line is not None else f"row {row}"
        key = (seed.instruction, seed.input)
        if key in first_seen:
            dropped.append(f"{where} repeats {first_seen[key]}")
            continue
        first_seen[key] = where
        if seed.id in id_seen:
            raise _fail(source, f"duplicate id '{seed.id}' (first used at {id_seen[seed.id]})", line, row, id_column)
        id_seen[seed.id] = where
        seeds.append(seed)
        if limit is not None and len(seeds) >= limit:
            break  # Stop before pulling the next row, so a bad row past the limit is never read.

    if n_rows == 0:
        raise TeamsRLError("no rows found", file=source)
    if dropped:
        shown = "; ".join(dropped[:5]) + (f"; and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        logger.warning("%s: dropped %d exact duplicate seed(s): %s", source, len(dropped), shown)
    return seeds


def shard_seeds(seeds: list[Seed], index: int, count: int) -> list[Seed]:
    """The seeds of shard ``index`` of ``count``, chosen by a hash of the id so file order does not matter."""
    if count < 1 or not 0 <= index < count:
        raise TeamsRLError(f"shard {index}/{count} is out of range (need 0 <= i < N)", field="shard")
    return [s for s in seeds if int(hashlib.sha256(s.id.encode("utf-8")).hexdigest(), 16) % count == index]


SPLITS = ("all", "train", "held_out")


def split_seeds(seeds: list[Seed], part: str, *, folds: int, fold: int, seed: int) -> list[Seed]:
    """Fold ``fold`` of ``folds`` stratified by category is ``held_out``; the other folds are ``train``.

    Within each category the seeds are shuffled (by a hash of ``seed`` and the id, so file order does not matter)
    and dealt round-robin to the folds, starting at a category-dependent fold so that small categories do not all
    land in fold 0. Every category with at least ``folds`` seeds is on both sides. Order is kept within a part.
    """
    if part not in SPLITS:
        raise TeamsRLError(f"split must be one of {', '.join(SPLITS)}, got '{part}'", field="split")
    if part == "all":
        return list(seeds)
    if folds < 2 or not 0 <= fold < folds:
        raise TeamsRLError(
            f"need split_folds >= 2 and 0 <= split_fold < split_folds, got {fold}/{folds}", field="split_fold"
        )

    def rank(text: str) -> str:
        return hashlib.sha256(f"{seed}/{text}".encode()).hexdigest()

    by_category: dict[str, list[Seed]] = {}
    for s in seeds:
        by_category.setdefault(s.category, []).append(s)
    held: set[str] = set()
    for category, members in by_category.items():
        offset = int(rank(f"category/{category}"), 16) % folds
        for i, s in enumerate(sorted(members, key=lambda m: rank(m.id))):
            if (i + offset) % folds == fold:
                held.add(s.id)
    chosen = [s for s in seeds if (s.id in held) == (part == "held_out")]
    if not chosen:
        raise TeamsRLError(
            f"the {part} split of fold {fold}/{folds} holds no seed ({len(seeds)} seeds)", field="split"
        )
    return chosen


_SHARD_RE = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"i/N"`` (0 <= i < N) into ``(i, N)``."""
    match = _SHARD_RE.fullmatch(text)
    if match is None:
        raise TeamsRLError(f"expected 'i/N' such as '0/4', got '{text}'", field="shard")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise TeamsRLError(f"'{text}' is out of range: need N >= 1 and 0 <= i < N", field="shard")
    return index, count
