"""``teams-rl synthesize --executor ray --num_shards N``: the manual ``--shard i/N`` runs and their ``teams-rl merge``
done for the user, on a local Ray instance or a cluster.

The driver (this process) locks the run folder and claims ``OUTPUT_DIR/dataset`` with the resolved recipe as the
local path does, then submits one Ray task per shard. Each task is the ordinary shard path (``run.synthesize`` with
``shard: i/N``, writing ``shards/i-of-N/dataset``) with its own ledger, ``shards/i-of-N/ledger.sqlite``: the nodes of
a cluster share the run folder over a network file system, where one SQLite file written by many machines is unsafe.
A task whose worker dies (a kill, a lost node, out of memory) is run again by Ray and resumes from its ledger, its
finished calls answered from it; a ``TeamsRLError`` in a task is the user's to fix, so it is not retried but raised
here as the one-line error. When every shard is done the driver merges them into ``OUTPUT_DIR/dataset``: per-row seeds
make the rows and ids those of the single-process run of the same recipe. Each shard's recipe (its part of every
budget) and the call counts summed over the shards come from ``shards``, which needs no Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import recover
from teams_rl.core.guard import claim, config_changes, move_aside, output_lock
from teams_rl.core.layout import DATASET_DIR, SUMMARY_FILE, recipe_path, shard_dir, shard_ledger_path
from teams_rl.core.recipes import to_yaml
from teams_rl.env.dataset import merge_datasets
from teams_rl.synthesize.args import ARGUMENTS
from teams_rl.synthesize.shards import shard_arguments, sum_calls

logger = logging.getLogger(__name__)

MAX_RETRIES = 3  # runs of a shard whose worker died, after the first: each resumes from the shard's ledger
POLL_S = 0.5  # how often the driver's bar reads the shards' progress
OBJECT_STORE_BYTES = 256 * 1024**2  # tasks pass only small summaries; CI machines may have a small /dev/shm
# Set before torch (or TRL) is imported in a worker, as ``entry.prepare_process`` sets them in a stage's process:
# with spinning OpenMP threads generation is ~5x slower on small machines. A value the user set is passed instead.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}


def check_executor(args) -> None:
    """The executor keys that contradict each other, refused before anything is written."""
    if args.executor == "ray" and args.shard is not None:
        raise TeamsRLError(
            "executor ray runs every shard itself: leave shard unset (or use executor local for one shard by hand)",
            field="shard",
        )
    if args.executor == "local" and args.num_shards > 1:
        raise TeamsRLError(
            f"num_shards={args.num_shards} needs executor ray (or run --shard i/N by hand, then teams-rl merge)",
            field="num_shards",
        )


def _import_ray():
    try:
        import ray
    except ImportError:
        raise TeamsRLError("executor ray needs Ray: pip install 'teams-rl[ray]'", field="executor") from None
    return ray


class Progress:
    """A Ray actor holding each shard's latest counts, which the driver sums into its one bar. Counts replace (not
    add to) the shard's previous ones, so a retried task that starts over is not counted twice."""

    def __init__(self):
        self.counts: dict[int, tuple[int, int, int, int]] = {}

    def report(self, shard: int, done: int, total: int, kept: int, eliminated: int) -> None:
        self.counts[shard] = (done, total, kept, eliminated)

    def totals(self) -> tuple[int, int, int, int]:
        """(seeds done, seeds total of the shards that have started, rows kept, rows eliminated)."""
        return tuple(sum(c[k] for c in self.counts.values()) for k in range(4))


