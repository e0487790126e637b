"""Dataset I/O: a synthesis output folder (HF ``datasets`` files plus JSONL) written as one unit, read, merged."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from teams_rl.core import secrets
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import atomic_folder, read_jsonl, write_jsonl
from teams_rl.core.layout import REJECTED_FILE, ROWS_FILE, SUMMARY_FILE


def write_dataset(folder: str | Path, rows: Sequence[dict], rejected: Sequence[dict], summary: dict) -> Path:
    """Write ``folder`` as a complete unit (see ``atomic_folder``): ``datasets`` files (``load_from_disk``),
    ``rows.jsonl``, ``rejected.jsonl`` and ``summary.json``. A full disk or a read-only folder raises one
    ``TeamsRLError`` and leaves the previous folder as it was.

    Known secrets (API keys, tokens, URL credentials) are masked: by exact value in what the models wrote (rows,
    rejected rows), by value and by shape in the summary."""
    import datasets

    values = secrets.secret_values()
    rows = secrets.mask_data(list(rows), known_only=True, values=values)
    rejected = secrets.mask_data(list(rejected), known_only=True, values=values)
    summary = secrets.mask_data(summary, values=values)
    with atomic_folder(folder) as tmp:
        table = datasets.Dataset.from_list(list(rows)) if rows else datasets.Dataset.from_dict({"id": []})
        # one shard even when empty: datasets writes no shard for 0 rows and then cannot load the folder back
        table.save_to_disk(str(tmp), num_shards=1)
        write_jsonl(tmp / ROWS_FILE, rows)
        write_jsonl(tmp / REJECTED_FILE, rejected)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return Path(folder)


def load_rows(folder: str | Path) -> tuple[list[dict], list[dict], dict]:
    """Rows, rejected rows and summary of a dataset folder written by ``write_dataset``."""
    folder = Path(folder)
    if not (folder / ROWS_FILE).exists():
        raise TeamsRLError("not a teams-rl dataset folder (no rows.jsonl); run synthesize first", file=str(folder))
    summary_path = folder / SUMMARY_FILE
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.exists() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TeamsRLError(
            f"damaged ({err}): re-run the stage that wrote this folder (its LLM calls are in the ledger)",
            file=str(summary_path),
        ) from None
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
