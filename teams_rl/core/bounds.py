"""Bounds on recipe keys, declared next to each field (``metadata={"bound": at_least(1)}``) and checked when a recipe
or a command line is parsed, before any model loads. Fields inherited from TRL get theirs from ``bounded`` on the
subclass; ``Literal`` and ``Enum`` fields, and fields with ``choices``, are enumerations checked from their set."""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

BOUND = "bound"  # the metadata key; HfArgumentParser never sees it (see recipes.parse_args)


@dataclass(frozen=True)
class Bound:
    """An interval (``lo``/``hi``, open or closed), a set of choices, or a named check of a value.

    ``None`` passes whenever the field's type admits it (a null budget means "no limit")."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple | None = None
    check: Callable[[object], bool] | None = None
    text: str = ""

    def problem(self, value) -> str | None:
        """Why ``value`` is out of bounds (a phrase), or None when it is within."""
        if isinstance(value, list | tuple):
            return next((p for p in map(self.problem, value) if p), None)
        if value is None:
            return None
        if self.choices is not None:
            return None if value in self.choices else f"must be one of {', '.join(map(str, self.choices))}"
        if self.check is not None:
            return None if self.check(value) else f"must be {self.text}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None  # a wrong type is the type check's business
        if isinstance(value, float) and math.isnan(value):
            return f"must be {self.describe()}, not NaN"
        low_bad = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high_bad = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        return f"must be {self.describe()}" if low_bad or high_bad else None

    def describe(self) -> str:
        if self.text:
            return self.text
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "any number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def at_least(lo: float) -> Bound:
    return Bound(lo=lo)


def above(lo: float) -> Bound:
    return Bound(lo=lo, lo_open=True)


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Bound:
    return Bound(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)


def one_of(*choices) -> Bound:
    return Bound(choices=tuple(choices))


def any_value(why: str) -> Bound:
    """Declares on purpose that every value of the type is valid (``why`` says so in the code, e.g. an offset)."""
    return Bound(text=f"any value ({why})")


PROBABILITY = between(0, 1, lo_open=True)  # top_p, a nucleus mass: 0 would keep nothing
UNIT = between(0, 1)  # a weight, a threshold or a coefficient in [0, 1]
COUNT = at_least(1)  # a count where 0 would mean nothing happens
BUDGET = at_least(0)  # a budget, an index, a number of retries: 0 is meaningful
POSITIVE = above(0)  # a learning rate, a timeout, an epsilon
TEMPERATURE = at_least(0)  # 0 means greedy

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def _is_shard(value) -> bool:
    match = _SHARD.fullmatch(str(value))
    return bool(match) and 0 <= int(match.group(1)) < int(match.group(2))


SHARD = Bound(check=_is_shard, text="'i/N' with 0 <= i < N, e.g. '0/4'")


class _Metadata(Mapping):
    """A field's metadata with its bound readable (``metadata["bound"]``) but not listed: ``HfArgumentParser`` passes
    every listed key to argparse, which knows no ``bound``, so our dataclasses stay usable with TRL's own parsers."""

    def __init__(self, items: Mapping, bound: Bound):
        self._items, self._bound = {k: v for k, v in items.items() if k != BOUND}, bound

    def __getitem__(self, key):
        return self._bound if key == BOUND else self._items[key]

    def __contains__(self, key) -> bool:
        return key == BOUND or key in self._items

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def metadata_with(metadata: Mapping, bound: Bound) -> Mapping:
    """``metadata`` plus ``bound``, in the form ``dataclasses.field(metadata=...)`` and argparse both accept."""
    return types.MappingProxyType(_Metadata(metadata, bound))


def bounded(**bounds: Bound):
    """Class decorator for every recipe dataclass: the bounds its own fields declare (``metadata={"bound": ...}``)
    are hidden from argparse (see ``_Metadata``), and ``bounds`` are attached to fields it inherits from TRL or
    transformers without re-declaring them (the field keeps its default and help; only its metadata gains the
    bound)."""

    def decorate(cls: type) -> type:
        own = cls.__dict__["__dataclass_fields__"]
        for name in bounds:
            if name not in own:
                raise TypeError(f"{cls.__name__} has no field {name!r} to bound")
        for name, f in list(own.items()):
            listed = BOUND in list(f.metadata)  # declared in a plain dict: argparse would see it
            if name not in bounds and not listed:
                continue
            own[name] = with_metadata(f, metadata_with(f.metadata, bounds.get(name) or f.metadata[BOUND]))
        return cls

    return decorate


