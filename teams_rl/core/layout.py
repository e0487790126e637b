"""The run folder's layout, named once: every stage finds the others' outputs through these names.

runs/<name>/
  config/<stage>.yaml   resolved recipes (secrets never included)
  ledger.sqlite         every LLM call, per role
  policy/               train-policy's trained instructor
  dataset/              synthesis: datasets files + rows.jsonl, rejected.jsonl, summary.json
  shards/i-of-N/        synthesis shards (merged into dataset/): dataset/, and a Ray run's ledger.sqlite
  eval/                 results.json, results.md, metrics.json, plots/, tasks/
  plots/                PNGs of the stage that owns the folder
  hub.json              what `teams-rl push` uploaded where
  pipeline.json         `teams-rl run`'s record of finished stages
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = "config"
LEDGER_FILE = "ledger.sqlite"
POLICY_DIR = "policy"
DATASET_DIR = "dataset"
SHARDS_DIR = "shards"
EVAL_DIR = "eval"
PLOTS_DIR = "plots"
ROWS_FILE, REJECTED_FILE, SUMMARY_FILE = "rows.jsonl", "rejected.jsonl", "summary.json"
RESULTS_FILE, RESULTS_MD, METRICS_FILE = "results.json", "results.md", "metrics.json"
HUB_FILE = "hub.json"
STATE_FILE = "pipeline.json"

# Stages that save their resolved recipe as config/<stage>.yaml (synthesis shards add -shard-i-of-N).
RECIPE_STAGES = ("train-policy", "synthesize", "sft", "evaluate")


def ledger_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / LEDGER_FILE


def shard_dir(run_dir: str | Path, index: int, count: int) -> Path:
    """The folder of synthesis shard ``index`` of ``count`` (0-based, as ``--shard i/N`` counts)."""
    return Path(run_dir) / SHARDS_DIR / f"{index}-of-{count}"


def shard_ledger_path(run_dir: str | Path, index: int, count: int) -> Path:
    """The ledger of one shard of a Ray run. Each shard keeps its own: the nodes of a cluster share the run folder
    over a network file system, where one SQLite file written by many machines is unsafe. A manual ``--shard i/N``
    run keeps the run folder's shared ``ledger.sqlite``; ``teams-rl ledger`` sums both kinds
    (``shards/*/ledger.sqlite``)."""
    return shard_dir(run_dir, index, count) / LEDGER_FILE


def recipe_path(run_dir: str | Path, stage: str, suffix: str = "") -> Path:
    """Where a stage keeps the resolved recipe it ran with."""
    return Path(run_dir) / CONFIG_DIR / f"{stage}{suffix}.yaml"


def stage_of_recipe(path: str | Path) -> str | None:
    """The stage whose saved recipe ``path`` is (``config/synthesize-shard-1-of-2.yaml`` -> synthesize)."""
    stem = Path(path).stem
    return next((s for s in sorted(RECIPE_STAGES, key=len, reverse=True) if stem.startswith(s)), None)
