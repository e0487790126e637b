"""``teams-rl explore --config recipes/<model>/policy/config_ppo.yaml``: the headroom table, before any training.

Every enabled action on every seed of the pool (and, with ``explore_depth: 2``, on one kept rewrite of each seed),
``rewrite_samples`` rewriter samples each, through the policy run's ledger and exactly the environment training
uses (screens, token limit, reviewer, reward). Writes ``<output_dir>/explore/table.jsonl`` (one row per rewrite:
seed, category, depth, action, sample, kept, elimination reason, reward terms), ``summary.json`` and a plot, and
prints what the best constant action, the best action per category and the per-state oracle would gain over
uniform random. Training on the same run folder then finds its depth-0 rewrites in the ledger: no LLM call.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from teams_rl.core.bounds import COUNT, bounded
from teams_rl.core.files import atomic_write_text, write_jsonl
from teams_rl.core.recipe_check import located
from teams_rl.core.recipes import parse_args
from teams_rl.env.build import select_seeds
from teams_rl.env.environment import State, Transition, derive_seed
from teams_rl.env.seeds import split_seeds
from teams_rl.policy.headroom import summarize

logger = logging.getLogger(__name__)
EXPLORE_DIR = "explore"


@bounded()
@dataclass
class ExploreArguments:
    """What the headroom table covers (the environment and models are the policy recipe's own)."""

    explore_depth: int = field(
        default=1,
        metadata={"bound": COUNT, "help": "1: every action on every seed; 2: also on one kept rewrite of each seed."},
    )
    explore_split: str = field(
        default="all",
        metadata={"help": "Seeds to explore: all (headroom over every fold), train or held_out (the recipe's folds)."},
    )
    explore_chunk: int = field(
        default=8, metadata={"bound": COUNT, "help": "States rewritten together (x actions x samples)."}
    )


def _row(t: Transition, category: str) -> dict:
    review = t.review.scores if t.review else {}
    return {
        "state": f"{t.state.seed_id}/{t.state.step}",
        "seed_id": t.state.seed_id,
        "category": category,
        "depth": t.state.depth,
        "action": t.action,
        "sample": t.sample,
        "kept": t.kept,
        "eliminated": t.eliminated,
        "quality": round(t.quality, 4),
        "reward": round(t.reward, 4),
        **{f"score_{m}": None if v is None else round(v, 4) for m, v in review.items()},
        "parent": t.state.instruction,
        "rewrite": t.next_state.instruction if t.kept else t.raw,
    }


def explore(setup, states: list[State], categories: dict[str, str], args: ExploreArguments) -> list[dict]:
    """Run every action x sample on ``states`` (depth 2 adds one kept child per seed); returns the table rows."""
    names = [a.name for a in setup.actions]
    samples = setup.policy_args.rewrite_samples
    rows: list[dict] = []
    frontier = states
    for depth in range(args.explore_depth):
        children: dict[str, list[Transition]] = {}
        bar = tqdm(total=len(frontier) * len(names) * samples, desc=f"explore depth {depth + 1}", unit="rewrite")
        for start in range(0, len(frontier), args.explore_chunk):
            chunk = frontier[start : start + args.explore_chunk]
            cells = [(s, a, k) for s in chunk for a in names for k in range(samples)]
            transitions = setup.env.step([c[0] for c in cells], [c[1] for c in cells], [c[2] for c in cells])
            for t in transitions:
                rows.append(_row(t, categories.get(t.state.seed_id, "")))
                if t.kept:
                    children.setdefault(t.state.seed_id, []).append(t)
            bar.update(len(cells))
            bar.set_postfix(kept=sum(r["kept"] for r in rows), of=len(rows))
        bar.close()
        # the next depth explores one kept rewrite per seed, drawn with a seeded choice among its kept ones
        frontier = []
        for seed_id, kept in children.items():
            pick = derive_seed(setup.env.run_seed, seed_id, depth, "explore") % len(kept)
            frontier.append(kept[pick].next_state)
    return rows


def main(argv: list[str] | None = None) -> dict:
    """Build the policy recipe's environment, explore, write the table and the summary; returns the summary."""
    from teams_rl.policy.train import algorithm_module, argument_classes, build_setup

    argv = list(argv or [])
    parsed, recipe = parse_args((*argument_classes(argv), ExploreArguments), argv, "teams-rl explore")
    seed_args, policy_args, rewriter_args, reviewer_args, review_args, env_args, *configs, args = parsed
    with located(recipe):
        run_dir, seed, instructor = algorithm_module(argv).run_settings(*configs)
        pool_args = dataclasses.replace(seed_args, split=args.explore_split)
        seeds = select_seeds(pool_args)
        setup = build_setup(
            run_dir,
            seed,
            instructor,
            dataclasses.replace(seed_args, split="all"),
            dataclasses.replace(policy_args, held_out_seeds=0),
            rewriter_args,
            reviewer_args,
            review_args,
            env_args,
        )
        try:
            rows = explore(setup, [State.from_seed(s) for s in seeds], {s.id: s.category for s in seeds}, args)
        finally:
            setup.ledger.close()
        held = {
            s.id: f
            for f in range(seed_args.split_folds)
            for s in split_seeds(seeds, "held_out", folds=seed_args.split_folds, fold=f, seed=seed_args.split_seed)
        }
        summary = summarize(rows, [a.name for a in setup.actions], held)
        summary.update(seeds=len(seeds), folds=seed_args.split_folds, calls=setup.calls(), recipe=recipe)
        out = Path(run_dir) / EXPLORE_DIR
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(out / "table.jsonl", rows)
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        from teams_rl.policy.plots import plot_headroom

        plot_headroom(summary, out / "headroom.png")
        summary["folder"] = str(out)
        return summary


def cli(argv: list[str]) -> None:
    """``teams-rl explore``: run the table, then print the headroom."""
    from rich.console import Console

    from teams_rl.policy.tables import headroom_tables

    summary = main(argv)
    console = Console()
    for table in headroom_tables(summary):
        console.print(table)
    console.print(f"table and summary written to [bold]{summary['folder']}[/bold]")
