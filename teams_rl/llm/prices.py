"""Dollars from tokens: a role's price (recipe keys ``<role>_usd_per_mtok_in/out``) or a price table YAML."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from teams_rl.core.errors import TeamsRLError

PRICE_KEYS = ("input", "output", "batch_discount")


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens, and the share the Batch route takes off (OpenAI: half)."""

    input: float
    output: float
    batch_discount: float = 0.5

    def cost(self, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float:
        usd = (prompt_tokens * self.input + completion_tokens * self.output) / 1e6
        return usd * (1.0 - self.batch_discount) if batch else usd


def role_price(settings: dict, role: str) -> Price | None:
    """The role's price from its recipe keys; None when unpriced. Half a price, or a dollar budget with no price,
    is a user error naming the key to set."""
    given = {k: settings.get(f"usd_per_mtok_{k}") for k in ("in", "out")}
    if all(v is None for v in given.values()):
        if settings.get("max_usd") is not None:
            raise TeamsRLError(
                f"a dollar budget needs the role's prices: set {role}_usd_per_mtok_in and {role}_usd_per_mtok_out",
                field=f"{role}_max_usd",
            )
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise TeamsRLError("set both prices or neither", field=f"{role}_usd_per_mtok_{missing[0]}")
    return Price(float(given["in"]), float(given["out"]), float(settings.get("batch_discount", 0.5)))


def load_price_table(path: str | Path) -> dict[str, Price]:
    """A YAML mapping of model id to ``input`` and ``output`` (USD per million tokens) and an optional
    ``batch_discount`` (default 0.5). Errors name the file, the line and the key."""
    path = Path(path)
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise TeamsRLError(f"cannot read the price table: {err.strerror or err}", file=str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise TeamsRLError(
            f"invalid YAML: {getattr(err, 'problem', err)}", file=str(path), line=mark.line + 1 if mark else None
        ) from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise TeamsRLError(
            "a price table maps each model id to its prices", file=str(path), line=node.start_mark.line + 1
        )
    table: dict[str, Price] = {}
    for key_node, value_node in node.value:
        model, line = str(key_node.value), key_node.start_mark.line + 1
        if not isinstance(value_node, yaml.MappingNode):
            raise TeamsRLError("expected input: and output: under the model", file=str(path), line=line, field=model)
        values = {}
        for k, v in value_node.value:
            where = {"file": str(path), "line": k.start_mark.line + 1, "field": f"{model}.{k.value}"}
            if k.value not in PRICE_KEYS:
                raise TeamsRLError(f"unknown key (expected one of {', '.join(PRICE_KEYS)})", **where)
            try:
                number = float(v.value)
            except (TypeError, ValueError):
                raise TeamsRLError(f"expected a number, got {v.value!r}", **where) from None
            upper = 1.0 if k.value == "batch_discount" else math.inf
            if not 0.0 <= number <= upper:
                raise TeamsRLError(f"must be between 0 and {upper:g}, got {number:g}", **where)
            values[k.value] = number
        for needed in ("input", "output"):
            if needed not in values:
                raise TeamsRLError(
                    f"missing {needed}: (USD per million tokens)", file=str(path), line=line, field=model
                )
        table[model] = Price(**values)
    return table
