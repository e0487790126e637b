"""The evolution environment as policy training and synthesis both build it: the seed and reviewer recipe keys, the
seeds, the actions, the ledger, the rewriter and reviewer clients, and ``EvolutionEnv``. One definition, so the two
stages screen and score rewrites the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from trl import ScriptArguments

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.layout import ledger_path
from teams_rl.core.recipes import inert, role_arguments, role_settings
from teams_rl.env.actions import Action, load_actions
from teams_rl.env.environment import EvolutionEnv
from teams_rl.env.reviewer import Reviewer, parse_modes
from teams_rl.env.seeds import BUILTIN, Seed, load_seeds
from teams_rl.llm.embeddings import load_embedder
from teams_rl.llm.factory import BackendPool, sampling_from
from teams_rl.llm.ledger import Ledger, RoleClient

ReviewerArguments = role_arguments("reviewer", temperature=0.0, top_p=1.0, max_new_tokens=12)


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
    max_seeds: int | None = field(default=None, metadata={"help": "Use only the first N seeds (after skip_seeds)."})
    skip_seeds: int = field(
        default=0,
        metadata={
            "help": "Skip the first N seeds, e.g. those a policy was trained on (train-policy's held_out_seeds keeps "
            "the last ones out), so synthesis runs on held-out seeds."
        },
    )


@dataclass
class ReviewArguments:
    """How the reviewer scores rewrites (the information-gain rule and the reward)."""

    reviewer_modes: str = field(
        default="judge_logprob:1,embedding:1",
        metadata={"help": "mode:weight list of judge, judge_logprob, graded, graded_logprob, embedding."},
    )
    reviewer_embedding_model: str = field(default="minilm", metadata={"help": "Sentence-embedding model."})
    reviewer_gain_threshold: float = field(default=0.5, metadata={"help": "judge_logprob: P(Yes) needed for gain."})
    reviewer_min_novelty: float = field(default=0.05, metadata={"help": "No judge: novelty needed for gain."})


def select_seeds(seed_args: SeedArguments) -> list[Seed]:
    """The recipe's seeds: ``skip_seeds`` dropped from the front, then at most ``max_seeds``."""
    source = seed_args.dataset_name or BUILTIN
    limit = None if seed_args.max_seeds is None else seed_args.skip_seeds + seed_args.max_seeds
    seeds = load_seeds(
        source,
        instruction_column=seed_args.instruction_column,
        input_column=seed_args.input_column,
        id_column=seed_args.id_column,
        split=seed_args.dataset_train_split,
        limit=limit,
    )
    if seed_args.skip_seeds:
        if seed_args.skip_seeds >= len(seeds):
            raise TeamsRLError(
                f"skip_seeds={seed_args.skip_seeds} leaves no seed ({len(seeds)} in {source})", field="skip_seeds"
            )
        seeds = seeds[seed_args.skip_seeds :]
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


def build_env(
    run_dir: str | Path,
    *,
    run_seed: int,
    actions: list[Action],
    rewrite_role: str,
    rewrite_settings: dict,
    reviewer_args,
    review_args: ReviewArguments,
    rewrite_max_new_tokens: int | None = None,
) -> BuiltEnv:
    """The run folder's ledger, the rewriting role's client (``rewriter`` in training, ``expert`` in synthesis), the
    reviewer (a judge client when a mode needs one, the embedding model when ``embedding`` is weighted) and the env."""
    run_dir = Path(run_dir)
    weights = parse_modes(review_args.reviewer_modes)
    review = role_settings(reviewer_args, "reviewer")
    run_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(ledger_path(run_dir))
    backends = BackendPool()
    rewrite = backends.client(rewrite_settings, rewrite_role, ledger)
    judge = backends.client(review, "reviewer", ledger) if set(weights) - {"embedding"} else None
    embedder = load_embedder(review_args.reviewer_embedding_model) if "embedding" in weights else None
    reviewer = Reviewer(
        judge,
        weights,
        embedder=embedder,
        gain_threshold=review_args.reviewer_gain_threshold,
        min_novelty=review_args.reviewer_min_novelty,
        sampling=sampling_from(review),
    )
    overrides = {} if rewrite_max_new_tokens is None else {"max_new_tokens": rewrite_max_new_tokens}
    env = EvolutionEnv(
        {a.name: a for a in actions},
        rewrite,
        reviewer,
        sampling_from(rewrite_settings, **overrides),
        run_seed=run_seed,
    )
    return BuiltEnv(env, actions, ledger, backends, rewrite, judge, rewrite_settings, review)
