"""The evolution environment as policy training and synthesis both build it: the seed and reviewer recipe keys, the
seeds, the actions, the ledger, the rewriter and reviewer clients, and ``EvolutionEnv``. One definition, so the two
stages screen and score rewrites the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import ScriptArguments

from teams_rl.core.bounds import BUDGET, COUNT, UNIT, at_least, bounded, one_of
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.layout import ledger_path
from teams_rl.core.recipes import inert, role_arguments, role_settings
from teams_rl.env.actions import Action, load_actions
from teams_rl.env.environment import EvolutionEnv
from teams_rl.env.reviewer import Reviewer, parse_modes
from teams_rl.env.screens import ScreenArguments, Screens
from teams_rl.env.seeds import BUILTIN, Seed, load_seeds, split_seeds
from teams_rl.llm.embeddings import load_embedder
from teams_rl.llm.factory import BackendPool, sampling_from
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.role_client import RoleClient

ReviewerArguments = role_arguments("reviewer", temperature=0.0, top_p=1.0, max_new_tokens=12)


@bounded()
@dataclass
class SeedArguments(ScriptArguments):
    """Where the seed instructions come from (``dataset_name``: a file, a saved dataset folder or a Hub id; a
    ``datasets`` source is read from ``dataset_train_split``)."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Seed source: builtin (the shipped seeds), a .jsonl/.json/.csv/.parquet file, a saved datasets "
            "folder or a Hub dataset id."
        },
    )
    dataset_config: str | None = inert()
    dataset_test_split: str = inert("test")
    dataset_streaming: bool = inert(False)
    ignore_bias_buffers: bool = inert(False)
    instruction_column: str = field(default="instruction", metadata={"help": "Column holding the instruction."})
    input_column: str | None = field(default="input", metadata={"help": "Optional column holding an input."})
    id_column: str | None = field(default="id", metadata={"help": "Optional id column (else a content hash)."})
    max_seeds: int | None = field(
        default=None, metadata={"bound": COUNT, "help": "Use only the first N seeds (after skip_seeds)."}
    )
    skip_seeds: int = field(
        default=0,
        metadata={
            "bound": BUDGET,
            "help": "Skip the first N seeds, e.g. those a policy was trained on (train-policy's held_out_seeds keeps "
            "the last ones out), so synthesis runs on held-out seeds.",
        },
    )
    split: str = field(
        default="all",
        metadata={
            "bound": one_of("all", "train", "held_out"),
            "help": "all, train or held_out: fold split_fold of split_folds, stratified by the seeds' category, is "
            "held_out and the rest train (the same seeds in every stage for the same split_* keys).",
        },
    )
    split_folds: int = field(
        default=3, metadata={"bound": at_least(2), "help": "Folds of the stratified split (held_out = 1/split_folds)."}
    )
    split_fold: int = field(
        default=0, metadata={"bound": BUDGET, "help": "Which fold is held_out (0 .. split_folds-1)."}
    )
    split_seed: int = field(
        default=0, metadata={"bound": BUDGET, "help": "Seed of the split's shuffle within each category."}
    )


@bounded()
@dataclass
class ReviewArguments:
    """How the reviewer scores rewrites (the information-gain rule and the reward)."""

    reviewer_modes: str = field(
        default="judge_logprob:1,embedding:1",
        metadata={"help": "mode:weight list of judge, judge_logprob, graded, graded_logprob, embedding."},
    )
    reviewer_embedding_model: str = field(default="minilm", metadata={"help": "Sentence-embedding model."})
    reviewer_gain_threshold: float = field(
        default=0.5, metadata={"bound": UNIT, "help": "judge_logprob: P(Yes) needed for gain."}
    )
    reviewer_min_novelty: float = field(
        default=0.05, metadata={"bound": UNIT, "help": "No judge: novelty needed for gain."}
    )


@bounded()
@dataclass
class EnvArguments(ScreenArguments):
    """What makes a rewrite kept and what it earns: the same keys, defaults and code in policy training and in
    synthesis, so the reward a policy learns from is exactly the screen synthesis applies."""

    rewrite_max_new_tokens: int = field(
        default=96,
        metadata={
            "bound": COUNT,
            "help": "Longest rewrite (tokens); a rewrite cut at this length is eliminated as truncated.",
        },
    )
    reward_quality_weight: float = field(
        default=0.25,
        metadata={
            "bound": at_least(0),
            "help": "Reward = kept x (1 + w x the reviewer's score in [0, 1]): w ranks kept rewrites by the "
            "reviewer's P(gain) and novelty; any w keeps a kept rewrite worth more than an eliminated one (0).",
        },
    )


