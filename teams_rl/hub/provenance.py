"""Where a dataset came from, for its card: the stage recipes read back, the project's licence, whether the seeds
are the package's own, the rows' lineage (who wrote them) and one row per role (expert, reviewer, instructor,
rewriter) that shaped the data."""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.refs import upstream_id


def read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def project_licence() -> str:
    """teams-rl's licence (pyproject's ``license``) as a Hub licence id."""
    meta = importlib.metadata.metadata("teams-rl")
    return (meta.get("License-Expression") or meta.get("License") or "apache-2.0").lower()


def seeds_are_ours(recipe: dict) -> bool:
    """True when every seed is one of the package's own: ``builtin``, or a local file drawn only from them
    (``train-policy`` writes its held-out seeds that way)."""
    from teams_rl.env.seeds import BUILTIN, load_seeds

    source = str(recipe.get("dataset_name") or BUILTIN)
    if source == BUILTIN:
        return True
    if not Path(source).is_file():
        return False
    try:
        seeds = load_seeds(
            source,
            instruction_column=recipe.get("instruction_column") or "instruction",
            input_column=recipe.get("input_column"),
            id_column=recipe.get("id_column"),
        )
    except TeamsRLError:
        return False
    ours = {(s.instruction, s.input) for s in load_seeds(BUILTIN)}
    return bool(seeds) and all((s.instruction, s.input) in ours for s in seeds)


def lineage(summary: dict, rows: Sequence[dict]) -> dict:
    """Who wrote the rows: the synthesis summary's lineage (a merged dataset: its first shard's), else row 0's."""
    found = summary.get("lineage") or next((s["lineage"] for s in summary.get("shards") or [] if "lineage" in s), None)
    return found or {
        k: v
        for k, v in (rows[0] if rows else {}).items()
        if k in ("policy", "expert_model", "expert_backend", "reviewer_model", "reviewer_modes")
    }


def roles(recipe: dict, line: dict, policy: dict | None, policy_recipe: dict) -> list[dict]:
    """One row per role that shaped the data: expert, reviewer and, for a trained policy, instructor and rewriter."""
    out = [
        (
            "expert",
            line.get("expert_model") or upstream_id(recipe.get("expert_model") or "unknown"),
            line.get("expert_backend") or recipe.get("expert_backend"),
            "carries out each rewrite and answers each kept instruction",
        )
    ]
    modes = line.get("reviewer_modes") or recipe.get("reviewer_modes") or ""
    judge = line.get("reviewer_model") or (re.search(r"judge|graded", modes) and recipe.get("reviewer_model"))
    if judge:
        out.append(
            (
                "reviewer",
                upstream_id(judge),
                recipe.get("reviewer_backend"),
                f"scores rewrites for information gain ({modes})",
            )
        )
    if "embedding" in modes:
        out.append(
            (
                "reviewer (novelty)",
                upstream_id(recipe.get("reviewer_embedding_model") or "minilm"),
                "sentence-transformers",
                "embedding novelty of each rewrite",
            )
        )
    if policy:
        job = f"picks the action at each step (trained with {policy.get('algorithm', '?')})"
        if policy.get("kind") == "instructor":
            out.append(("instructor", upstream_id(str(policy.get("base_model"))), "transformers + LoRA adapter", job))
        else:
            out.append(("instructor", "the policy's own small MLP", "torch", job))
    if rewriter := policy_recipe.get("rewriter_model"):
        out.append(
            (
                "rewriter (policy training)",
                "the instructor model itself" if rewriter == "instructor" else upstream_id(rewriter),
                policy_recipe.get("rewriter_backend"),
                "rewrote while the policy trained",
            )
        )
    return [
        {
            "role": role,
            "model": model if model.startswith("the ") else f"`{model}`",
            "backend": backend or "-",
            "job": job,
        }
        for role, model, backend, job in out
    ]
