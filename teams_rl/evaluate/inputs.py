"""What ``teams-rl evaluate`` reads before any model loads: the local lm-eval task folder (``tasks_dir``, the
shipped ``eval`` tasks wherever teams-rl runs from), what the tuned model is (``describe_tuned``: a peft adapter or a
full model), and the member and non-member rows of the privacy test (``privacy_rows``)."""

from __future__ import annotations

import os
from pathlib import Path

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.refs import looks_like_path
from teams_rl.evaluate import privacy
from teams_rl.evaluate.args import EvalArguments

# The shipped local tasks: the top-level eval/ of a checkout, installed by the wheel as teams_rl/evaluate/tasks.
SHIPPED_TASKS = "eval"


def shipped_tasks_dir() -> Path:
    """The local lm-eval tasks that ship with teams-rl, in a wheel install or in a checkout."""
    installed = Path(__file__).resolve().parent / "tasks"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[2] / SHIPPED_TASKS


def tasks_dir(ref: str | None) -> Path | None:
    """``tasks_dir`` as a folder: a path as given, else (``eval``) the shipped tasks from wherever it runs."""
    if not ref:
        return None
    path = Path(ref).expanduser()
    if not path.is_dir() and ref == SHIPPED_TASKS:
        path = shipped_tasks_dir()
    if not path.is_dir():
        raise TeamsRLError("local task folder not found", file=ref, field="tasks_dir")
    return path


def describe_tuned(ref: str) -> dict:
    """Is ``ref`` a peft adapter (applied to the base) or a full model? A missing local folder is a user error."""
    path = os.path.expanduser(ref)
    if os.path.isdir(path):
        adapter = os.path.isfile(os.path.join(path, "adapter_config.json"))
        return {
            "ref": ref,
            "path": path,
            "kind": "peft adapter" if adapter else "model",
            "tokenizer": path if os.path.isfile(os.path.join(path, "tokenizer_config.json")) else None,
        }
    if looks_like_path(ref):
        raise TeamsRLError(
            f"'{ref}' does not exist: run `teams-rl sft` first (it writes OUTPUT_DIR/adapter), or set "
            "tuned_model: null to evaluate the base only",
            field="tuned_model",
        )
    try:  # a Hub id: an adapter repo has adapter_config.json
        from peft import PeftConfig

        PeftConfig.from_pretrained(ref)
        return {"ref": ref, "path": ref, "kind": "peft adapter", "tokenizer": None}
    except Exception:
        return {"ref": ref, "path": ref, "kind": "model", "tokenizer": None}


def _sft_run_recipe(tuned: str | None) -> str | None:
    """The recipe ``teams-rl sft`` saved beside its adapter: ``<run>/adapter`` -> ``<run>/config/sft.yaml``."""
    recipe = Path(tuned).expanduser().parent / "config" / "sft.yaml" if tuned else None
    return str(recipe) if recipe and recipe.is_file() else None


def privacy_rows(args: EvalArguments) -> tuple[list, list, str]:
    if args.privacy_members or args.privacy_non_members:
        if not (args.privacy_members and args.privacy_non_members):
            raise TeamsRLError("give both privacy_members and privacy_non_members", field="privacy_members")
        members, others = privacy.read_rows(args.privacy_members), privacy.read_rows(args.privacy_non_members)
        source = f"files: {args.privacy_members} vs {args.privacy_non_members}"
    elif recipe := args.privacy_sft_config or _sft_run_recipe(args.tuned_model):
        members, others = privacy.split_from_sft_recipe(recipe)
        source = f"SFT recipe {recipe}: train split vs held-out split"
    else:
        raise TeamsRLError(
            "privacy needs privacy_sft_config (the SFT recipe), a tuned model inside an SFT run folder "
            "(with config/sft.yaml), or privacy_members + privacy_non_members",
            field="privacy",
        )
    return (
        privacy.sample_rows(members, args.privacy_max_rows, args.seed),
        privacy.sample_rows(others, args.privacy_max_rows, args.seed + 1),
        source,
    )
