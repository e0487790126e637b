"""Bench: what the synthesis pipeline costs on top of the LLM backend, and what concurrency buys the openai backend.

1. The same rewrite requests (same seeds, actions, prompts, sampling and per-row seeds, so the same tokens) go
   (a) through the pipeline: ``EvolutionEnv.step`` = prompt rendering, the SQLite ledger (a fresh one each round,
   so every call is paid), parsing, the elimination rules and the embedding reviewer; and (b) straight into the
   backend's own batched ``generate``. Printed: tokens/s of each and pipeline ÷ raw (goal >= 0.95). Rounds
   alternate raw and pipeline in ABBA order after a full warm-up pass, so order effects and drift cancel.
2. ``bench/openai_concurrency.py``: the openai backend at concurrency 32 vs sequential against a local server with
   a fixed latency (goal >= 20x).

    python bench/synthesis_overhead.py                     # embedded SmolLM2-135M on CPU, about 6 minutes
    python bench/synthesis_overhead.py --model HuggingFaceTB/SmolLM2-360M-Instruct --seeds 32 --batch-size 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

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
from teams_rl.llm.ledger import Budget, Ledger, RoleClient
from teams_rl.llm.transformers_backend import TransformersBackend
from teams_rl.policy.random import RandomPolicy

PIPELINE_GOAL = 0.95
RUN_SEED = 7


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
    # Warm-up outside the timings: one full pass, so both sides find the same batch shapes already seen by torch
    # (oneDNN caches kernels per shape; without this, whichever side runs second looks ~10% faster).
    backend.generate(_raw_requests(EvolutionEnv(actions, None, reviewer, sampling, RUN_SEED), states, chosen))
    reviewer.embedder.encode(["warm up"])

    totals = {"raw": [0.0, 0], "pipeline": [0.0, 0]}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            ledger = Ledger(Path(tmp) / f"ledger-{r}.sqlite")
            client = RoleClient(backend, ledger, "expert", Budget())
            env = EvolutionEnv(actions, client, reviewer, sampling, run_seed=RUN_SEED)
            requests = _raw_requests(env, states, chosen)

            # ABBA order: raw first in even rounds, pipeline first in odd ones, so order effects cancel.
            for side in ("raw", "pipeline") if r % 2 == 0 else ("pipeline", "raw"):
                start = time.perf_counter()
                if side == "raw":
                    raw = backend.generate(requests)
                    tokens = sum(x.completion_tokens for x in raw)
                else:
                    transitions = env.step(states, chosen)
                    tokens = client.stats.completion_tokens
                totals[side][0] += time.perf_counter() - start
                totals[side][1] += tokens
            ledger.close()
            # Same requests, same per-row seeds -> the same texts: the two sides did identical LLM work.
            if [t.raw for t in transitions] != [x.text for x in raw]:
                raise RuntimeError("pipeline and raw generate produced different texts; the comparison is void")
    return {side: {"seconds": s, "tokens": n, "tok_s": n / s} for side, (s, n) in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="expert model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--seeds", type=int, default=16, help="seed instructions per round (default: 16)")
    parser.add_argument("--batch-size", type=int, default=8, help="backend batch size (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="rewrite length cap (default: 64)")
    parser.add_argument("--rounds", type=int, default=2, help="raw/pipeline round pairs (default: 2)")
    parser.add_argument("--skip-openai", action="store_true", help="only the pipeline-vs-raw part")
    args = parser.parse_args(argv)

    result = measure_pipeline(args.model, args.seeds, args.batch_size, args.max_new_tokens, args.rounds)
    ratio = result["pipeline"]["tok_s"] / result["raw"]["tok_s"]
    print(
        f"\nPipeline (EvolutionEnv.step + ledger + reviewer) vs raw batched generate: {args.model}, "
        f"{args.seeds} seeds x {args.rounds} rounds, batch {args.batch_size}, {args.max_new_tokens} new tokens"
    )
    print(f"{'path':<10}{'tokens':>8}{'seconds':>10}{'tok/s':>9}")
    for side in ("raw", "pipeline"):
        r = result[side]
        print(f"{side:<10}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tok_s']:>9.2f}")
    verdict = "meets" if ratio >= PIPELINE_GOAL else "MISSES"
    print(f"pipeline / raw tokens/s = {ratio:.3f} ({verdict} the >= {PIPELINE_GOAL} goal)")

    if not args.skip_openai:
        import openai_concurrency

        print()
        openai_concurrency.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
