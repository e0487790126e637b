"""``teams-rl``: one command per stage. Thin: each subcommand hands its arguments to the stage's ``main``."""

from __future__ import annotations

import os

# Before torch is imported anywhere: with the default spinning OpenMP threads, small matmuls on a 2-core
# machine hit a ~15 ms floor and generation runs ~5x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable  # noqa: E402

from teams_rl import __version__  # noqa: E402
from teams_rl.errors import TeamsRLError  # noqa: E402

STAGES = {
    "train-policy": "Train the instructor policy (PPO, GRPO or the classic MLP) against the reviewer's reward.",
    "synthesize": "Evolve seed instructions with a policy, answer them with the expert, write a dataset.",
    "merge": "Join synthesis shards (--shard i/N) into one dataset with no duplicates.",
    "ledger": "Print the LLM calls, tokens and latency per role recorded in a run folder.",
    "sft": "Fine-tune a Llama-family model on a dataset with TRL's SFTTrainer (LoRA, QLoRA or full).",
    "evaluate": "lm-eval on the base and tuned model, dataset metrics and the membership-inference (privacy) test.",
    "metrics": "Dataset metrics (size, lengths, actions, diversity, near-duplicates, queries per row) and plots.",
    "push": "Upload a run's dataset or model to the Hugging Face Hub with its card (private by default).",
    "run": "The whole pipeline from one recipe: train-policy, synthesize, sft, evaluate, push; resumable; report.",
}


def run_stage(fn: Callable[[list[str]], object], argv: list[str] | None = None) -> int:
    """Run a stage: user errors become one line on stderr and exit code 2, never a traceback."""
    _setup_logging()
    try:
        fn(sys.argv[1:] if argv is None else argv)
    except TeamsRLError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished calls are in the ledger; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


def _setup_logging() -> None:
    logging.basicConfig(level=os.environ.get("TEAMS_RL_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "sentence_transformers", "datasets", "urllib3",
                   "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _synthesize(argv: list[str]) -> None:
    from rich.console import Console

    from teams_rl.report import summary_tables
    from teams_rl.synthesize import main

    summary = main(argv)
    if summary is not None:
        console = Console()
        for table in summary_tables(summary):
            console.print(table)
        console.print(f"dataset written to [bold]{summary['dataset']}[/bold]")


def _train_policy(argv: list[str]) -> None:
    from rich.console import Console

    from teams_rl.policy.instructor import read_policy_meta
    from teams_rl.policy.train import main
    from teams_rl.report import policy_table, print_ledger

    folder = main(argv)
    if folder is not None:
        console = Console()
        console.print(policy_table(read_policy_meta(folder)))
        print_ledger(folder.parent, console)
        console.print(f"policy saved to [bold]{folder}[/bold] (plots in {folder.parent / 'plots'}); use it with: "
                      f"teams-rl synthesize --policy {folder} ...")


def _sft(argv: list[str]) -> None:
    from teams_rl.sft import main

    folder = main(argv)
    if folder is not None:
        print(f"model saved to {folder}; its card is {folder / 'README.md'}")


def _merge(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="teams-rl merge", description=STAGES["merge"])
    parser.add_argument("run_dir", help="Run folder; the merged dataset goes to RUN_DIR/dataset.")
    parser.add_argument("sources", nargs="*", help="Dataset folders to join (default: RUN_DIR/shards/*/dataset).")
    args = parser.parse_args(argv)
    from pathlib import Path

    from teams_rl.dataset_io import merge_datasets

    sources = args.sources or sorted(str(p) for p in Path(args.run_dir).glob("shards/*/dataset"))
    if not sources:
        raise TeamsRLError("no shard datasets found under shards/*/dataset", file=args.run_dir)
    merged = merge_datasets(sources, Path(args.run_dir) / "dataset")
    print(f"merged {len(sources)} shards: {merged['rows']} rows ({merged['duplicates_dropped']} duplicates dropped) "
          f"-> {Path(args.run_dir) / 'dataset'}")


def _ledger(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="teams-rl ledger", description=STAGES["ledger"])
    parser.add_argument("run_dir", help="A run folder holding ledger.sqlite.")
    args = parser.parse_args(argv)
    from teams_rl.report import print_ledger

    print_ledger(args.run_dir)


def _evaluate(argv: list[str]) -> None:
    from teams_rl.evaluate import cli

    cli(argv)


def _metrics(argv: list[str]) -> None:
    from teams_rl.eval_dataset import cli

    cli(argv)


def _push(argv: list[str]) -> None:
    from teams_rl.hub import cli

    cli(argv)


def _run(argv: list[str]) -> None:
    from teams_rl.pipeline import cli

    cli(argv)


HANDLERS = {"train-policy": _train_policy, "synthesize": _synthesize, "merge": _merge, "ledger": _ledger,
            "sft": _sft, "evaluate": _evaluate, "metrics": _metrics, "push": _push, "run": _run}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="teams-rl",
        description="TeaMs-RL: build instruction datasets with an RL-trained instructor, then fine-tune on them.",
        epilog="Run `teams-rl STAGE --help` for a stage's options. Recipes live in recipes/<model>/<stage>/.",
    )
    parser.add_argument("--version", action="version", version=f"teams-rl {__version__}")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")
    for name, help_text in STAGES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv or ["--help"])
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in HANDLERS:
        parser.parse_args(argv)  # prints the usage error and exits 2
    return run_stage(HANDLERS[stage], rest)


if __name__ == "__main__":
    sys.exit(main())
