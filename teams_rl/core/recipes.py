"""Recipe parsing: flat YAML → dataclasses through TRL's ``TrlParser``, with file:line errors for bad keys."""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import field, fields, make_dataclass

import yaml

from teams_rl.core.bounds import (
    BOUND,
    BUDGET,
    COUNT,
    POSITIVE,
    PROBABILITY,
    TEMPERATURE,
    UNIT,
    Bound,
    bound_of,
    check_value,
    metadata_with,
    one_of,
    resolved_fields,
    with_metadata,
)
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.recipe_check import inert_keys, recipe_line, validate_recipe

ROLE_FIELDS: list[tuple[str, type, object, str, Bound]] = [
    (
        "model",
        str,
        "smollm2-135m",
        "Hub id, local folder, or an embedded model name (smollm2-135m; optional: qwen2.5-coder-0.5b).",
        None,
    ),
    (
        "backend",
        str,
        "transformers",
        "transformers (in-process), openai (any OpenAI-compatible server), openai_batch (the same server's Batch "
        "API: one job per batch of calls, OpenAI bills it at half price), or python (model: package.module:factory, "
        "a backend of your own).",
        one_of("transformers", "openai", "openai_batch", "python"),
    ),
    (
        "base_url",
        str | None,
        None,
        "Server URL for the openai and openai_batch backends, e.g. http://localhost:8000/v1.",
        None,
    ),
    (
        "api_key_env",
        str,
        "OPENAI_API_KEY",
        "Name of the environment variable holding the API key (never the key).",
        None,
    ),
    ("temperature", float, 0.7, "Sampling temperature; 0 means greedy.", TEMPERATURE),
    ("top_p", float, 0.95, "Nucleus sampling mass.", PROBABILITY),
    ("max_new_tokens", int, 256, "Longest completion, in tokens.", COUNT),
    (
        "batch_size",
        int,
        8,
        "Requests per forward batch (transformers) or in flight at once (openai; unused by openai_batch).",
        COUNT,
    ),
    (
        "dtype",
        str,
        "auto",
        "transformers backend weights: auto, float32, bfloat16, float16.",
        one_of("auto", "float32", "bfloat16", "float16"),
    ),
    (
        "timeout_s",
        float,
        120.0,
        "openai backend: per-request timeout in seconds (openai_batch: each upload, poll and download).",
        POSITIVE,
    ),
    ("max_calls", int | None, None, "Hard budget: most calls this role may make in the run folder.", BUDGET),
    ("max_tokens", int | None, None, "Hard budget: most tokens (prompt + completion) this role may spend.", BUDGET),
    (
        "usd_per_mtok_in",
        float | None,
        None,
        "Price in US dollars per million prompt tokens (null: unpriced; `teams-rl ledger --prices` prices a run "
        "afterwards).",
        BUDGET,
    ),
    ("usd_per_mtok_out", float | None, None, "Price in US dollars per million completion tokens.", BUDGET),
    ("batch_discount", float, 0.5, "Share of the price the openai_batch route saves (OpenAI's Batch API: 0.5).", UNIT),
    (
        "max_usd",
        float | None,
        None,
        "Hard budget: most US dollars this role may spend in the run folder (needs both prices).",
        BUDGET,
    ),
    ("batch_poll_s", float, 30.0, "openai_batch backend: seconds between two polls of a Batch job.", POSITIVE),
]


def inert(default=None):
    """A key inherited from a TRL dataclass that does nothing in teams-rl: hidden from ``--help`` and refused when a
    recipe or a command-line flag sets it, so no one is led to believe it acts."""
    return field(default=default, metadata={"help": argparse.SUPPRESS})


def role_arguments(role: str, omit: tuple[str, ...] = (), **defaults) -> type:
    """A dataclass of ``<role>_<field>`` keys (model, backend, sampling, budget) for one role: recipes stay flat.

    ``omit`` leaves keys out that another dataclass owns (the rewriter's length is the shared
    ``rewrite_max_new_tokens``)."""
    specs = []
    for name, typ, default, help_text, bound in ROLE_FIELDS:
        if name in omit:
            continue
        value = defaults.get(name, default)
        metadata = {"help": f"[{role}] {help_text}"}
        specs.append(
            (
                f"{role}_{name}",
                typ,
                field(default=value, metadata=metadata_with(metadata, bound) if bound else metadata),
            )
        )
    return make_dataclass(f"{role.capitalize()}Arguments", specs)


def role_settings(args, role: str) -> dict:
    """The ``<role>_*`` values of a parsed dataclass, with the prefix removed."""
    prefix = f"{role}_"
    return {f.name[len(prefix) :]: getattr(args, f.name) for f in fields(args) if f.name.startswith(prefix)}


