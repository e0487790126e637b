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

from teams_rl.actions import Action, load_actions
from teams_rl.configs import parse_args, recipe_line, role_arguments, role_settings, to_yaml
from teams_rl.dataset_io import atomic_write_text
from teams_rl.env import EvolutionEnv, State
from teams_rl.errors import TeamsRLError
from teams_rl.llm.factory import BackendPool, sampling_from
from teams_rl.llm.ledger import Ledger, RoleClient
from teams_rl.policy.rollout import EpisodePool, PolicyReward
from teams_rl.reviewer import Reviewer, load_embedder, parse_modes
from teams_rl.seeds import BUILTIN, load_seeds
from teams_rl.synthesize import ReviewArguments, ReviewerArguments, SeedArguments

logger = logging.getLogger(__name__)

ALGORITHMS = {"ppo": "teams_rl.policy.ppo", "grpo": "teams_rl.policy.grpo", "classic": "teams_rl.policy.classic"}
SAME_AS_INSTRUCTOR = "instructor"

RewriterArguments = role_arguments("rewriter", model=SAME_AS_INSTRUCTOR, temperature=0.7, top_p=0.95,
                                   max_new_tokens=96)


@dataclass
class PolicyArguments:
    """What the policy learns from: the environment around the trainer."""

    algorithm: str = field(default="ppo", metadata={"help": "ppo (TRL PPO), grpo (TRL GRPO) or classic (MLP, TRPO)."})
    actions: str | None = field(default=None, metadata={"help": "Comma-separated subset of actions (default: all)."})
    depth: int = field(default=2, metadata={"help": "Steps per episode: a kept rewrite becomes the next state."})
    parse_penalty: float = field(default=-0.5, metadata={"help": "Reward of an answer that names no action."})
    episode_slots: int | None = field(default=None, metadata={"help": "Episodes run side by side (default: seeds)."})
    held_out_seeds: int = field(default=0, metadata={"help": "Last N seeds kept out of training (for benches)."})


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
        return PolicyReward(self.env, parse, self.pool, parse_penalty=self.policy_args.parse_penalty)

    def calls(self) -> dict[str, int]:
        """New (paid) calls per role so far, for the logs."""
        out: dict[str, int] = {}
        for client in self.clients.values():
            out[client.role] = out.get(client.role, 0) + client.stats.new_calls
        return out

    @property
    def policy_dir(self) -> Path:
        return self.run_dir / "policy"


def build_setup(run_dir: str | Path, seed: int, instructor_model: str | None, seed_args: SeedArguments,
                policy_args: PolicyArguments, rewriter_args, reviewer_args, review_args: ReviewArguments
                ) -> TrainingSetup:
    run_dir = Path(run_dir)
    names = [n.strip() for n in policy_args.actions.split(",")] if policy_args.actions else None
    actions = load_actions(names=names)
    seeds = load_seeds(seed_args.dataset_name or BUILTIN, instruction_column=seed_args.instruction_column,
                       input_column=seed_args.input_column, id_column=seed_args.id_column,
                       split=seed_args.dataset_train_split, limit=seed_args.max_seeds)
    if policy_args.held_out_seeds:
        if policy_args.held_out_seeds >= len(seeds):
            raise TeamsRLError(f"held_out_seeds={policy_args.held_out_seeds} leaves no seed to train on "
                               f"({len(seeds)} seeds)", field="held_out_seeds")
        seeds = seeds[: len(seeds) - policy_args.held_out_seeds]
    pool = EpisodePool([State.from_seed(s) for s in seeds], policy_args.depth, policy_args.episode_slots)

    rewriter = role_settings(rewriter_args, "rewriter")
    if rewriter["model"] == SAME_AS_INSTRUCTOR:
        if not instructor_model:
            raise TeamsRLError("set rewriter_model: the classic policy has no instructor LLM to borrow",
                               field="rewriter_model")
        rewriter["model"] = instructor_model
    review = role_settings(reviewer_args, "reviewer")
    weights = parse_modes(review_args.reviewer_modes)
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(run_dir / "ledger.sqlite")
    backends = BackendPool()
    clients = {"rewrite": backends.client(rewriter, "rewriter", ledger)}
    if set(weights) - {"embedding"}:
        clients["review"] = backends.client(review, "reviewer", ledger)
    embedder = load_embedder(review_args.reviewer_embedding_model) if "embedding" in weights else None
    reviewer = Reviewer(clients.get("review"), weights, embedder=embedder,
                        gain_threshold=review_args.reviewer_gain_threshold,
                        min_novelty=review_args.reviewer_min_novelty, sampling=sampling_from(review))
    env = EvolutionEnv({a.name: a for a in actions}, clients["rewrite"], reviewer, sampling_from(rewriter),
                       run_seed=seed)
    return TrainingSetup(run_dir, actions, pool, env, clients, ledger, policy_args, instructor_model)


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


def argument_classes(argv: list[str]) -> tuple[type, ...]:
    """The dataclasses a train-policy command line parses into (the shared ones, then the trainer's own)."""
    module = importlib.import_module(ALGORITHMS[_algorithm(argv)])
    return (SeedArguments, PolicyArguments, RewriterArguments, ReviewerArguments, ReviewArguments,
            *module.CONFIG_CLASSES)


def main(argv: list[str] | None = None) -> Path:
    """Train a policy; returns the saved policy folder."""
    argv = list(argv or [])
    module = importlib.import_module(ALGORITHMS[_algorithm(argv)])
    parsed, recipe = parse_args(argument_classes(argv), argv, "teams-rl train-policy")
    seed_args, policy_args, rewriter_args, reviewer_args, review_args, *configs = parsed
    try:
        run_dir, seed, instructor = module.run_settings(*configs)
        setup = build_setup(run_dir, seed, instructor, seed_args, policy_args, rewriter_args, reviewer_args,
                            review_args)
        try:
            folder = module.train(setup, *configs)
        finally:
            setup.ledger.close()
        atomic_write_text(setup.run_dir / "config" / "train-policy.yaml",
                          to_yaml(seed_args, policy_args, rewriter_args, reviewer_args, review_args, *configs))
        return folder
    except TeamsRLError as err:
        raise err.located(recipe if err.field else None, recipe_line(recipe, err.field)) from None


if __name__ == "__main__":
    from teams_rl.cli import run_stage

    raise SystemExit(run_stage(main))
