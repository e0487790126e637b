"""Stage 2, synthesis: seeds → policy-chosen evolutions executed by the expert → expert answers → a dataset with
full lineage. Resumable through the ledger, budgeted per role, deterministic per row, shardable (by hand with
``--shard i/N``, or as Ray tasks with ``--executor ray``, see ``distributed``)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from teams_rl.core.errors import BudgetExhausted
from teams_rl.core.guard import claim, output_lock
from teams_rl.core.layout import DATASET_DIR, SUMMARY_FILE, recipe_path, shard_dir
from teams_rl.core.recipe_check import located
from teams_rl.core.recipes import parse_args, role_settings, to_yaml
from teams_rl.core.refs import upstream_id
from teams_rl.env.build import (
    EnvArguments,
    ReviewArguments,
    SeedArguments,
    build_env,
    select_actions,
    select_seeds,
)
from teams_rl.env.dataset import write_dataset
from teams_rl.env.environment import EvolutionEnv, State, Transition
from teams_rl.env.seeds import parse_shard, shard_seeds
from teams_rl.llm.factory import sampling_from
from teams_rl.policy import load_policy
from teams_rl.synthesize.answer import answer_kept, rejected_row
from teams_rl.synthesize.args import ARGUMENTS, SynthesisArguments

logger = logging.getLogger(__name__)


class _Accounting:
    """Counts what each client spent, for the summary."""

    def __init__(self, **clients):
        self.clients = clients

    def rows(self) -> list[dict]:
        out = []
        for purpose, client in self.clients.items():
            s = client.stats
            out.append(
                {
                    "role": client.role,
                    "purpose": purpose,
                    "model": client.model_id,
                    "new": s.new_calls,
                    "cached": s.cached_calls,
                    "prompt_tokens": s.prompt_tokens,
                    "completion_tokens": s.completion_tokens,
                    "errors": s.errors,
                    "usd": s.usd if client.price is not None else None,
                    "batch_route": client.batch_route,
                }
            )
        return out


def synthesize(
    seed_args: SeedArguments,
    args: SynthesisArguments,
    expert_args,
    reviewer_args,
    review_args: ReviewArguments,
    env_args: EnvArguments,
    recipe: str | None = None,
    *,
    ledger_file: str | Path | None = None,
    show_progress: bool = True,
    on_chunk: Callable[[int, int, int, int], object] | None = None,
) -> dict:
    """Run synthesis and write ``<output_dir>/dataset`` (or ``shards/i-of-N/dataset``). Returns the summary.

    ``executor: ray`` without a ``shard`` runs the shards as Ray tasks and merges them (``distributed``); each task
    comes back here for its shard, with the three hooks: its own ledger (``ledger_file``, default the run folder's),
    no progress bar of its own, and ``on_chunk(seeds_done, seeds_total, kept, eliminated)`` once the seeds are
    known and after every chunk, which feeds the driver's one bar."""
    if args.executor == "ray" and args.shard is None:
        from teams_rl.synthesize.distributed import synthesize_ray

        return synthesize_ray(
            seed_args, args, expert_args, reviewer_args, review_args, env_args, recipe, run_one=synthesize
        )
    began = time.perf_counter()
    run_dir = Path(args.output_dir)
    shard = parse_shard(args.shard) if args.shard else None
    out = run_dir / DATASET_DIR if shard is None else shard_dir(run_dir, *shard) / DATASET_DIR
    suffix = "" if shard is None else f"-shard-{shard[0]}-of-{shard[1]}"
    with output_lock(run_dir, f"synthesize{suffix}"):
        claim(
            root=run_dir,
            finished=out / SUMMARY_FILE,
            record=recipe_path(run_dir, "synthesize", suffix),
            config=to_yaml(seed_args, args, expert_args, reviewer_args, review_args, env_args),
            outputs=[out],
            overwrite=args.overwrite,
        )
        hooks = {"ledger_file": ledger_file, "show_progress": show_progress, "on_chunk": on_chunk}
        return _synthesize(
            seed_args, args, expert_args, reviewer_args, review_args, env_args, recipe, out, began, **hooks
        )


def _synthesize(
    seed_args,
    args,
    expert_args,
    reviewer_args,
    review_args,
    env_args,
    recipe,
    out: Path,
    began: float,
    ledger_file=None,
    show_progress=True,
    on_chunk=None,
):
    run_dir = Path(args.output_dir)
    shard = parse_shard(args.shard) if args.shard else None
    seeds = select_seeds(seed_args)
    if shard is not None:
        seeds = shard_seeds(seeds, *shard)
    report = on_chunk or (lambda done, total, kept, eliminated: None)
    report(0, len(seeds), 0, 0)
    actions = select_actions(args.actions)
    policy = load_policy(
        args.policy, actions, run_seed=args.seed, sample=args.policy_sample, temperature=args.policy_temperature
    )
    expert = role_settings(expert_args, "expert")
    built = build_env(
        run_dir,
        run_seed=args.seed,
        actions=actions,
        rewrite_role="expert",
        rewrite_settings=expert,
        reviewer_args=reviewer_args,
        review_args=review_args,
        env_args=env_args,
        ledger_file=ledger_file,
    )
    env, ledger, rewrites, judge = built.env, built.ledger, built.rewrite, built.judge
    answers = built.backends.client(expert, "expert", ledger)
    lineage = {
        "policy": policy.name,
        "run_seed": args.seed,
        "reviewer_modes": review_args.reviewer_modes,
        "expert_model": upstream_id(rewrites.model_id),
        "expert_backend": expert["backend"],
        "reviewer_model": upstream_id(judge.model_id) if judge else None,
        "expert_sampling": {"rewrite": vars(env.sampling), "answer": vars(sampling_from(expert))},
    }

    rows: list[dict] = []
    rejected: list[dict] = []
    steps, seeds_done, stopped = 0, 0, None
    progress = tqdm(total=len(seeds), desc="synthesize", unit="seed", disable=not show_progress)
    try:
        for start in range(0, len(seeds), args.chunk_size):
            chunk = seeds[start : start + args.chunk_size]
            kept, dropped = _evolve(env, policy, [State.from_seed(s) for s in chunk], args.depth)
            chunk_rows, chunk_rejected = answer_kept(answers, kept, expert, args, lineage, built.screens)
            rows += chunk_rows
            rejected += [rejected_row(t) for t in dropped] + chunk_rejected
            steps += len(kept) + len(dropped)
            seeds_done += len(chunk)
            progress.update(len(chunk))
            progress.set_postfix(kept=len(rows), eliminated=len(rejected))
            report(seeds_done, len(seeds), len(rows), len(rejected))
    except BudgetExhausted as stop:
        stopped = str(stop)
        logger.warning("%s; keeping the %d rows finished so far", stopped, len(rows))
    finally:
        progress.close()
        ledger.close()

    by_seed = {s.id: s for s in seeds}
    for row in rows:
        row["seed_instruction"], row["seed_input"] = by_seed[row["seed_id"]].instruction, by_seed[row["seed_id"]].input
    summary = {
        "dataset": str(out),
        "recipe": recipe,
        "seeds_total": len(seeds),
        "seeds_done": seeds_done,
        "steps": steps,
        "rows": len(rows),
        "eliminated": dict(Counter(r["reason"] for r in rejected)),
        "stopped": stopped,
        "calls": _Accounting(rewrite=rewrites, review=judge, answer=answers).rows()
        if judge
        else _Accounting(rewrite=rewrites, answer=answers).rows(),
        "wall_s": time.perf_counter() - began,
        "lineage": lineage,
    }
    write_dataset(out, rows, rejected, summary)  # its recipe was saved by claim() before the first call
    return summary


def _evolve(env: EvolutionEnv, policy, states: list[State], depth: int) -> tuple[list[Transition], list[Transition]]:
    """``depth`` policy-chosen steps for a batch of seeds; a failed step leaves the instruction as it was."""
    kept, dropped = [], []
    for _ in range(depth):
        transitions = env.step(states, policy.select(states))
        for t in transitions:
            (kept if t.kept else dropped).append(t)
        states = [t.next_state for t in transitions]
    return kept, dropped


def main(argv: list[str] | None = None) -> dict:
    """``teams-rl synthesize --config recipes/<model>/synthesize/config_random.yaml [--key value ...]``."""
    (seed_args, args, expert_args, reviewer_args, review_args, env_args), recipe = parse_args(
        ARGUMENTS, argv, "teams-rl synthesize"
    )
    with located(recipe):
        from teams_rl.synthesize.distributed import check_executor

        check_executor(args)
        return synthesize(seed_args, args, expert_args, reviewer_args, review_args, env_args, recipe)


def cli(argv: list[str]) -> None:
    """``teams-rl synthesize`` / ``python -m teams_rl.synthesize``: run, then print the summary tables."""
    from rich.console import Console

    from teams_rl.synthesize.tables import summary_tables

    summary = main(argv)
    console = Console()
    for table in summary_tables(summary):
        console.print(table)
    console.print(f"dataset written to [bold]{summary['dataset']}[/bold]")
