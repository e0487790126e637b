"""SFT data: load teams-rl datasets (a synthesis folder, a JSON/JSONL/CSV/Parquet file, a saved ``datasets`` folder
or a Hub id), mix several by weight, and turn every row into a conversational prompt/completion pair."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from pathlib import Path

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import sha256
from teams_rl.core.layout import ROWS_FILE
from teams_rl.core.refs import looks_like_path
from teams_rl.env.chat import to_prompt_completion
from teams_rl.env.dataset import load_rows

logger = logging.getLogger(__name__)

_FILE_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Columns:
    """Where a row keeps its instruction, optional input and answer (``input`` may be absent)."""

    instruction: str = "instruction"
    input: str = "input"
    response: str = "response"


def _hub_revision(path: str) -> str | None:
    """The commit a Hub dataset resolves to now (None offline): the card records what was trained on."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(path).sha
    except Exception:  # offline, private, or a local script: the fingerprint below still identifies the data
        return None


def load_source(config, columns: Columns, streaming: bool = False, field: str = "dataset_name"):
    """One ``trl`` ``DatasetConfig`` → (its rows as prompt/completion chats, its provenance for the model card).

    A synthesis folder is read from ``rows.jsonl`` with teams-rl's own columns; the column names apply to the
    other kinds of source. ``field`` is the recipe key that named the source, for error messages."""
    import datasets

    if streaming:
        raise TeamsRLError(
            "streaming is not supported by teams-rl sft (datasets are mixed in memory)", field="streaming"
        )
    path = Path(config.path).expanduser()
    if (path / ROWS_FILE).is_file():  # a synthesis output folder
        rows, _, summary = load_rows(path)
        if not rows:
            raise TeamsRLError("the dataset folder has no rows", file=str(path / ROWS_FILE))
        for i, row in enumerate(rows):
            for key in ("instruction", "response"):
                if not isinstance(row.get(key), str):
                    raise TeamsRLError(
                        f"row {row.get('id', i)} has no text '{key}'",
                        file=str(path / ROWS_FILE),
                        line=i + 1,
                        field=key,
                    )
        chats = [to_prompt_completion(r["instruction"], r.get("input") or "", r["response"]) for r in rows]
        info = {"kind": "teams-rl dataset", "sha256": sha256([path / ROWS_FILE]), "recipe": summary.get("recipe")}
        return _drop_empty(datasets.Dataset.from_list(chats), str(path)), {"path": str(config.path), **info}
    if path.is_file() and path.suffix.lower() in _FILE_TYPES:
        try:
            dataset = datasets.load_dataset(_FILE_TYPES[path.suffix.lower()], data_files=str(path), split="train")
        except Exception as err:  # malformed JSON/CSV/Parquet: one line naming the file, not a traceback
            raise TeamsRLError(
                f"could not read the file: {type(err).__name__}: {err}".splitlines()[0], file=str(path)
            ) from None
        info = {"kind": "file", "sha256": sha256([path])}
    elif (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[config.split]
        info = {"kind": "datasets folder", "fingerprint": dataset._fingerprint}
    elif path.exists() or looks_like_path(str(config.path)):
        what = "does not exist" if not path.exists() else "is not a dataset"
        raise TeamsRLError(
            f"{what}: expected a teams-rl dataset folder (rows.jsonl), a JSON/JSONL/CSV/Parquet file, "
            "a saved `datasets` folder or a Hub id",
            file=str(config.path),
            field=field,
        )
    else:
        try:
            dataset = datasets.load_dataset(
                config.path,
                name=config.name,
                data_dir=config.data_dir,
                data_files=config.data_files,
                split=config.split,
            )
        except Exception as err:  # unreachable Hub, unknown id, bad split: one line, not a traceback
            raise TeamsRLError(f"could not load the dataset '{config.path}': {err}", field=field) from None
        info = {"kind": "hub", "revision": _hub_revision(config.path), "fingerprint": dataset._fingerprint}
    if config.columns is not None:
        dataset = dataset.select_columns(config.columns)
    return to_chat(dataset, columns, str(config.path)), {"path": str(config.path), **info}


def _messages(turns) -> list[dict]:
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def row_to_chat(row: dict, columns: Columns = Columns(), source: str = "") -> dict | None:
    """One record → ``{"prompt": [user...], "completion": [assistant]}``: a prompt/completion pair (plain strings
    become one user and one assistant turn), a ``messages`` conversation (the last assistant turn is the
    completion) or an instruction/input/response row (teams-rl, Alpaca-like). None when it is none of these."""
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str):
            return {
                "prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": completion}],
            }
        return {"prompt": _messages(prompt), "completion": _messages(completion)}
    if "messages" in row:
        turns = _messages(row["messages"])
        if not turns or turns[-1]["role"] != "assistant":
            raise TeamsRLError("a conversation must end with an assistant turn", file=source, field="messages")
        return {"prompt": turns[:-1], "completion": turns[-1:]}
    if columns.instruction in row and columns.response in row:
        return to_prompt_completion(
            row[columns.instruction] or "", row.get(columns.input) or "", row[columns.response] or ""
        )
    return None


