"""Stage 1, policy training: ``teams-rl train-policy --config recipes/<model>/policy/config_<algorithm>.yaml``.

The recipe's ``algorithm`` (ppo, grpo, classic) picks the trainer module; all three share what is built here:
the seeds, the episode pool, the rewriter and reviewer behind the run's ledger, and the reward. The trained
policy is saved to ``<output_dir>/policy`` and loads in synthesis with ``--policy <output_dir>/policy``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from teams_rl.core.bounds import BUDGET, COUNT, Bound, bounded, one_of
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.guard import claim, output_lock
from teams_rl.core.layout import PLOTS_DIR, POLICY_DIR, recipe_path
from teams_rl.core.recipe_check import located
from teams_rl.core.recipes import parse_args, role_arguments, role_settings, to_yaml
from teams_rl.env.actions import Action
from teams_rl.env.build import (
    EnvArguments,
    ReviewArguments,
    ReviewerArguments,
    SeedArguments,
    build_env,
    select_actions,
    select_seeds,
)
from teams_rl.env.environment import EvolutionEnv, State
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.role_client import RoleClient
from teams_rl.policy.instructor import POLICY_FILE
from teams_rl.policy.plots import PLOT_FILES
from teams_rl.policy.rollout import EpisodePool, PolicyReward

logger = logging.getLogger(__name__)

ALGORITHMS = {"ppo": "teams_rl.policy.ppo", "grpo": "teams_rl.policy.grpo", "classic": "teams_rl.policy.classic"}
SAME_AS_INSTRUCTOR = "instructor"

# The rewrite length is the shared rewrite_max_new_tokens (EnvArguments), the same key synthesis reads.
RewriterArguments = role_arguments(
    "rewriter", omit=("max_new_tokens",), model=SAME_AS_INSTRUCTOR, temperature=0.7, top_p=0.95
)


@bounded()
@dataclass
class PolicyArguments:
    """What the policy learns from: the environment around the trainer."""

    algorithm: str = field(
        default="ppo",
        metadata={
            "bound": one_of("ppo", "grpo", "classic"),
            "help": "ppo (TRL PPO), grpo (TRL GRPO) or classic (MLP, TRPO).",
        },
    )
    actions: str | None = field(default=None, metadata={"help": "Comma-separated subset of actions (default: all)."})
    depth: int = field(
        default=2, metadata={"bound": COUNT, "help": "Steps per episode: a kept rewrite becomes the next state."}
    )
    parse_penalty: float = field(
        default=-0.5, metadata={"bound": Bound(hi=0), "help": "Reward of an answer that names no action."}
    )
    episode_slots: int | None = field(
        default=None, metadata={"bound": COUNT, "help": "Episodes run side by side (default: seeds)."}
    )
    held_out_seeds: int = field(
        default=0, metadata={"bound": BUDGET, "help": "Last N seeds kept out of training (for benches)."}
    )
    rewrite_samples: int = field(
        default=4,
        metadata={
            "bound": COUNT,
            "help": "Rewriter samples per (state, action): each step draws one of them (its index enters the "
            "request seed). Use explore's `samples` so its table answers training's depth-0 steps for free.",
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "A finished policy/ made by another recipe is refused; true moves it (its recipe and plots too) "
            "to OUTPUT_DIR/superseded/ and trains a new one. The same recipe skips."
        },
    )


@dataclass
class TrainingSetup:
    """Everything a trainer needs besides its own config."""

    run_dir: Path
    actions: list[Action]
    pool: EpisodePool
    env: EvolutionEnv
    clients: dict[str, RoleClient]
    ledger: Ledger
    policy_args: PolicyArguments
    instructor_model: str | None

    def reward(self, parse) -> PolicyReward:
        args = self.policy_args
        return PolicyReward(
            self.env,
            parse,
            self.pool,
            parse_penalty=args.parse_penalty,
            samples=args.rewrite_samples,
            seed=self.env.run_seed,
        )

    def calls(self) -> dict[str, int]:
        """New (paid) calls per role so far, for the logs."""
        out: dict[str, int] = {}
        for client in self.clients.values():
            out[client.role] = out.get(client.role, 0) + client.stats.new_calls
        return out

    @property
    def policy_dir(self) -> Path:
        return self.run_dir / POLICY_DIR


def build_setup(
    run_dir: str | Path,
    seed: int,
    instructor_model: str | None,
    seed_args: SeedArguments,
    policy_args: PolicyArguments,
    rewriter_args,
    reviewer_args,
    review_args: ReviewArguments,
    env_args: EnvArguments,
) -> TrainingSetup:
    actions = select_actions(policy_args.actions)
    seeds = select_seeds(seed_args)
    if policy_args.held_out_seeds:
        if policy_args.held_out_seeds >= len(seeds):
            raise TeamsRLError(
                f"held_out_seeds={policy_args.held_out_seeds} leaves no seed to train on ({len(seeds)} seeds)",
                field="held_out_seeds",
            )
        seeds = seeds[: len(seeds) - policy_args.held_out_seeds]
    pool = EpisodePool([State.from_seed(s) for s in seeds], policy_args.depth, policy_args.episode_slots)

    rewriter = role_settings(rewriter_args, "rewriter")
    if rewriter["model"] == SAME_AS_INSTRUCTOR:
        if not instructor_model:
            raise TeamsRLError(
                "set rewriter_model: the classic policy has no instructor LLM to borrow", field="rewriter_model"
            )
        rewriter["model"] = instructor_model
    built = build_env(
        run_dir,
        run_seed=seed,
        actions=actions,
        rewrite_role="rewriter",
        rewrite_settings=rewriter,
        reviewer_args=reviewer_args,
        review_args=review_args,
        env_args=env_args,
    )
    clients = {"rewrite": built.rewrite, **({"review": built.judge} if built.judge else {})}
    return TrainingSetup(Path(run_dir), actions, pool, built.env, clients, built.ledger, policy_args, instructor_model)


def _algorithm(argv: list[str]) -> str:
    """The trainer to use, read before full parsing because each one brings its own config dataclasses."""
    name = None
    if "--algorithm" in argv and argv.index("--algorithm") + 1 < len(argv):
        name = argv[argv.index("--algorithm") + 1]
    elif "--config" in argv and argv.index("--config") + 1 < len(argv):
        path = Path(argv[argv.index("--config") + 1])
        if not path.is_file():
            raise TeamsRLError("recipe file not found", file=str(path))
        try:
            name = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("algorithm")
        except yaml.YAMLError as err:
            raise TeamsRLError(f"invalid YAML: {err}", file=str(path)) from None
    name = name or "ppo"
    if name not in ALGORITHMS:
        raise TeamsRLError(f"unknown algorithm '{name}' (choose from {', '.join(ALGORITHMS)})", field="algorithm")
    return name


def algorithm_module(argv: list[str]):
    """The trainer module (ppo, grpo, classic) the command line or its recipe names."""
    return importlib.import_module(ALGORITHMS[_algorithm(argv)])


def argument_classes(argv: list[str]) -> tuple[type, ...]:
    """The dataclasses a train-policy command line parses into (the shared ones, then the trainer's own)."""
    module = algorithm_module(argv)
    return (
        SeedArguments,
        PolicyArguments,
        RewriterArguments,
        ReviewerArguments,
        ReviewArguments,
        EnvArguments,
        *module.CONFIG_CLASSES,
    )


def main(argv: list[str] | None = None) -> Path:
    """Train a policy; returns the saved policy folder."""
    argv = list(argv or [])
    module = algorithm_module(argv)
    parsed, recipe = parse_args(argument_classes(argv), argv, "teams-rl train-policy")
    seed_args, policy_args, rewriter_args, reviewer_args, review_args, env_args, *configs = parsed
    with located(recipe):
        run_dir, seed, instructor = module.run_settings(*configs)
        run_dir, folder = Path(run_dir), Path(run_dir) / POLICY_DIR
        with output_lock(run_dir, "train-policy"):
            done = claim(
                root=run_dir,
                finished=folder / POLICY_FILE,
                record=recipe_path(run_dir, "train-policy"),
                config=to_yaml(seed_args, policy_args, rewriter_args, reviewer_args, review_args, env_args, *configs),
                outputs=[folder, *(run_dir / PLOTS_DIR / name for name in PLOT_FILES)],
                overwrite=policy_args.overwrite,
            )
            _wait_for_rank_zero()
            if done:
                logger.warning("%s is complete for this recipe; skipping (--overwrite true trains it again)", folder)
                return folder
            setup = build_setup(
                run_dir, seed, instructor, seed_args, policy_args, rewriter_args, reviewer_args, review_args, env_args
            )
            try:
                return module.train(setup, *configs)
            finally:
                setup.ledger.close()


def _wait_for_rank_zero() -> None:
    """Under ``accelerate launch`` the other ranks wait until rank 0 has claimed (or moved aside) the output."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def cli(argv: list[str]) -> None:
    """``teams-rl train-policy`` / ``python -m teams_rl.policy``: train, then print the policy and the ledger."""
    from rich.console import Console

    from teams_rl.llm.tables import print_ledger
    from teams_rl.policy.instructor import read_policy_meta
    from teams_rl.policy.tables import policy_table

    folder = main(argv)
    console = Console()
    console.print(policy_table(read_policy_meta(folder)))
    print_ledger(folder.parent, console)
    console.print(
        f"policy saved to [bold]{folder}[/bold] (plots in {folder.parent / 'plots'}); use it with: "
        f"teams-rl synthesize --policy {folder} ..."
    )
