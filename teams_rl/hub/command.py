"""``teams-rl push dataset|model``: the command line of the Hub stage."""

from __future__ import annotations

import argparse

from teams_rl.hub.push import push_dataset, push_model


def _common(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help=f"A run folder, or the {what} folder itself.")
    parser.add_argument("--repo-id", required=True, metavar="USER/NAME", help="The Hub repo to push to.")
    parser.add_argument(
        "--revision",
        metavar="BRANCH",
        help="Push to this branch (made from main if missing); one branch per experiment. Default: main.",
    )
    parser.add_argument(
        "--public",
        action="store_true",
        help="Make a new repo public (default: private). An existing repo keeps its visibility.",
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an earlier push at this revision.")
    parser.add_argument("--message", metavar="MSG", help="Commit message.")


def cli(argv: list[str]) -> None:
    """The ``teams-rl push`` handler."""
    parser = argparse.ArgumentParser(
        prog="teams-rl push",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Upload a run's dataset or model to the Hugging Face Hub with its card, private by default.\n"
        "Log in first (`hf auth login`, or set HF_TOKEN): no token is ever taken on the command line.\n"
        "Each push is recorded in hub.json in the run folder.",
        epilog="examples:\n  teams-rl push dataset runs/demo --repo-id me/demo-data --revision exp-1\n"
        "  teams-rl push model runs/demo --repo-id me/demo-model --revision exp-1  # links the dataset above",
    )
    sub = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    data = sub.add_parser(
        "dataset",
        help="The synthesized dataset: rows as parquet, card, recipes, plots.",
        description="Upload RUN_DIR/dataset (rows with their full lineage) with a dataset card: "
        "method, seeds, models per role, policy, LLM calls and tokens, rows kept and eliminated, "
        "metrics, plots, and the recipes to reproduce it.",
    )
    _common(data, "dataset")
    data.add_argument(
        "--no-metrics",
        action="store_true",
        help="Skip computing dataset metrics when eval/metrics.json "
        "is missing (computing them loads a small embedding model).",
    )
    model = sub.add_parser(
        "model",
        help="The fine-tuned adapter or model, with its SFT card extended.",
        description="Upload the SFT adapter (or full model) with its card: base model, the dataset "
        "on the Hub, the SFT recipe, the evaluation table (base vs tuned, privacy AUC), plots.",
    )
    _common(model, "adapter or model")
    model.add_argument("--merged", action="store_true", help="Push sft/merged (the adapter merged into the base).")
    model.add_argument(
        "--dataset-repo-id",
        metavar="USER/NAME",
        help="The dataset repo to link (default: the dataset push recorded in RUN_DIR/hub.json).",
    )
    model.add_argument("--dataset-revision", metavar="BRANCH", help="Its revision (with --dataset-repo-id).")
    args = parser.parse_args(argv)
    common = {"revision": args.revision, "public": args.public, "overwrite": args.overwrite, "message": args.message}
    if args.kind == "dataset":
        entry = push_dataset(args.run_dir, args.repo_id, metrics=not args.no_metrics, **common)
    else:
        entry = push_model(
            args.run_dir,
            args.repo_id,
            merged=args.merged,
            dataset_repo_id=args.dataset_repo_id,
            dataset_revision=args.dataset_revision,
            **common,
        )
    print(
        f"pushed {args.kind} ({'private' if entry['private'] else 'public'}, commit {entry['commit'][:12]}): "
        f"{entry['url']}"
    )