def run_shard(
    values: list[dict], index: int, count: int, recipe: str | None, cwd: str, threads: int, progress, run_one
):
    """A Ray task: shard ``index`` of ``count`` through ``run_one`` (the local run's ``synthesize``, passed in so
    this module does not import the module that imports it), with its own ledger and no bar of its own; its chunks
    are reported to ``progress``. ``values`` are the recipe's dataclasses as plain fields (a role's dataclass is
    made at run time and does not pickle by reference)."""
    from teams_rl.core.entry import prepare_process

    prepare_process()  # secrets masked in this worker's logs, the known harmless warnings off
    if os.path.isdir(cwd):  # relative paths in the recipe (seed files, a policy folder) mean what they did there
        os.chdir(cwd)
    import torch

    torch.set_num_threads(threads)
    instances = [cls(**v) for cls, v in zip(ARGUMENTS, values, strict=True)]

    def report(done: int, total: int, kept: int, eliminated: int) -> None:
        progress.report.remote(index, done, total, kept, eliminated)

    ledger = shard_ledger_path(instances[1].output_dir, index, count)
    return run_one(*instances, recipe, ledger_file=ledger, show_progress=False, on_chunk=report)


def synthesize_ray(
    seed_args, args, expert_args, reviewer_args, review_args, env_args, recipe: str | None, run_one: Callable
) -> dict:
    """Run ``args.num_shards`` shards as Ray tasks, each through ``run_one`` (``run.synthesize``), and merge them
    into ``OUTPUT_DIR/dataset``. Returns a summary of the local run's shape (rows, eliminated, the calls per role
    summed over the shards, wall time)."""
    began = time.perf_counter()
    ray = _import_ray()
    instances = (seed_args, args, expert_args, reviewer_args, review_args, env_args)
    run_dir, count = Path(args.output_dir), args.num_shards
    out = run_dir / DATASET_DIR
    with output_lock(run_dir, "synthesize"):
        claim(
            root=run_dir,
            finished=out / SUMMARY_FILE,
            record=recipe_path(run_dir, "synthesize"),
            config=to_yaml(*instances),
            outputs=[out],
            overwrite=args.overwrite,
        )
        shards = [shard_arguments(instances, i, count) for i in range(count)]
        _supersede(run_dir, shards, everything=args.overwrite)
        with _ray_session(ray, args):
            summaries = _run(ray, args, shards, recipe, run_one)
        merged = merge_datasets([shard_dir(run_dir, i, count) / DATASET_DIR for i in range(count)], out)
    summary = _summary(summaries, merged, out, recipe, count, began)
    if summary["stopped"]:
        logger.warning("%s; keeping the %d rows finished so far", summary["stopped"], summary["rows"])
    return summary


def _supersede(run_dir: Path, shards: list[list], everything: bool) -> None:
    """Move aside (to ``superseded/``) each finished shard another recipe made, or every one with ``overwrite``:
    once the driver holds the claim on ``OUTPUT_DIR/dataset`` the shards are parts of its result, and a stale one
    would make its task refuse to run. A shard made by this recipe stays, to be resumed."""
    for shard in shards:
        index, count = map(int, shard[1].shard.split("/"))
        folder = shard_dir(run_dir, index, count) / DATASET_DIR
        record = recipe_path(run_dir, "synthesize", f"-shard-{index}-of-{count}")
        recover(folder)
        if not (folder / SUMMARY_FILE).exists():
            continue
        saved = record.read_text(encoding="utf-8") if record.is_file() else None
        if everything or saved is None or config_changes(saved, to_yaml(*shard)):
            move_aside(run_dir, [folder, record])


@contextlib.contextmanager
def _ray_session(ray, args) -> Iterator[None]:
    """This process's Ray: the one a caller already started (a notebook, the tests), left running; else a local
    instance started now, or the cluster at ``ray_address`` joined now, either stopped or left when done."""
    if ray.is_initialized():
        yield
        return
    options: dict = {"log_to_driver": False, "logging_level": logging.ERROR}  # the console shows the bar and results
    if args.ray_address is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        options |= {
            "num_cpus": max(cpus, math.ceil(args.ray_num_cpus)),  # one shard always fits, or it would wait forever
            "include_dashboard": False,
            "object_store_memory": OBJECT_STORE_BYTES,
        }
    try:  # "local" starts a new instance even where RAY_ADDRESS or a `ray start` on this machine would be found
        with warnings.catch_warnings():  # Ray Client's own warning says what the error below says
            warnings.filterwarnings("ignore", message="Ray Client connection timed out", category=UserWarning)
            ray.init(address=args.ray_address or "local", **options)
    except (ConnectionError, ValueError) as err:
        raise TeamsRLError(
            f"no Ray cluster at '{args.ray_address}' ({err}); start one with `ray start --head`, or leave ray_address "
            "unset for a local instance",
            field="ray_address",
        ) from None
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        if args.ray_address is None and args.ray_num_gpus > gpus:
            raise TeamsRLError(
                f"each shard asks for {args.ray_num_gpus:g} GPUs, this machine has {gpus:g}", field="ray_num_gpus"
            )
        yield
    finally:
        ray.shutdown()


