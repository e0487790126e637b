"""Recipe-file checks: which keys a set of dataclasses knows and which are inert, whether each YAML value fits its
field's type and bounds (``validate_recipe``), and the line each key sits on, so an error found later in a stage
points at the recipe line that set the value at fault (``recipe_line``, ``locate``, ``located``)."""

from __future__ import annotations

import argparse
import difflib
import re
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import yaml

from teams_rl.core.bounds import check_value, resolved_fields
from teams_rl.core.errors import TeamsRLError


def inert_keys(dataclass_types: Sequence[type]) -> set[str]:
    return {f.name for dc in dataclass_types for f in fields(dc) if f.metadata.get("help") is argparse.SUPPRESS}


def _key_lines(path: Path) -> dict[str, int]:
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise TeamsRLError(
            f"invalid YAML: {getattr(err, 'problem', err)}", file=str(path), line=mark.line + 1 if mark else None
        ) from None
    except UnicodeDecodeError:
        raise TeamsRLError("recipe is not UTF-8 text", file=str(path)) from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise TeamsRLError("a recipe must be a mapping of key: value", file=str(path), line=node.start_mark.line + 1)
    return {k.value: k.start_mark.line + 1 for k, _ in node.value}


def _check_type(value, typ) -> bool:
    """Does a YAML value fit a dataclass field type (``int``, ``float | None``, ``str``, ``bool``, ``list[str]``)?"""
    if isinstance(typ, str):  # an annotation left unresolved: check each alternative of "str | None" and the like
        names = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)}
        return any(_check_type(value, names.get(part.strip(), object)) for part in typ.split("|"))
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, t) for t in typing.get_args(typ))
    if typ is type(None):
        return value is None
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if typ is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, list)
    if origin is typing.Literal:
        return value in typing.get_args(typ)
    return True  # enums and the like: TrlParser checks them


def validate_recipe(path: str | Path, dataclass_types: Sequence[type]) -> dict:
    """Load a recipe and check every key and value type, raising with the file, line and key at fault."""
    path = Path(path)
    if not path.is_file():
        raise TeamsRLError("recipe file not found", file=str(path))
    lines = _key_lines(path)
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    known, inert_names, by_name = {}, inert_keys(dataclass_types), {}
    for dc in dataclass_types:
        for f, typ in resolved_fields(dc):
            known[f.name], by_name[f.name] = typ, f
    for key, value in config.items():
        if key == "env":
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise TeamsRLError(f"unknown key{hint}", file=str(path), line=lines.get(key), field=str(key))
        if key in inert_names:
            raise TeamsRLError("does nothing in teams-rl: remove it", file=str(path), line=lines.get(key), field=key)
        if not _check_type(value, known[key]):
            raise TeamsRLError(
                f"expected {_type_name(known[key])}, got {value!r}", file=str(path), line=lines.get(key), field=key
            )
        if problem := check_value(by_name[key], known[key], value):
            raise TeamsRLError(problem, file=str(path), line=lines.get(key), field=key)
    return config


def _type_name(typ) -> str:
    return re.sub(r"\btyping\.|<class '(\w+)'>", r"\1", str(typ))


def recipe_line(recipe: str | None, key: str | None) -> int | None:
    """The line of ``key`` in ``recipe`` (None when the value came from the CLI or a default)."""
    if not recipe or not key or not Path(recipe).is_file():
        return None
    try:
        return _key_lines(Path(recipe)).get(key)
    except TeamsRLError:
        return None


def locate(err: TeamsRLError, recipe: str | None) -> TeamsRLError:
    """Point a stage's error at the recipe line that set the value at fault (``field``, or the key before its first
    ``[`` or ``.``). An error that names its own file (a seed file, a dataset) or a value that came from a
    command-line flag or a default is left as it is."""
    if err.file is None and err.field:
        line = recipe_line(recipe, re.split(r"[\[.]", err.field)[0])
        if line is not None:
            err.located(recipe, line)
    return err


@contextmanager
def located(recipe: str | None) -> Iterator[None]:
    """Run a stage body; a ``TeamsRLError`` leaving it is re-raised with its recipe file and line (see ``locate``)."""
    try:
        yield
    except TeamsRLError as err:
        raise locate(err, recipe) from None
