"""The synthesis recipe's dataclasses: the seeds, the run, the expert, the reviewer, what is kept and the
environment, in the order ``teams-rl synthesize`` parses them. Their own module, so the Ray driver
(``distributed``) and the local run (``run``) both read them without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field

from teams_rl.core.bounds import BUDGET, COUNT, POSITIVE, SHARD, bounded, one_of
from teams_rl.core.recipes import role_arguments
from teams_rl.env.build import EnvArguments, ReviewArguments, ReviewerArguments, SeedArguments

ExpertArguments = role_arguments("expert", temperature=0.7, top_p=0.95, max_new_tokens=256)


@bounded()
@dataclass
class SynthesisArguments:
    """How instructions are evolved and where the run lives."""

    output_dir: str = field(default="runs/synthesis", metadata={"help": "Run folder (ledger, config, dataset)."})
    seed: int = field(
        default=42, metadata={"bound": BUDGET, "help": "Run seed; each request's seed = f(run seed, row id, step)."}
    )
    policy: str = field(default="random", metadata={"help": "'random' (Evol-Instruct) or a trained policy folder."})
    policy_sample: bool = field(
        default=False,
        metadata={"help": "Trained policy: sample actions (seeded per row) instead of taking the most likely one."},
    )
    policy_temperature: float | None = field(
        default=None,
        metadata={
            "bound": POSITIVE,
            "help": "Trained policy: sampling temperature (default: the temperature it was trained at).",
        },
    )
    actions: str | None = field(default=None, metadata={"help": "Comma-separated subset of actions (default: all)."})
    depth: int = field(
        default=3, metadata={"bound": COUNT, "help": "Evolution steps per seed; every kept step becomes a row."}
    )
    chunk_size: int = field(
        default=16, metadata={"bound": COUNT, "help": "Seeds evolved together (batching and budget unit)."}
    )
    shard: str | None = field(
        default=None,
        metadata={
            "bound": SHARD,
            "help": "'i/N': process only shard i of N, by hand on each machine, then `teams-rl merge` (executor "
            "ray does both for you; not with it).",
        },
    )
    executor: str = field(
        default="local",
        metadata={
            "bound": one_of("local", "ray"),
            "help": "local: this process. ray: num_shards Ray tasks, each one shard resumable through its own "
            "ledger (OUTPUT_DIR/shards/i-of-N/ledger.sqlite), merged into OUTPUT_DIR/dataset: the same rows and ids "
            "as local. A role's max_calls/max_tokens/max_usd stay a budget for the whole run: each shard gets an "
            "equal share and the shares sum to it. Needs pip install 'teams-rl[ray]'.",
        },
    )
    num_shards: int = field(
        default=1,
        metadata={
            "bound": COUNT,
            "help": "executor ray: shards (one Ray task each) the seeds are split into, by a hash of the seed id as "
            "--shard i/N splits them; shards beyond the free CPUs (GPUs) wait for one.",
        },
    )
    ray_address: str | None = field(
        default=None,
        metadata={
            "help": "executor ray: null starts a local Ray instance (this machine's CPUs) and stops it after; "
            "'auto' joins the cluster `ray start` made on this machine (or RAY_ADDRESS); 'ray://HOST:10001' joins "
            "one through Ray Client. On a cluster OUTPUT_DIR must be on storage every node mounts at the same path.",
        },
    )
    ray_num_cpus: float = field(
        default=1.0,
        metadata={"bound": POSITIVE, "help": "executor ray: CPUs each shard task reserves (and its torch threads)."},
    )
    ray_num_gpus: float = field(
        default=0.0,
        metadata={
            "bound": BUDGET,
            "help": "executor ray: GPUs each shard task reserves (0.5: two shards share one GPU; 0 for a shard "
            "whose models are behind an openai server).",
        },
    )
    drop_truncated_responses: bool = field(
        default=True,
        metadata={
            "help": "Eliminate an answer cut at expert_max_new_tokens (reason answer_truncated): SFT would append "
            "the end-of-turn token to it and teach the model to stop mid-sentence. false keeps cut answers."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "A finished dataset made by another recipe is refused; true moves it (and its saved recipe) to "
            "OUTPUT_DIR/superseded/ and makes a new one. The same recipe resumes without it."
        },
    )


ARGUMENTS = (SeedArguments, SynthesisArguments, ExpertArguments, ReviewerArguments, ReviewArguments, EnvArguments)
