"""Bench: the same requests through OpenAIBackend sequentially and concurrently, against the fake OpenAI server with a
fixed per-request latency (the server runs in its own process). Goal: >= 20x faster at concurrency 32."""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teams_rl.core.entry import prepare_process

prepare_process()  # before torch is imported: the CPU thread setting and the warning filters

from teams_rl.llm.base import GenerationRequest, SamplingParams
from teams_rl.llm.openai_backend import OpenAIBackend

GOAL = 20.0


def _fake_server_class() -> type:
    # tests/ is not a package; load the server module by path.
    spec = importlib.util.spec_from_file_location("fake_openai_server", ROOT / "tests" / "fake_openai_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeOpenAIServer


def _serve(conn, latency_s: float) -> None:
    """The fake server, in its own process as a real one would be (in-process, it would share our GIL).

    Sends its URL, then answers each ``"take"`` with the most requests it saw at once since the last one."""
    server = _fake_server_class()(reply=lambda messages: "an answer of five words", latency_s=latency_s).start()
    conn.send(server.base_url)
    while conn.recv() == "take":
        conn.send(server.max_in_flight)
        server.max_in_flight = 0
    server.stop()


def measure(n_requests: int, latency_s: float, concurrency: int) -> list[dict]:
    """One row per concurrency (1, then ``concurrency``): requests, wall seconds, the server's max in flight."""
    requests = [
        GenerationRequest(({"role": "user", "content": f"question {i}"},), SamplingParams(max_new_tokens=16), seed=i)
        for i in range(n_requests)
    ]
    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child_conn, latency_s), daemon=True)
    server.start()
    rows = []
    try:
        base_url = conn.recv()
        # Warm-up outside the timings: the first call imports openai and builds its client (~1 s, once).
        OpenAIBackend("fake-model", base_url=base_url).generate(requests[:1])
        for level in (1, concurrency):
            conn.send("take")
            conn.recv()
            start = time.perf_counter()
            results = OpenAIBackend("fake-model", base_url=base_url, concurrency=level).generate(requests)
            seconds = time.perf_counter() - start
            conn.send("take")
            failed = [r.error for r in results if not r.ok]
            if failed:
                raise RuntimeError(f"{len(failed)} of {n_requests} bench requests failed: {failed[0]}")
            rows.append(
                {"concurrency": level, "requests": n_requests, "seconds": seconds, "max_in_flight": conn.recv()}
            )
    finally:
        conn.send("stop")
        server.join(timeout=10)
    return rows


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=256, help="requests per run (default: 256)")
    parser.add_argument(
        "--latency-ms",
        default="50,200",
        help="server latency per request, one run each, comma-separated (default: 50,200); at 50 ms "
        "the openai client's own CPU time per request (~1.5 ms on 2 cores) starts to matter",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="concurrency of the fast run (default: 32)")
    args = parser.parse_args(argv)
    try:
        latencies = [float(x) for x in args.latency_ms.split(",")]
    except ValueError:
        parser.error("--latency-ms takes numbers separated by commas, e.g. 50,200")
    if args.requests < 1 or args.concurrency < 1 or min(latencies) < 0:
        parser.error("--requests and --concurrency must be >= 1, --latency-ms >= 0")

    print(f"OpenAIBackend vs a local OpenAI-compatible server with a fixed latency, {args.requests} requests")
    print(
        f"{'latency ms':>10}  {'concurrency':>11}  {'wall s':>8}  {'requests/s':>10}  {'max in flight':>13}  "
        f"{'speedup':>8}"
    )
    speedups = []
    for latency in latencies:
        rows = measure(args.requests, latency / 1000, args.concurrency)
        speedup = rows[0]["seconds"] / rows[1]["seconds"]
        speedups.append(speedup)
        for row in rows:
            rate = row["requests"] / row["seconds"]
            ratio = f"{speedup:>7.1f}x" if row is rows[1] else ""
            print(
                f"{latency:>10g}  {row['concurrency']:>11}  {row['seconds']:>8.2f}  {rate:>10.1f}  "
                f"{row['max_in_flight']:>13}  {ratio:>8}"
            )
    for latency, speedup in zip(latencies, speedups, strict=True):
        verdict = "meets" if speedup >= GOAL else "MISSES"
        print(
            f"{latency:g} ms: concurrency {args.concurrency} is {speedup:.1f}x sequential "
            f"({verdict} the {GOAL:g}x goal)"
        )
    return min(speedups)


if __name__ == "__main__":
    main()