def with_metadata(f: dataclasses.Field, metadata: Mapping) -> dataclasses.Field:
    """A copy of field ``f`` (default, type, flags) with other metadata; ``f`` itself, maybe TRL's, is untouched."""
    copy = dataclasses.field()
    for slot in type(f).__slots__:
        setattr(copy, slot, getattr(f, slot))
    copy.metadata = (
        types.MappingProxyType(dict(metadata)) if not isinstance(metadata, types.MappingProxyType) else metadata
    )
    return copy


def _enum_choices(typ) -> tuple | None:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(typ):
            if (found := _enum_choices(arg)) is not None:
                return found
        return None
    if origin is typing.Literal:
        return typing.get_args(typ)
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        return tuple(m.value for m in typ)
    return None


def bound_of(f: dataclasses.Field, typ=None) -> Bound | None:
    """The field's bound: declared, or the set of a ``Literal``/``Enum`` type or of its ``choices``."""
    if BOUND in f.metadata:
        return f.metadata[BOUND]
    if "choices" in f.metadata:
        return Bound(choices=tuple(f.metadata["choices"]))
    choices = _enum_choices(typ if typ is not None else f.type)
    return None if choices is None else Bound(choices=choices)


def is_numeric(typ) -> bool:
    """Is ``typ`` int or float (possibly optional, or a list of them)? Bools are not numbers here."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType, list, tuple):
        return any(is_numeric(a) for a in typing.get_args(typ))
    return typ in (int, float)


def resolved_fields(dc: type) -> Iterator[tuple[dataclasses.Field, object]]:
    """Each field of a dataclass with its resolved type."""
    try:
        hints = typing.get_type_hints(dc)
    except Exception:  # a forward reference that cannot be resolved here: the annotation as written
        hints = {}
    for f in dataclasses.fields(dc):
        yield f, hints.get(f.name, f.type)


def check_value(f: dataclasses.Field, typ, value) -> str | None:
    """A one-phrase problem with ``value`` for field ``f`` (with the value shown), or None."""
    bound = bound_of(f, typ)
    if bound is None:
        return None
    if isinstance(value, list | tuple):  # name the element at fault, not the whole list
        value = next((v for v in value if bound.problem(v)), None)
    if isinstance(value, enum.Enum):
        value = value.value
    problem = bound.problem(value)
    return f"{problem}, got {value!r}" if problem else None


def _max_steps(value) -> bool:
    return value == -1 or value >= 1


# The keys every stage that trains inherits from transformers' ``TrainingArguments`` (through TRL's configs), for
# ``bounded`` on each subclass: they are declared in transformers, so their bounds cannot sit in their own fields.
TRAINING_ARGUMENTS: dict[str, Bound] = {
    "per_device_train_batch_size": COUNT,
    "per_device_eval_batch_size": COUNT,
    "num_train_epochs": POSITIVE,
    "max_steps": Bound(check=_max_steps, text="-1 (train num_train_epochs) or >= 1"),
    "learning_rate": POSITIVE,
    "warmup_steps": at_least(0),
    "weight_decay": at_least(0),
    "adam_beta1": between(0, 1, hi_open=True),
    "adam_beta2": between(0, 1, hi_open=True),
    "adam_epsilon": POSITIVE,
    "gradient_accumulation_steps": COUNT,
    "max_grad_norm": at_least(0),
    "label_smoothing_factor": between(0, 1, hi_open=True),
    "neftune_noise_alpha": at_least(0),
    "torch_empty_cache_steps": COUNT,
    "logging_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "eval_delay": at_least(0),
    "eval_accumulation_steps": COUNT,
    "save_steps": POSITIVE,
    "save_total_limit": COUNT,
    "seed": BUDGET,
    "data_seed": BUDGET,
    "dataloader_num_workers": BUDGET,
    "dataloader_prefetch_factor": COUNT,
    "ddp_bucket_cap_mb": COUNT,
    "ddp_timeout": COUNT,
    "local_rank": at_least(-1),
}
