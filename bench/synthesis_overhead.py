"""Bench: how fast synthesis is against one prompt at a time, what the pipeline costs on top of the LLM backend, and
what concurrency buys the openai backend.

0. End to end: the whole ``teams-rl synthesize`` command (a fresh process: imports, model load, rewrites, reviewer,
   answers, screens, writing the dataset), timed from start to exit, in expert completion tokens per second; then
   the same prompts, read back from that run's ledger, through the backend's ``generate`` one request at a time
   (float32, no prefix cache: a plain loop over ``model.generate``'s equivalent). Printed: end to end / batch 1
   (goal >= 4). The recipe's dtype is the run's; the batch-1 loop runs in float32 and, when the recipe's dtype
   differs, in that dtype too, so each lever's share shows.
1. The same rewrite requests (same seeds, actions, prompts, sampling and per-row seeds, so the same tokens) go
   (a) through the pipeline: ``EvolutionEnv.step`` = prompt rendering, the SQLite ledger (a fresh one each round,
   so every call is paid), parsing, the elimination rules and the embedding reviewer; and (b) straight into the
   backend's own batched ``generate``. Printed: tokens/s of each and pipeline ÷ raw (goal >= 0.95). Rounds
   alternate raw and pipeline in ABBA order after a warm-up pass of each side, so order effects and drift cancel.
2. ``bench/openai_concurrency.py``: the openai backend at concurrency 32 vs sequential against a local server with
   a fixed latency (goal >= 20x).

    python bench/synthesis_overhead.py                     # embedded SmolLM2-135M on CPU, about 10 minutes
    python bench/synthesis_overhead.py --model HuggingFaceTB/SmolLM2-360M-Instruct --seeds 32 --batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from teams_rl.core.entry import prepare_process

prepare_process()  # before torch is imported: the CPU thread setting and the warning filters

from teams_rl.env.actions import load_actions
from teams_rl.env.environment import EvolutionEnv, State, derive_seed
from teams_rl.env.reviewer import Reviewer
from teams_rl.env.seeds import load_seeds
from teams_rl.llm.base import GenerationRequest, SamplingParams
from teams_rl.llm.embeddings import load_embedder
from teams_rl.llm.ledger import Ledger
from teams_rl.llm.role_client import Budget, RoleClient
from teams_rl.llm.transformers_backend import TransformersBackend
from teams_rl.policy.random import RandomPolicy

PIPELINE_GOAL = 0.95
END_TO_END_GOAL = 4.0
RUN_SEED = 7
RECIPE = ROOT / "recipes/smollm2-135m/synthesize/config_random.yaml"
RESULTS = ROOT / "bench/results/synthesis_overhead.json"


def _ledger_requests(ledger: Path, role: str = "expert") -> list[GenerationRequest]:
    """The generate requests a run paid for, in the order it paid them."""
    with sqlite3.connect(ledger) as db:
        rows = db.execute(
            "SELECT request FROM calls WHERE role = ? AND kind = 'generate' ORDER BY created", (role,)
        ).fetchall()
    out = []
    for (text,) in rows:
        payload = json.loads(text)
        messages = tuple(payload["messages"])
        out.append(GenerationRequest(messages, SamplingParams(**payload["sampling"]), seed=payload["seed"]))
    return out


def batch_one(model: str, requests: list[GenerationRequest], dtype: str) -> dict:
    """The backend's generate, one request at a time, no prefix cache: the loop a user writes first."""
    backend = TransformersBackend(model, dtype=dtype, batch_size=1, prefix_cache=False, field="model")
    backend.load()
    backend.generate(requests[:1])  # warm-up, untimed
    seconds, tokens = 0.0, 0
    for request in requests:
        start = time.perf_counter()
        tokens += backend.generate([request])[0].completion_tokens
        seconds += time.perf_counter() - start
    return {"dtype": dtype, "requests": len(requests), "tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def measure_end_to_end(n_seeds: int, depth: int, overrides: list[str], every: int) -> dict:
    """The synthesize command from process start to dataset written, then batch 1 on every ``every``-th of its
    expert prompts."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "teams_rl.cli", "synthesize", "--config", str(RECIPE), "--output_dir", str(run)]
        cmd += ["--max_seeds", str(n_seeds), "--depth", str(depth), *overrides]
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        summary = json.loads((run / "dataset" / "summary.json").read_text())
        saved = yaml.safe_load((run / "config" / "synthesize.yaml").read_text())
        requests = _ledger_requests(run / "ledger.sqlite")
    expert = [c for c in summary["calls"] if c["role"] == "expert"]
    tokens = sum(c["completion_tokens"] for c in expert)
    dtype, model = saved["expert_dtype"], saved["expert_model"]
    sample = requests[::every]
    baselines = [batch_one(model, sample, "float32")]
    if dtype not in ("float32", "auto"):
        baselines.append(batch_one(model, sample, dtype))
    tok_s = tokens / wall
    return {
        "command": " ".join(["teams-rl synthesize --config", str(RECIPE.relative_to(ROOT))] + cmd[8:]),
        "seeds": n_seeds,
        "depth": depth,
        "expert_dtype": dtype,
        "wall_s": wall,
        "stage_wall_s": summary["wall_s"],
        "expert_calls": sum(c["new"] for c in expert),
        "completion_tokens": tokens,
        "rows": summary["rows"],
        "tok_s": tok_s,
        "batch_one": baselines,
        "ratio_vs_float32_batch_one": tok_s / baselines[0]["tok_s"],
        "ratio_vs_same_dtype_batch_one": tok_s / baselines[-1]["tok_s"],
    }


def _raw_requests(env: EvolutionEnv, states: list[State], actions: list[str]) -> list[GenerationRequest]:
    """The requests ``env.step`` sends, built the way it builds them (asserted equal in ``measure_pipeline``)."""
    return [
        GenerationRequest(
            env.actions[a].render(s.instruction, s.input),
            env.sampling,
            seed=derive_seed(env.run_seed, s.seed_id, s.step, "rewrite"),
        )
        for s, a in zip(states, actions, strict=True)
    ]


def measure_pipeline(model: str, n_seeds: int, batch_size: int, max_new_tokens: int, rounds: int) -> dict:
    backend = TransformersBackend(model, dtype="float32", batch_size=batch_size, field="model")
    backend.load()
    actions = {a.name: a for a in load_actions()}
    states = [State.from_seed(s) for s in load_seeds("builtin", limit=n_seeds)]
    chosen = RandomPolicy(list(actions), run_seed=RUN_SEED).select(states)
    reviewer = Reviewer(None, {"embedding": 1.0}, embedder=load_embedder("minilm"))
    sampling = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=max_new_tokens)
    # Warm-up outside the timings: one full pass of each side, so both find the batch shapes already seen by torch
    # (oneDNN caches kernels per shape; without this, whichever side runs second looks ~10% faster) and the
    # pipeline's first round does not pay alone for the reviewer's first MiniLM batch and SQLite's first use.
    backend.generate(_raw_requests(EvolutionEnv(actions, None, reviewer, sampling, RUN_SEED), states, chosen))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Ledger(Path(tmp) / "warm-up.sqlite")
        EvolutionEnv(actions, RoleClient(backend, ledger, "expert", Budget()), reviewer, sampling, RUN_SEED).step(
            states, chosen
        )
        ledger.close()

    totals = {"raw": [0.0, 0], "pipeline": [0.0, 0]}
    per_round: list[dict] = []
    encode, spent = reviewer.embedder.encode, [0.0]

    def timed_encode(*a, **k):  # the reviewer's own work, which raw generate does not do
        start = time.perf_counter()
        try:
            return encode(*a, **k)
        finally:
            spent[0] += time.perf_counter() - start

    reviewer.embedder.encode = timed_encode
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            ledger = Ledger(Path(tmp) / f"ledger-{r}.sqlite")
            client = RoleClient(backend, ledger, "expert", Budget())
            env = EvolutionEnv(actions, client, reviewer, sampling, run_seed=RUN_SEED)
            requests = _raw_requests(env, states, chosen)

            # ABBA order: raw first in even rounds, pipeline first in odd ones, so order effects cancel.
            timings: dict[str, float] = {}
            for side in ("raw", "pipeline") if r % 2 == 0 else ("pipeline", "raw"):
                start = time.perf_counter()
                if side == "raw":
                    raw = backend.generate(requests)
                    tokens = sum(x.completion_tokens for x in raw)
                else:
                    transitions = env.step(states, chosen)
                    tokens = client.stats.completion_tokens
                seconds = time.perf_counter() - start
                totals[side][0] += seconds
                totals[side][1] += tokens
                timings[side] = seconds
            per_round.append({**timings, "ratio": timings["raw"] / timings["pipeline"]})
            ledger.close()
            # Same requests, same per-row seeds -> the same texts: the two sides did identical LLM work.
            if [t.raw for t in transitions] != [x.text for x in raw]:
                raise RuntimeError("pipeline and raw generate produced different texts; the comparison is void")
    out = {side: {"seconds": s, "tokens": n, "tok_s": n / s} for side, (s, n) in totals.items()}
    return {**out, "reviewer_embedding_s": spent[0], "per_round": per_round}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="expert model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--seeds", type=int, default=16, help="pipeline part: seed instructions per round (16)")
    parser.add_argument("--batch-size", type=int, default=16, help="pipeline part: backend batch size (16)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="pipeline part: rewrite length cap (64)")
    parser.add_argument("--rounds", type=int, default=4, help="pipeline part: raw/pipeline round pairs (4)")
    parser.add_argument("--e2e-seeds", type=int, default=32, help="end to end: seeds synthesized (32)")
    parser.add_argument("--e2e-depth", type=int, default=2, help="end to end: evolution depth (2)")
    parser.add_argument(
        "--e2e-every", type=int, default=2, help="end to end: batch 1 replays every n-th expert prompt (2)"
    )
    parser.add_argument(
        "--e2e-set", action="append", default=[], metavar="KEY=VALUE", help="end to end: a recipe override"
    )
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end part")
    parser.add_argument("--skip-pipeline", action="store_true", help="skip the pipeline-vs-raw part")
    parser.add_argument("--skip-openai", action="store_true", help="skip the openai concurrency part")
    parser.add_argument(
        "--json", type=Path, default=RESULTS, help=f"results file (default: {RESULTS.relative_to(ROOT)})"
    )
    args = parser.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    results: dict = {
        "commit": commit or None,
        "machine": {"cpus": os.cpu_count(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
    }

    if not args.skip_e2e:
        overrides = [arg for kv in args.e2e_set for arg in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
        e2e = measure_end_to_end(args.e2e_seeds, args.e2e_depth, overrides, args.e2e_every)
        results["end_to_end"] = e2e
        results["end_to_end_ratio"] = e2e["ratio_vs_float32_batch_one"]
        print(f"\nEnd to end: {e2e['command']}")
        print(f"{'path':<34}{'tokens':>8}{'seconds':>10}{'tok/s':>9}")
        print(
            f"{'teams-rl synthesize (' + e2e['expert_dtype'] + ')':<34}{e2e['completion_tokens']:>8}"
            f"{e2e['wall_s']:>10.1f}{e2e['tok_s']:>9.2f}"
        )
        for b in e2e["batch_one"]:
            label = f"generate batch 1 ({b['dtype']}, {b['requests']} prompts)"
            print(f"{label:<34}{b['tokens']:>8}{b['seconds']:>10.1f}{b['tok_s']:>9.2f}")
        verdict = "meets" if e2e["ratio_vs_float32_batch_one"] >= END_TO_END_GOAL else "MISSES"
        print(
            f"end to end / batch 1 float32 = {e2e['ratio_vs_float32_batch_one']:.2f} ({verdict} the >= "
            f"{END_TO_END_GOAL:g} goal); / batch 1 {e2e['expert_dtype']} = {e2e['ratio_vs_same_dtype_batch_one']:.2f}"
        )

    if not args.skip_pipeline:
        _pipeline_part(args, results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")

    if not args.skip_openai:
        import openai_concurrency

        print()
        openai_concurrency.main([])
    return 0


def _pipeline_part(args, results: dict) -> None:
    result = measure_pipeline(args.model, args.seeds, args.batch_size, args.max_new_tokens, args.rounds)
    ratio = result["pipeline"]["tok_s"] / result["raw"]["tok_s"]
    results["pipeline"] = {**result, "seeds": args.seeds, "batch_size": args.batch_size, "rounds": args.rounds}
    results["pipeline_ratio"] = ratio
    print(
        f"\nPipeline (EvolutionEnv.step + ledger + reviewer) vs raw batched generate: {args.model}, "
        f"{args.seeds} seeds x {args.rounds} rounds, batch {args.batch_size}, {args.max_new_tokens} new tokens"
    )
    print(f"{'path':<10}{'tokens':>8}{'seconds':>10}{'tok/s':>9}")
    for side in ("raw", "pipeline"):
        r = result[side]
        print(f"{side:<10}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tok_s']:>9.2f}")
    verdict = "meets" if ratio >= PIPELINE_GOAL else "MISSES"
    rounds = ", ".join(f"{r['ratio']:.3f}" for r in result["per_round"])
    print(f"pipeline / raw tokens/s = {ratio:.3f} ({verdict} the >= {PIPELINE_GOAL} goal); by round: {rounds}")
    extra = result["pipeline"]["seconds"] - result["raw"]["seconds"]
    print(
        f"the pipeline's extra {extra:.2f} s include {result['reviewer_embedding_s']:.2f} s of the reviewer's MiniLM"
    )


if __name__ == "__main__":
    raise SystemExit(main())