def _run(ray, args, shards: list[list], recipe: str | None, run_one: Callable) -> list[dict]:
    """Submit one task per shard, keep the bar up to date until all are done, and return their summaries in shard
    order. The first failure cancels the other tasks (their finished calls are in their ledgers) and is raised."""
    progress = ray.remote(num_cpus=0)(Progress).remote()
    task = ray.remote(run_shard).options(
        num_cpus=args.ray_num_cpus,
        num_gpus=args.ray_num_gpus,
        max_retries=MAX_RETRIES,
        retry_exceptions=False,  # an exception raised by our code (a bad recipe) fails at once, never reruns
        runtime_env={"env_vars": {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()}},
    )
    count, threads, cwd = len(shards), max(1, int(args.ray_num_cpus)), os.getcwd()
    refs = {
        task.remote([_values(inst) for inst in shard], i, count, recipe, cwd, threads, progress, run_one): i
        for i, shard in enumerate(shards)
    }
    pending, results = list(refs), {}
    bar = tqdm(total=0, desc="synthesize", unit="seed")
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
            for ref in ready:
                results[refs[ref]] = _result(ray, ref, refs[ref], count)
            done, total, kept, eliminated = ray.get(progress.totals.remote())
            bar.total, bar.n = total, done
            bar.set_postfix(shards=f"{len(results)}/{count}", kept=kept, eliminated=eliminated)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return [results[i] for i in range(count)]


def _values(inst) -> dict:
    return {f.name: getattr(inst, f.name) for f in dataclasses.fields(inst) if f.init}


def _result(ray, ref, index: int, count: int) -> dict:
    """A finished task's summary; a ``TeamsRLError`` it raised comes out as itself (not wrapped in Ray's
    ``RayTaskError``, whose text is a traceback), a task Ray gave up on as one line that says how to go on."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, TeamsRLError):
            raise err.cause from None
        raise
    except ray.exceptions.RayError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TeamsRLError(
            f"shard {index}/{count} failed {MAX_RETRIES + 1} times ({first}); run the same command again: every "
            "shard resumes from its ledger",
            field="executor",
        ) from None


def _summary(summaries: list[dict], merged: dict, out: Path, recipe: str | None, count: int, began: float) -> dict:
    """The shards' summaries added up into one of the local run's shape, for the terminal tables. The merged folder
    keeps ``merge_datasets``' summary (each shard's, under ``shards``), which the dataset card and metrics read."""
    eliminated: Counter = Counter()
    for s in summaries:
        eliminated.update(s["eliminated"])
    stopped = [f"shard {i}/{count}: {s['stopped']}" for i, s in enumerate(summaries) if s["stopped"]]
    return {
        "dataset": str(out),
        "recipe": recipe,
        "executor": "ray",
        "num_shards": count,
        **{k: sum(s[k] for s in summaries) for k in ("seeds_total", "seeds_done", "steps")},
        "rows": merged["rows"],
        "duplicates_dropped": merged["duplicates_dropped"],
        "eliminated": dict(eliminated),
        "stopped": "; ".join(stopped) or None,
        "calls": sum_calls(summaries),
        "wall_s": time.perf_counter() - began,
        "lineage": summaries[0]["lineage"] if summaries else None,
        "shard_summaries": summaries,
    }