def to_chat(dataset, columns: Columns, source: str):
    """A dataset's rows as prompt/completion chats (``row_to_chat``), the format chosen once from its columns."""
    names = set(dataset.column_names)
    if {"prompt", "completion"} <= names:
        keep = {"prompt", "completion"}
    elif "messages" in names:
        keep = {"messages"}
    elif {columns.instruction, columns.response} <= names:
        keep = {columns.instruction, columns.input, columns.response}
    else:
        missing = columns.instruction if columns.instruction not in names else columns.response
        raise TeamsRLError(
            f"missing column '{missing}' (columns found: {', '.join(sorted(names))}); set "
            "instruction_column/input_column/response_column, or use messages or prompt/completion "
            "columns",
            file=source,
            field="response_column" if missing == columns.response else "instruction_column",
        )

    def convert(row):
        return row_to_chat({k: v for k, v in row.items() if k in keep}, columns, source)

    return _drop_empty(dataset.map(convert, remove_columns=dataset.column_names), source)


def _drop_empty(chat, source: str):
    kept = chat.filter(lambda row: bool(row["completion"][-1]["content"].strip()))
    if len(kept) < len(chat):
        logger.warning("%s: dropped %d rows with an empty answer", source, len(chat) - len(kept))
    return kept


def _shares(sizes: list[int], fractions: list[float]) -> list[int]:
    """Rows to take from each source so that source i makes up ``fractions[i]`` of the mixture (normalised) and
    no source is repeated: the mixture is as large as the scarcest source allows (``trl``'s ``fraction``)."""
    weights = [f / sum(fractions) for f in fractions]
    total = min(n / w for n, w in zip(sizes, weights, strict=True) if w > 0)
    return [min(n, round(w * total)) for n, w in zip(sizes, weights, strict=True)]


def check_mixture_entries(entries, dataset_config_type) -> None:
    """Reject a mixture entry with an unknown or missing key before ``DatasetConfig(**entry)`` raises a TypeError."""
    known = {f.name for f in fields(dataset_config_type)}
    for i, entry in enumerate(entries or []):
        if not isinstance(entry, dict):
            raise TeamsRLError(
                "each entry of `datasets` is a mapping (path, split, fraction, ...)", field=f"datasets[{i}]"
            )
        for key in entry:
            if key not in known:
                raise TeamsRLError(f"unknown key (known: {', '.join(sorted(known))})", field=f"datasets[{i}].{key}")
        if "path" not in entry:
            raise TeamsRLError("missing `path`", field=f"datasets[{i}]")


def load_mixture(script_args, mixture, columns: Columns, seed: int, want_eval: bool):
    """The train and eval sets (eval may be None) as prompt/completion chats, and each source's provenance.

    Sources come from ``datasets:`` (a weighted mixture) or, when that is empty, ``dataset_name``
    (``dataset_config`` and ``dataset_train_split`` pick a Hub dataset's subset and split). The eval set is
    ``test_split_size`` of the mixture, held out with ``seed``.
    """
    import datasets
    from trl.scripts.utils import DatasetConfig

    configs = list(mixture.datasets)
    if not configs:
        if not script_args.dataset_name:
            raise TeamsRLError(
                "set dataset_name (a teams-rl dataset folder, file or Hub id) or a `datasets:` mixture",
                field="dataset_name",
            )
        configs = [
            DatasetConfig(
                path=script_args.dataset_name, name=script_args.dataset_config, split=script_args.dataset_train_split
            )
        ]
    streaming = mixture.streaming
    keys = [f"datasets[{i}].path" for i in range(len(configs))] if mixture.datasets else ["dataset_name"]
    loaded = [load_source(c, columns, streaming, key) for c, key in zip(configs, keys, strict=True)]
    parts = [part for part, _ in loaded]
    sources = [info for _, info in loaded]
    for info, part in zip(sources, parts, strict=True):
        info["rows"] = len(part)
    fractions = [c.fraction for c in configs]
    if any(f is not None for f in fractions):
        if any(f is None for f in fractions) or any(f < 0 for f in fractions) or not sum(fractions):
            raise TeamsRLError("set a non-negative `fraction` on every mixture entry or on none", field="datasets")
        takes = _shares([len(p) for p in parts], fractions)
        parts = [p.shuffle(seed=seed).select(range(k)) for p, k in zip(parts, takes, strict=True)]
        for info, k in zip(sources, takes, strict=True):
            info["rows_used"] = k
    train = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    eval_set = None
    if mixture.test_split_size:
        try:
            split = train.train_test_split(test_size=mixture.test_split_size, seed=seed)
        except ValueError as err:
            raise TeamsRLError(f"cannot hold out an eval split: {err}", field="test_split_size") from None
        train, eval_set = split["train"], split["test"]
    elif want_eval:
        raise TeamsRLError(
            "eval_strategy is set but there is no eval split: set test_split_size (e.g. 0.1)", field="test_split_size"
        )
    if len(train) == 0:
        raise TeamsRLError("no training rows left", field="dataset_name")
    logger.info(
        "SFT data: %d train rows, %s eval rows, from %d source(s)",
        len(train),
        len(eval_set) if eval_set is not None else "no",
        len(sources),
    )
    return train, eval_set, sources
