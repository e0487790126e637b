"""``teams-rl``: a table of commands, each handed to its stage's command function (imported only when it runs)."""

from __future__ import annotations

import argparse
import sys

from teams_rl import __version__
from teams_rl.core.entry import run_stage

# command -> (the stage's command function as "module:function", one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "explore": (
        "teams_rl.policy.explore:cli",
        "The headroom table: every action on every seed, k rewriter samples each; what a policy could gain.",
    ),
    "train-policy": (
        "teams_rl.policy.train:cli",
        "Train the instructor policy (PPO, GRPO or the classic MLP) against the reviewer's reward.",
    ),
    "synthesize": (
        "teams_rl.synthesize.run:cli",
        "Evolve seed instructions with a policy, answer them with the expert, write a dataset.",
    ),
    "merge": (
        "teams_rl.synthesize.merge:cli",
        "Join synthesis shards (--shard i/N) into one dataset with no duplicates.",
    ),
    "ledger": (
        "teams_rl.llm.tables:cli",
        "Print the LLM calls, tokens and latency per role recorded in a run folder.",
    ),
    "sft": (
        "teams_rl.sft.train:cli",
        "Fine-tune a Llama-family model on a dataset with TRL's SFTTrainer (LoRA, QLoRA or full).",
    ),
    "evaluate": (
        "teams_rl.evaluate.run:cli",
        "lm-eval on the base and tuned model, dataset metrics and the membership-inference (privacy) test.",
    ),
    "metrics": (
        "teams_rl.evaluate.dataset_metrics:cli",
        "Dataset metrics (size, lengths, actions, diversity, near-duplicates, queries per row) and plots.",
    ),
    "push": (
        "teams_rl.hub.command:cli",
        "Upload a run's dataset or model to the Hugging Face Hub with its card (private by default).",
    ),
    "run": (
        "teams_rl.pipeline.run:cli",
        "The whole pipeline from one recipe: train-policy, synthesize, sft, evaluate, push; resumable; report.",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        prog="teams-rl",
        description="TeaMs-RL: build instruction datasets with an RL-trained instructor, then fine-tune on them.",
        epilog="Run `teams-rl COMMAND --help` for a command's options. Recipes live in recipes/<model>/<stage>/.",
    )
    parser.add_argument("--version", action="version", version=f"teams-rl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help", "--version"):
        parser.parse_args(argv or ["--help"])
        return 0
    if argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints the usage error and exits 2
    return run_stage(COMMANDS[argv[0]][0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
