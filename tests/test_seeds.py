"""Tests for teams_rl.seeds: the shipped seed set, every input format, every user error, and sharding."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.seeds import Seed, load_seeds, parse_shard, shard_seeds

SHIPPED = Path(__file__).resolve().parents[1] / "teams_rl" / "env" / "data" / "seeds.jsonl"

# Rows with renamed columns; "context" is missing on row b and null on row c.
ROWS = [
    {"uid": "a", "prompt": "Name three primary colors.", "context": "Answer in one line."},
    {"uid": "b", "prompt": "Write a haiku about rain."},
    {"uid": "c", "prompt": "Sort these numbers.", "context": None},
    {"uid": "d", "prompt": "Describe this poem.", "context": "Line one\nline two, with a comma"},
]
EXPECTED = [
    Seed("a", "Name three primary colors.", "Answer in one line."),
    Seed("b", "Write a haiku about rain.", ""),
    Seed("c", "Sort these numbers.", ""),
    Seed("d", "Describe this poem.", "Line one\nline two, with a comma"),
]
MAPPING = {"instruction_column": "prompt", "input_column": "context", "id_column": "uid"}


def _hash_id(instruction: str, input_text: str = "") -> str:
    return "seed-" + hashlib.sha256((instruction + "\x1f" + input_text).encode()).hexdigest()[:12]


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _err(tmp_path: Path, name: str, content: str | bytes, **kwargs) -> TeamsRLError:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(TeamsRLError) as info:
        load_seeds(str(path), **kwargs)
    return info.value


# --- the shipped seed set --------------------------------------------------------------------------------------


def test_shipped_seeds_load_and_are_diverse():
    seeds = load_seeds(str(SHIPPED))
    raw = [json.loads(line) for line in SHIPPED.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert 70 <= len(seeds) <= 100
    assert len(seeds) == len(raw), "nothing may be dropped as a duplicate"
    assert sum(1 for s in seeds if s.input) >= 10
    assert len({s.id for s in seeds}) == len(seeds)
    assert len({(s.instruction, s.input) for s in seeds}) == len(seeds)
    assert len({s.instruction.lower() for s in seeds}) == len(seeds)
    categories = Counter(r["category"] for r in raw)
    assert len(categories) >= 10 and min(categories.values()) >= 2, categories
    for r in raw:
        assert set(r) == {"id", "category", "instruction", "input"}
        assert 5 <= len(r["instruction"].split()) <= 30, r["instruction"]


# --- formats and column mapping ---------------------------------------------------------------------------------


def _write_format(tmp_path: Path, fmt: str) -> tuple[str, dict]:
    """Write ROWS in the given format; return the source and extra load_seeds arguments."""
    if fmt == "json_list":
        path = tmp_path / "rows.json"
        path.write_text(json.dumps(ROWS), encoding="utf-8")
    elif fmt in ("json_data", "json_rows"):
        path = tmp_path / "rows.json"
        path.write_text(json.dumps({"meta": 1, fmt.split("_")[1]: ROWS}), encoding="utf-8")
    elif fmt == "jsonl":
        path = _write_jsonl(tmp_path / "rows.jsonl", ROWS)
    elif fmt == "csv":
        path = tmp_path / "rows.csv"
        path.write_text(
            "uid,prompt,context\n"
            "a,Name three primary colors.,Answer in one line.\n"
            "b,Write a haiku about rain.\n"  # a short row: the missing context reads as ""
            "c,Sort these numbers.,\n"
            'd,Describe this poem.,"Line one\nline two, with a comma"\n',
            encoding="utf-8",
        )
    elif fmt == "parquet":
        import pandas as pd

        path = tmp_path / "rows.parquet"
        pd.DataFrame(ROWS).to_parquet(path)
    else:
        import datasets

        ds = datasets.Dataset.from_list([{**r, "context": r.get("context")} for r in ROWS])
        path = tmp_path / "saved"
        if fmt == "save_to_disk":
            ds.save_to_disk(str(path))
        else:  # a DatasetDict: the rows live in the "test" split, "train" holds something else
            other = datasets.Dataset.from_list([{"uid": "z", "prompt": "Wrong split.", "context": None}])
            datasets.DatasetDict({"train": other, "test": ds}).save_to_disk(str(path))
            return str(path), {"split": "test"}
    return str(path), {}


@pytest.mark.parametrize(
    "fmt", ["json_list", "json_data", "json_rows", "jsonl", "csv", "parquet", "save_to_disk", "dataset_dict"]
)
def test_formats_load_with_column_mapping(tmp_path, fmt):
    source, extra = _write_format(tmp_path, fmt)
    assert load_seeds(source, **MAPPING, **extra) == EXPECTED


def test_dataset_dict_unknown_split(tmp_path):
    source, _ = _write_format(tmp_path, "dataset_dict")
    with pytest.raises(TeamsRLError) as info:
        load_seeds(source, **MAPPING, split="validation")
    assert info.value.field == "split" and "train" in str(info.value) and "test" in str(info.value)


def test_default_columns_and_content_hash_ids(tmp_path):
    path = _write_jsonl(
        tmp_path / "s.jsonl",
        [{"instruction": "  Add two numbers. ", "input": "2 and 3"}, {"instruction": "Say hi.", "input": None}],
    )
    seeds = load_seeds(str(path))
    assert seeds == [
        Seed(_hash_id("Add two numbers.", "2 and 3"), "Add two numbers.", "2 and 3"),
        Seed(_hash_id("Say hi."), "Say hi.", ""),
    ]
    # Ids follow the content, not the position.
    _write_jsonl(path, [{"instruction": "Say hi."}, {"instruction": "Add two numbers.", "input": "2 and 3"}])
    assert {s.id for s in load_seeds(str(path))} == {s.id for s in seeds}


def test_input_kept_verbatim_but_blank_input_is_none(tmp_path):
    code = "    x = 1\n    y = 2\n"  # indentation and the trailing newline must survive
    path = _write_jsonl(
        tmp_path / "v.jsonl",
        [{"instruction": "Explain this.", "input": code}, {"instruction": "Hi.", "input": " \n "}],
    )
    seeds = load_seeds(str(path))
    assert [s.input for s in seeds] == [code, ""] and seeds[1].id == _hash_id("Hi.")


def test_utf8_bom_is_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffinstruction,input\nSay hi.,\n".encode())
    assert load_seeds(str(path)) == [Seed(_hash_id("Say hi."), "Say hi.", "")]


def test_input_column_none_ignores_input(tmp_path):
    path = _write_jsonl(tmp_path / "s.jsonl", [{"id": 7, "instruction": "Say hi.", "input": "ignored"}])
    assert load_seeds(str(path), input_column=None) == [Seed("7", "Say hi.", "")]


def test_duplicates_dropped_with_warning_and_limit_after_dedup(tmp_path, caplog):
    rows = [
        {"instruction": "A one."},
        {"instruction": "B two.", "input": "x"},
        {"instruction": "A one."},
        {"instruction": "B two.", "input": "y"},
        {"instruction": "C three."},
    ]
    path = _write_jsonl(tmp_path / "d.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="teams_rl.seeds"):
        seeds = load_seeds(str(path))
    assert [(s.instruction, s.input) for s in seeds] == [
        ("A one.", ""),
        ("B two.", "x"),
        ("B two.", "y"),
        ("C three.", ""),
    ]
    assert "duplicate" in caplog.text and "line 3" in caplog.text
    assert [s.instruction for s in load_seeds(str(path), limit=3)] == ["A one.", "B two.", "B two."]


def test_limit_stops_before_a_bad_row(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_text('{"instruction": "Fine one."}\n{"instruction": "Fine two."}\n{broken\n', encoding="utf-8")
    assert len(load_seeds(str(path), limit=2)) == 2
    with pytest.raises(TeamsRLError):
        load_seeds(str(path))


def test_duplicate_explicit_ids_are_an_error(tmp_path):
    path = _write_jsonl(
        tmp_path / "ids.jsonl", [{"id": "x", "instruction": "One."}, {"id": "x", "instruction": "Two."}]
    )
    with pytest.raises(TeamsRLError) as info:
        load_seeds(str(path))
    assert str(info.value).startswith(f"{path}:2: id: duplicate id 'x'") and "line 1" in str(info.value)


# --- errors: file, line and field -------------------------------------------------------------------------------


def test_malformed_jsonl_line(tmp_path):
    err = _err(tmp_path, "bad.jsonl", '{"instruction": "Ok."}\n\n{"instruction": oops}\n')
    assert ":3: " in str(err) and "bad.jsonl" in str(err) and "invalid JSON" in str(err)


def test_malformed_json_file(tmp_path):
    err = _err(tmp_path, "bad.json", '[\n  {"instruction": "Ok."},\n  {"instruction": }\n]')
    assert "bad.json:3: " in str(err) and "invalid JSON" in str(err)


def test_json_not_a_list(tmp_path):
    err = _err(tmp_path, "obj.json", '{"items": []}')
    assert "obj.json: " in str(err) and "'data'" in str(err)


def test_row_not_an_object(tmp_path):
    err = _err(tmp_path, "rows.jsonl", '{"instruction": "Ok."}\n["a", "list"]\n')
    assert str(err) == f"{tmp_path / 'rows.jsonl'}:2: row is not an object (got list)"
    err = _err(tmp_path, "rows.json", '[{"instruction": "Ok."}, "text"]')
    assert err.line is None and "rows.json: row 2: row is not an object" in str(err)


def test_missing_instruction_column_jsonl(tmp_path):
    err = _err(
        tmp_path, "m.jsonl", '{"prompt": "Ok."}\n{"question": "Hm.", "context": ""}\n', instruction_column="prompt"
    )
    assert "m.jsonl:2: prompt: missing column 'prompt'" in str(err) and "question, context" in str(err)


def test_missing_instruction_column_csv_header(tmp_path):
    err = _err(tmp_path, "m.csv", "question,context\nWhat?,x\n")
    assert "m.csv:1: instruction: missing column 'instruction'" in str(err) and "question, context" in str(err)


def test_missing_instruction_column_parquet(tmp_path):
    import pandas as pd

    path = tmp_path / "m.parquet"
    pd.DataFrame([{"question": "What?"}]).to_parquet(path)
    with pytest.raises(TeamsRLError) as info:
        load_seeds(str(path))
    assert str(info.value) == f"{path}: instruction: row 1: missing column 'instruction'; columns found: question"


def test_instruction_not_a_string(tmp_path):
    err = _err(tmp_path, "n.jsonl", '{"instruction": "Ok."}\n{"instruction": 42}\n')
    assert "n.jsonl:2: instruction: instruction must be a string, got int" in str(err)


def test_empty_instruction_csv_line_after_multiline_field(tmp_path):
    # The bad row itself spans lines 6-7: the error names the line where it starts.
    content = 'id,instruction,input\n1,Explain this.,"first\nsecond\nthird"\n2,Fine.,\n3,   ,"x\ny"\n'
    err = _err(tmp_path, "e.csv", content)
    assert "e.csv:6: instruction: instruction is empty" in str(err)


def test_too_long(tmp_path):
    err = _err(
        tmp_path,
        "long.jsonl",
        '{"instruction": "Ok."}\n{"instruction": "Hi.", "input": "' + "x" * 60 + '"}\n',
        max_chars=50,
    )
    assert "long.jsonl:2: instruction: " in str(err) and "63 characters" in str(err) and "50" in str(err)


@pytest.mark.parametrize("name", ["bad.jsonl", "bad.csv", "bad.json"])
def test_non_utf8_reports_line(tmp_path, name):
    lines = {
        "bad.jsonl": [b'{"instruction": "One."}', b'{"instruction": "Two."}', b'{"instruction": "Caf\xe9."}'],
        "bad.csv": [b"instruction,input", b"One.,", b"Caf\xe9.,"],
        "bad.json": [b"[", b'{"instruction": "One."},', b'{"instruction": "Caf\xe9."}', b"]"],
    }[name]
    err = _err(tmp_path, name, b"\n".join(lines) + b"\n")
    assert err.line == 3 and err.field is None and str(err).startswith(f"{tmp_path / name}:3: ")
    assert "UTF-8" in str(err)


@pytest.mark.parametrize("name,content", [("e.jsonl", "\n\n"), ("e.json", "  "), ("e.csv", ""), ("e.parquet", b"")])
def test_empty_file(tmp_path, name, content):
    err = _err(tmp_path, name, content)
    assert err.file == str(tmp_path / name) and ("empty" in str(err) or "Parquet" in str(err))


@pytest.mark.parametrize(
    "name,content", [("n.json", "[]"), ("n.csv", "instruction,input\n"), ("n.json", '{"data": []}')]
)
def test_no_rows(tmp_path, name, content):
    err = _err(tmp_path, name, content)
    assert str(err) == f"{tmp_path / name}: no rows found"


def test_file_not_found(tmp_path):
    # Sources that look like paths (a data suffix, a leading "/" or ".", two slashes) are not Hub names.
    sources = [str(tmp_path / "missing.jsonl"), str(tmp_path / "nodir" / "seeds"), "missing.parquet", "./seeds"]
    for source in sources + ["a/b/c"]:
        with pytest.raises(TeamsRLError) as info:
            load_seeds(source)
        assert str(info.value) == f"{source}: file not found"


def test_bad_limit():
    with pytest.raises(TeamsRLError) as info:
        load_seeds(str(SHIPPED), limit=0)
    assert info.value.field == "limit"


# --- datasets.load_dataset fall-through --------------------------------------------------------------------------


def test_unknown_extension_and_names_go_to_load_dataset(tmp_path, monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(source, split):
        calls.append((source, split))
        return datasets.Dataset.from_list([{"text": "Hello there."}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    tsv = tmp_path / "rows.txt"  # a suffix teams-rl does not read itself
    tsv.write_text("text\nHello there.\n", encoding="utf-8")
    assert load_seeds(str(tsv), instruction_column="text", split="dev") == [
        Seed(_hash_id("Hello there."), "Hello there.", "")
    ]
    assert load_seeds("someone/some-seeds", instruction_column="text")[0].instruction == "Hello there."
    assert calls == [(str(tsv), "dev"), ("someone/some-seeds", "train")]
    # A missing column in a Hub dataset names the row, since there is no line.
    with pytest.raises(TeamsRLError) as info:
        load_seeds("someone/some-seeds")
    assert str(info.value).startswith("someone/some-seeds: instruction: row 1: missing column")


def test_load_dataset_failure_is_wrapped(monkeypatch):
    import datasets

    def broken(source, split):
        raise ConnectionError("Couldn't reach\n'huggingface.co'")

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(TeamsRLError) as info:
        load_seeds("someone/some-seeds")
    msg = str(info.value)
    assert msg.startswith("someone/some-seeds: ") and "Hub" in msg and "local" in msg and "\n" not in msg
    assert "ConnectionError" in msg


def test_offline_unknown_hub_name_fails_fast(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the variables at import time, which may already have happened in this process.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    monkeypatch.chdir(tmp_path)
    name = "teams-rl-tests/no-such-dataset-7f3a"
    start = time.monotonic()
    with pytest.raises(TeamsRLError) as info:
        load_seeds(name)
    assert time.monotonic() - start < 10
    assert str(info.value).startswith(f"{name}: cannot load '{name}'") and "Hub" in str(info.value)


# --- sharding -------------------------------------------------------------------------------------------------


def test_shard_seeds_partition_is_stable():
    seeds = load_seeds(str(SHIPPED))
    shards = [shard_seeds(seeds, i, 3) for i in range(3)]
    ids = [{s.id for s in shard} for shard in shards]
    assert all(ids) and not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert set().union(*ids) == {s.id for s in seeds} and sum(map(len, shards)) == len(seeds)
    shuffled = seeds[:]
    random.Random(1).shuffle(shuffled)
    assert [{s.id for s in shard_seeds(shuffled, i, 3)} for i in range(3)] == ids
    # The documented rule, so other tools can reproduce a shard.
    for s in seeds:
        assert s.id in ids[int(hashlib.sha256(s.id.encode()).hexdigest(), 16) % 3]
    assert shard_seeds(seeds, 0, 1) == seeds


@pytest.mark.parametrize("text,expected", [("0/1", (0, 1)), ("2/3", (2, 3)), (" 1 / 4 ", (1, 4)), ("9/10", (9, 10))])
def test_parse_shard(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["", "1", "3/3", "4/3", "0/0", "-1/3", "a/b", "1/2/3", "1.0/2"])
def test_parse_shard_rejects(text):
    with pytest.raises(TeamsRLError) as info:
        parse_shard(text)
    assert info.value.field == "shard" and str(info.value).startswith("shard: ")


@pytest.mark.parametrize(
    ("name", "content", "where", "phrase"),
    [
        ("r.csv", "instruction,input\nOne.,a\nTwo.,b,extra\nThree.,c\n", "r.csv:3", "3 cells but the header has 2"),
        ("r.tsv", "instruction\tinput\nOne.\ta\nTwo.\tb\tc\n", "r.tsv:3", "invalid TSV: 3 cells"),
        ("q.csv", 'instruction,input\nOne.,a\n"Two, never closed.,b\nThree.,c\n', "q.csv:3", "never closed"),
        ("q.tsv", 'instruction\tinput\n"Open\tx\n', "q.tsv:2", "invalid TSV: a quote"),
        ("h.csv", '"instruction,input\nOne.,a\n', "h.csv:1", "never closed"),
    ],
)
def test_ragged_rows_and_unterminated_quotes_name_their_line(tmp_path, name, content, where, phrase):
    err = _err(tmp_path, name, content)
    assert f"/{where}: " in str(err) and phrase in str(err)


def test_tsv_seeds_are_read_with_their_lines(tmp_path):
    path = tmp_path / "s.tsv"
    path.write_text('instruction\tinput\nSort these.\t"3, 1,\n2"\nName a color.\n', encoding="utf-8")
    seeds = load_seeds(str(path))
    assert [(s.instruction, s.input) for s in seeds] == [("Sort these.", "3, 1,\n2"), ("Name a color.", "")]
