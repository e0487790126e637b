"""Bench: OpenAIBackend with concurrency 1 vs N against the fake OpenAI server at a fixed latency (goal: >= 20x)."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teams_rl.llm.base import GenerationRequest, SamplingParams  # noqa: E402
from teams_rl.llm.openai_backend import OpenAIBackend  # noqa: E402


def _fake_server_class() -> type:
    # tests/ is not a package; load the server module by path.
    spec = importlib.util.spec_from_file_location("fake_openai_server", ROOT / "tests" / "fake_openai_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeOpenAIServer


def measure(n_requests: int = 64, latency_s: float = 0.1, concurrency: int = 32) -> dict:
    """Time the same ``n_requests`` with ``concurrency=1`` and with ``concurrency``; returns seconds and speedup."""
    server_cls = _fake_server_class()
    requests = [
        GenerationRequest(messages=({"role": "user", "content": f"question {i}"},),
                          sampling=SamplingParams(max_new_tokens=16), seed=i)
        for i in range(n_requests)
    ]
    with server_cls(reply=lambda messages: "an answer of five words", latency_s=latency_s) as server:
        sequential = OpenAIBackend("fake-model", base_url=server.base_url, concurrency=1)
        concurrent = OpenAIBackend("fake-model", base_url=server.base_url, concurrency=concurrency)
        # Warm-up outside the timings: the first call imports openai and probes the platform (~1 s, once).
        sequential.generate(requests[:1])

        start = time.perf_counter()
        seq_results = sequential.generate(requests)
        sequential_s = time.perf_counter() - start

        server.max_in_flight = 0
        start = time.perf_counter()
        con_results = concurrent.generate(requests)
        concurrent_s = time.perf_counter() - start
        max_in_flight = server.max_in_flight

    failed = sum(not r.ok for r in seq_results + con_results)
    if failed:
        raise RuntimeError(f"{failed} bench requests failed")
    return {
        "sequential_s": sequential_s,
        "concurrent_s": concurrent_s,
        "speedup": sequential_s / concurrent_s,
        "max_in_flight": max_in_flight,
    }


def main() -> None:
    n_requests, latency_s, concurrency = 64, 0.1, 32
    result = measure(n_requests, latency_s, concurrency)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is a dependency, but the numbers matter more than the table
        print(result)
        return
    table = Table(title=f"OpenAIBackend: {n_requests} requests, {latency_s * 1000:.0f} ms server latency")
    table.add_column("concurrency", justify="right")
    table.add_column("wall time (s)", justify="right")
    table.add_column("requests/s", justify="right")
    table.add_row("1", f"{result['sequential_s']:.2f}", f"{n_requests / result['sequential_s']:.1f}")
    table.add_row(str(concurrency), f"{result['concurrent_s']:.2f}", f"{n_requests / result['concurrent_s']:.1f}")
    console = Console()
    console.print(table)
    verdict = "meets" if result["speedup"] >= 20 else "MISSES"
    console.print(f"speedup {result['speedup']:.1f}x ({verdict} the 20x goal); "
                  f"server saw at most {result['max_in_flight']} requests in flight")


if __name__ == "__main__":
    main()