def parse_args(
    dataclass_types: Sequence[type],
    argv: Sequence[str] | None = None,
    prog: str | None = None,
    description: str | None = None,
):
    """Parse ``--config recipe.yaml`` plus CLI overrides into the dataclasses (CLI wins), via TRL's ``TrlParser``.

    Returns the dataclass instances and the recipe path (or None), and records where each key came from so
    later errors can point at the recipe line.
    """
    argv = list(argv or [])
    recipe = None
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv):
            raise TeamsRLError("--config needs a path to a recipe YAML")
        recipe = argv[index + 1]
        validate_recipe(recipe, dataclass_types)
    for arg in argv:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag[2:].replace("-", "_") in inert_keys(dataclass_types):
            raise TeamsRLError(f"{flag} does nothing in teams-rl (see --help)")
    _check_flags(argv, dataclass_types)
    parser = _parser_class()(list(dataclass_types), prog=prog, description=description)
    try:
        parsed = parser.parse_args_and_config(argv)
    except ValueError as err:
        unused = re.search(r"not used by the HfArgumentParser: \[(.*)\]", str(err))
        if unused:  # a command-line flag no dataclass knows (recipe keys were checked above)
            flags = [f for f in re.findall(r"'([^']*)'", unused.group(1)) if f.startswith("-")]
            raise TeamsRLError(f"unknown option {', '.join(flags) or unused.group(1)} (see --help)") from None
        raise TeamsRLError(str(err), file=recipe) from None
    for instance in parsed:  # every value, whatever set it (a recipe, a flag or a default), is within its bounds
        for f, typ in resolved_fields(type(instance)):
            if problem := check_value(f, typ, getattr(instance, f.name)):
                raise TeamsRLError(problem, file=recipe, line=recipe_line(recipe, f.name), field=f.name)
    return tuple(parsed), recipe


def _check_flags(argv: Sequence[str], dataclass_types: Sequence[type]) -> None:
    """Bounds on command-line values, checked before TRL's dataclasses run their own checks on them (which raise
    without naming the flag)."""
    specs = {f.name: (f, typ) for dc in dataclass_types for f, typ in resolved_fields(dc)}
    argv = list(argv)
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, eq, text = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name not in specs or name == "config" or (not eq and (i + 1 >= len(argv) or argv[i + 1].startswith("--"))):
            continue
        f, typ = specs[name]
        value = _convert(text if eq else argv[i + 1], typ)
        if value is not _UNCONVERTED and (problem := check_value(f, typ, value)):
            raise TeamsRLError(f"--{name}: {problem}")


_UNCONVERTED = object()


def _convert(text: str, typ):
    """A flag's text as the field's scalar type would read it (int, float, str); else ``_UNCONVERTED``."""
    options = typing.get_args(typ) if typing.get_origin(typ) in (typing.Union, types.UnionType) else (typ,)
    if text == "None" and type(None) in options:
        return None
    for option in options:
        if option is bool:
            return _UNCONVERTED
        if option in (int, float):
            try:
                return option(text)
            except ValueError:
                continue
    return text if str in options or any(typing.get_origin(o) is typing.Literal for o in options) else _UNCONVERTED


def _parser_class():
    """TRL's ``TrlParser``, which hands a field's metadata to argparse: our ``bound`` becomes words in its help."""
    from trl import TrlParser

    class Parser(TrlParser):
        @staticmethod
        def _parse_dataclass_field(parser, f):
            bound = bound_of(f) if BOUND in f.metadata else None
            if bound is not None and f.metadata.get("help") not in (None, argparse.SUPPRESS):
                f = with_metadata(f, {**f.metadata, "help": f"{f.metadata['help']} [{bound.describe()}]"})
            return TrlParser._parse_dataclass_field(parser, f)

    return Parser


def to_yaml(*instances) -> str:
    """The resolved recipe as YAML, for the run folder: it parses back as a recipe (no inert keys). Keys never live
    in a recipe (``<role>_api_key_env`` names a variable); URL credentials, the values of those variables and
    anything shaped like a key are masked (``secrets.mask``)."""
    from teams_rl.core import secrets

    merged: dict = {}
    skip = inert_keys([type(inst) for inst in instances])
    for inst in instances:
        for key, value in dataclasses.asdict(inst).items():
            if key in skip:
                continue
            if key.endswith("_api_key_env") and isinstance(value, str):
                secrets.register_env(value)
            merged[key] = value
    return yaml.safe_dump(secrets.mask_data(merged), sort_keys=False, allow_unicode=True)