def select_seeds(seed_args: SeedArguments) -> list[Seed]:
    """The recipe's seeds: the ``split`` part, then ``skip_seeds`` dropped from the front, then at most
    ``max_seeds``."""
    source = seed_args.dataset_name or BUILTIN
    whole = seed_args.split != "all"  # a split needs every seed to deal the folds, so no early stop
    limit = None if seed_args.max_seeds is None or whole else seed_args.skip_seeds + seed_args.max_seeds
    seeds = load_seeds(
        source,
        instruction_column=seed_args.instruction_column,
        input_column=seed_args.input_column,
        id_column=seed_args.id_column,
        split=seed_args.dataset_train_split,
        limit=limit,
    )
    seeds = split_seeds(
        seeds, seed_args.split, folds=seed_args.split_folds, fold=seed_args.split_fold, seed=seed_args.split_seed
    )
    if seed_args.skip_seeds:
        if seed_args.skip_seeds >= len(seeds):
            raise TeamsRLError(
                f"skip_seeds={seed_args.skip_seeds} leaves no seed ({len(seeds)} in {source})", field="skip_seeds"
            )
        seeds = seeds[seed_args.skip_seeds :]
    if whole and seed_args.max_seeds is not None:
        seeds = seeds[: seed_args.max_seeds]
    return seeds


def select_actions(names: str | None) -> list[Action]:
    """A comma-separated subset of the actions (all of them when ``names`` is empty)."""
    return load_actions(names=[n.strip() for n in names.split(",")] if names else None)


@dataclass
class BuiltEnv:
    """The environment and the pieces a stage still needs around it (close ``ledger`` when done)."""

    env: EvolutionEnv
    actions: list[Action]
    ledger: Ledger
    backends: BackendPool
    rewrite: RoleClient
    judge: RoleClient | None
    rewrite_settings: dict
    review_settings: dict
    screens: Screens


def build_env(
    run_dir: str | Path,
    *,
    run_seed: int,
    actions: list[Action],
    rewrite_role: str,
    rewrite_settings: dict,
    reviewer_args,
    review_args: ReviewArguments,
    env_args: EnvArguments,
    ledger_file: str | Path | None = None,
) -> BuiltEnv:
    """The run folder's ledger, the rewriting role's client (``rewriter`` in training, ``expert`` in synthesis), the
    reviewer (a judge client when a mode needs one, the embedding model when ``embedding`` is weighted or a screen
    compares embeddings), the screens and the env. ``ledger_file`` puts the ledger elsewhere than the run folder's
    ``ledger.sqlite`` (a Ray shard keeps its own, see ``layout.shard_ledger_path``)."""
    run_dir = Path(run_dir)
    weights = parse_modes(review_args.reviewer_modes)
    review = role_settings(reviewer_args, "reviewer")
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(ledger_file or ledger_path(run_dir))
    backends = BackendPool()
    rewrite = backends.client(rewrite_settings, rewrite_role, ledger)
    judge = backends.client(review, "reviewer", ledger) if set(weights) - {"embedding"} else None
    similarity_screens = (
        env_args.screen_min_novelty,
        env_args.screen_min_similarity,
        env_args.screen_breadth_min_similarity,
        env_args.screen_min_relevance,
    )
    needs_embedder = "embedding" in weights or any(t > 0 for t in similarity_screens)
    embedder = load_embedder(review_args.reviewer_embedding_model) if needs_embedder else None
    reviewer = Reviewer(
        judge,
        weights,
        embedder=embedder,
        gain_threshold=review_args.reviewer_gain_threshold,
        min_novelty=review_args.reviewer_min_novelty,
        sampling=sampling_from(review),
    )
    screens = Screens(env_args, embedder)
    env = EvolutionEnv(
        {a.name: a for a in actions},
        rewrite,
        reviewer,
        sampling_from(rewrite_settings, max_new_tokens=env_args.rewrite_max_new_tokens),
        run_seed=run_seed,
        quality_weight=env_args.reward_quality_weight,
        screens=screens,
    )
    return BuiltEnv(env, actions, ledger, backends, rewrite, judge, rewrite_settings, review, screens)
