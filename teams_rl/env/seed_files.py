"""Seed files, read row by row: a JSONL, JSON, CSV, TSV or Parquet file, a saved ``datasets`` folder or a Hub
dataset, each row yielded as it was written with the line it starts on (where the format has lines) and its row
number, and each unreadable file or row an error naming that place. Turning a row into a ``Seed`` is left to
``seeds``."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.refs import looks_like_path

_FILE_LOADERS = (".json", ".jsonl", ".csv", ".tsv", ".parquet")

# A raw row and where it came from: (row, 1-based line in the file or None, 1-based row number).
_Located = tuple[Any, int | None, int]


def _missing(column: str, found: Iterable[Any]) -> str:
    return f"missing column '{column}'; columns found: {', '.join(map(str, found)) or '(none)'}"


def _read_text(path: Path, source: str) -> str:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TeamsRLError(f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x})", file=source, line=line) from None
    text = text.removeprefix("\ufeff")  # Excel and Notepad write a BOM; it is not part of the first key.
    if not text.strip():
        raise TeamsRLError("file is empty", file=source)
    return text


def _rows_jsonl(text: str, source: str) -> Iterator[_Located]:
    row = 0
    for line_no, line in enumerate(text.split("\n"), 1):  # Not splitlines(): it also splits on U+2028 etc.
        if not line.strip():
            continue
        row += 1
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TeamsRLError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=source, line=line_no) from None
        yield item, line_no, row


def _rows_json(text: str, source: str) -> Iterator[_Located]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TeamsRLError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=source, line=exc.lineno) from None
    if isinstance(doc, dict):
        # Some exporters wrap the rows: {"data": [...]} or {"rows": [...]}.
        doc = doc.get("data", doc.get("rows", doc))
    if not isinstance(doc, list):
        raise TeamsRLError(
            f"expected a list of objects or an object with a 'data' or 'rows' list, got a JSON {type(doc).__name__}",
            file=source,
        )
    for row, item in enumerate(doc, 1):
        yield item, None, row


def _rows_csv(text: str, source: str, instruction_column: str, delimiter: str = ",") -> Iterator[_Located]:
    """Rows of a CSV (or, with a tab, TSV) file with the line each starts on. A row with more cells than the header,
    or a quote left open to the end of the file, is an error naming its line: either means the file is not what
    its writer meant, and guessing would put text in the wrong column."""
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    last_line = 0  # the line the previous row ended on
    try:
        header = next(reader)
        if instruction_column not in header:
            raise TeamsRLError(_missing(instruction_column, header), file=source, line=1, field=instruction_column)
        # A quoted field can span lines, so a row starts one line after the previous row ended.
        last_line, row = reader.line_num, 0
        for values in reader:
            start, last_line = last_line + 1, reader.line_num
            if not values:
                continue
            row += 1
            if len(values) > len(header):
                raise TeamsRLError(
                    f"invalid {kind}: {len(values)} cells but the header has {len(header)} (a stray "
                    f"{'tab' if delimiter == chr(9) else 'comma'} or an unquoted field?)",
                    file=source,
                    line=start,
                )
            # Short rows leave trailing columns out (so a missing input reads as "").
            yield dict(zip(header, values, strict=False)), start, row
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise TeamsRLError(
                f"invalid {kind}: a quote opened in the row starting here is never closed",
                file=source,
                line=last_line + 1,
            ) from None
        raise TeamsRLError(f"invalid {kind}: {exc}", file=source, line=reader.line_num) from None


def _rows_parquet(path: Path, source: str) -> Iterator[_Located]:
    import pyarrow.parquet as pq  # Imported lazily: only Parquet sources pay for it.

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt or non-Parquet files.
        raise TeamsRLError(f"not a readable Parquet file: {exc}", file=source) from None
    rows = (item for batch in table.to_batches() for item in batch.to_pylist())
    return ((item, None, row) for row, item in enumerate(rows, 1))


def _rows_datasets(target: str, source: str, split: str, from_disk: bool) -> Iterator[_Located]:
    import datasets  # Imported lazily: it is slow to import and most runs read a local file.

    if from_disk:
        try:
            ds = datasets.load_from_disk(target)
        except Exception as exc:
            raise TeamsRLError(f"cannot read the saved dataset folder: {exc}", file=source) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise TeamsRLError(
                    f"split '{split}' not in the saved dataset; splits found: {', '.join(ds) or '(none)'}",
                    file=source,
                    field="split",
                )
            ds = ds[split]
    else:
        try:
            ds = datasets.load_dataset(target, split=split)
        except Exception as exc:
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise TeamsRLError(
                f"cannot load '{source}' (split '{split}') with datasets.load_dataset: {detail}. "
                "A dataset name needs the Hugging Face Hub (or its local cache); offline, pass a local "
                ".json/.jsonl/.csv/.tsv/.parquet file or a save_to_disk folder instead",
                file=source,
            ) from None
    return ((item, None, row) for row, item in enumerate(ds, 1))


def _raw_rows(source: str, split: str, instruction_column: str) -> Iterator[_Located]:
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if path.is_dir():
        # save_to_disk writes state.json (Dataset) or dataset_dict.json (DatasetDict); any other folder is a folder
        # of data files, which load_dataset knows how to read.
        saved = (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()
        return _rows_datasets(str(path), source, split, from_disk=saved)
    if path.is_file() and suffix in _FILE_LOADERS:
        if suffix == ".parquet":
            return _rows_parquet(path, source)
        text = _read_text(path, source)
        if suffix == ".jsonl":
            return _rows_jsonl(text, source)
        if suffix == ".json":
            return _rows_json(text, source)
        return _rows_csv(text, source, instruction_column, "\t" if suffix == ".tsv" else ",")
    if not path.exists() and looks_like_path(source):
        raise TeamsRLError("file not found", file=source)
    # An existing file with another suffix, or a Hub name: let datasets decide.
    return _rows_datasets(source, source, split, from_disk=False)
