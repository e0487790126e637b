"""``teams-rl merge``: join synthesis shards (``--shard i/N``) into one dataset, each row once."""

from __future__ import annotations

import argparse
from pathlib import Path

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.layout import DATASET_DIR, SHARDS_DIR
from teams_rl.env.dataset import merge_datasets


def cli(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="teams-rl merge", description="Join synthesis shards (--shard i/N) into one dataset with no duplicates."
    )
    parser.add_argument("run_dir", help=f"Run folder; the merged dataset goes to RUN_DIR/{DATASET_DIR}.")
    parser.add_argument(
        "sources", nargs="*", help=f"Dataset folders to join (default: RUN_DIR/{SHARDS_DIR}/*/{DATASET_DIR})."
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    sources = args.sources or sorted(str(p) for p in run_dir.glob(f"{SHARDS_DIR}/*/{DATASET_DIR}"))
    if not sources:
        raise TeamsRLError(f"no shard datasets found under {SHARDS_DIR}/*/{DATASET_DIR}", file=args.run_dir)
    merged = merge_datasets(sources, run_dir / DATASET_DIR)
    print(
        f"merged {len(sources)} shards: {merged['rows']} rows ({merged['duplicates_dropped']} duplicates dropped) "
        f"-> {run_dir / DATASET_DIR}"
    )
