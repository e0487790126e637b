"""The Ray-free half of ``--executor ray``: what the driver (``distributed``) hands each shard and what it adds up
from them. A shard's recipe is the run's with ``shard: i/N`` and each role's budget cut to its part
(``shard_arguments``, ``budget_share``); the shards' call counts are summed per role, purpose and model
(``sum_calls``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

BUDGET_KEYS = ("max_calls", "max_tokens", "max_usd")
ROLES = ("expert", "reviewer")


def budget_share(total: float | None, index: int, count: int, whole: bool = True) -> float | None:
    """Shard ``index``'s part of a whole-run budget, so that the ``count`` parts sum to ``total``: ``whole`` units
    (calls, tokens) dealt as evenly as they go, the first ``total % count`` shards getting one more; dollars split
    evenly. A shard needing less than its part leaves the rest unspent; one needing more stops early and keeps its
    rows, as a local run does at its budget."""
    if total is None:
        return None
    if whole:
        return int(total) // count + (1 if index < int(total) % count else 0)
    part = total / count
    return part if index < count - 1 else total - part * (count - 1)


def shard_arguments(instances: Sequence, index: int, count: int) -> list:
    """The recipe of shard ``index`` of ``count``: ``shard: i/N``, each role's budget cut to its share, and
    ``output_dir`` absolute (a worker on another node may start in another folder). ``overwrite`` is the driver's
    business (see ``distributed._supersede``), so a shard never moves its own results aside."""
    out = []
    for inst in instances:
        changes = {
            f"{role}_{key}": budget_share(getattr(inst, f"{role}_{key}"), index, count, whole=key != "max_usd")
            for role in ROLES
            for key in BUDGET_KEYS
            if hasattr(inst, f"{role}_{key}")
        }
        if hasattr(inst, "executor"):
            changes |= {
                "shard": f"{index}/{count}",
                "output_dir": os.path.abspath(inst.output_dir),
                "overwrite": False,
            }
        out.append(dataclasses.replace(inst, **changes))
    return out


def sum_calls(summaries: Sequence[dict]) -> list[dict]:
    """The shards' call counts added up per (role, purpose, model); dollars stay None for an unpriced role."""
    totals: dict[tuple, dict] = {}
    for s in summaries:
        for entry in s["calls"]:
            key = (entry["role"], entry["purpose"], entry["model"])
            if key not in totals:
                totals[key] = dict(entry)
                continue
            total = totals[key]
            for name in ("new", "cached", "prompt_tokens", "completion_tokens", "errors"):
                total[name] += entry[name]
            if entry.get("usd") is not None:
                total["usd"] = (total.get("usd") or 0.0) + entry["usd"]
    return list(totals.values())
