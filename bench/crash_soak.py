"""Crash soak: ``kill -9`` (SIGKILL of the whole process group) at seeded random moments during ``teams-rl
synthesize``, ``teams-rl sft`` and ``teams-rl train-policy``, each followed by the same command until it completes.
Every trial is compared with one uninterrupted run of the same command.

The LLMs are the local OpenAI-compatible test server (tests/fake_openai_server.py, in its own process, with a
per-request latency), reached through the ``openai`` backend, so the server counts what it executed. Per trial:

- synthesis: rows lost, rows duplicated, LLM calls paid twice, and whether the final dataset equals the
  uninterrupted run's (rows and rejected rows compared whole, by id and content; of the summary, ``wall_s``,
  ``dataset`` (the folder's path) and ``calls`` (new vs cached differs on a resume by design) are ignored).
- SFT and policy training: the run completes, its output (adapter / policy) exists and loads, the final
  ``trainer_state.json`` has the uninterrupted run's ``global_step`` with every step 1..N logged exactly once, and
  every tensor of the final adapter is within ``WEIGHT_ATOL`` (max abs difference) of the uninterrupted run's. Two
  uninterrupted runs of a recipe give bitwise-equal adapters (torch is seeded before the LoRA is drawn); a resumed
  SFT run restores the weights, optimizer and RNG state of its newest checkpoint; train-policy keeps no trainer
  checkpoints, so a killed run trains again from step 0 with the same seed (the ledger answers its LLM calls).

An LLM call is identified by (model, kind, messages, seed), kind being generate or score (a request for
logprobs). "Paid twice" counts the server's executions of a call beyond the uninterrupted run's whose earlier
execution had already been answered before the kill (the answer was in the killed process, so a resume that pays
again lost it). Executions whose earlier one was still being answered when the process died are "in flight at the
kill": a kill -9 necessarily loses those, and they are reported apart. The line is drawn at the server: an answer
it finished sending just before the kill, which the client had yet to read and commit, counts as paid twice (the
JSON keeps, per such call, how many ms before the kill it was sent). "Recorded twice" compares the ledgers:
ledger rows beyond one per call (one call under two keys; a key itself is the primary key) plus calls the killed
+ resumed run recorded that the uninterrupted run did not.

    python bench/crash_soak.py                    # 10 synthesis, 3 SFT and 3 policy trials
    python bench/crash_soak.py --trials 2 --sft-trials 1 --policy-trials 0 --seed 1
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from teams_rl.core.entry import prepare_process

prepare_process()  # before torch is imported: the CPU thread setting and the warning filters

SYNTH_RECIPE = ROOT / "recipes" / "smollm2-135m" / "synthesize" / "config_random.yaml"
SFT_RECIPE = ROOT / "recipes" / "smollm2-135m" / "sft" / "config_lora.yaml"
POLICY_RECIPE = ROOT / "recipes" / "smollm2-135m" / "policy" / "config_grpo.yaml"
DEFAULT_JSON = ROOT / "bench" / "results" / "crash_soak.json"
LATENCY_S = (0.05, 0.25)  # each request's latency, drawn per call from its fingerprint: batches finish unevenly
SUMMARY_IGNORED = ("wall_s", "dataset", "calls")
SFT_STEPS, SFT_SAVE_STEPS = 12, 2
POLICY_STEPS = 6
# Final adapter vs the uninterrupted run's, max abs over all tensors. Two uninterrupted runs are bitwise equal; the
# margin only absorbs float reduction order, far below one step's update (learning rate 2e-4).
WEIGHT_ATOL = 1e-6
_PROGRESS = re.compile(rb"(\d+)/(\d+) \[")  # a tqdm bar's "n/total [" (the trainers' step bars)
NO_EMBEDDINGS = {  # the MiniLM screens and novelty off: each process starts ~5 s sooner; the LLM calls stay
    "reviewer_modes": "judge_logprob:1",
    "screen_min_similarity": 0,
    "screen_breadth_min_similarity": 0,
    "screen_min_relevance": 0,
    "screen_min_novelty": 0,
}


# ---------------------------------------------------------------------------------------------- LLM calls


def call_id(model: str, kind: str, messages: Sequence[dict], seed: Any) -> str:
    """One LLM call's identity, the same from the server's request body and from the ledger's request column."""
    blob = json.dumps({"model": model, "kind": kind, "messages": list(messages), "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def body_call_id(body: dict) -> str:
    kind = "score" if body.get("logprobs") else "generate"
    return call_id(body.get("model", ""), kind, body.get("messages", []), body.get("seed"))


def _unit(text: str) -> float:
    """A number in [0, 1) fixed by ``text``: the fake LLMs are deterministic per request."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 16**8


def fake_reply(messages: Sequence[dict]) -> str:
    """An action prompt gets its instruction back, made longer (kept by the screens); anything else an answer."""
    variant = int(_unit(json.dumps(messages)) * 97)
    last = str(messages[-1].get("content", ""))
    if messages and messages[0].get("role") == "system":
        found = re.search(r"Instruction: (.*)", last)
        instruction = found.group(1).strip() if found else "Explain the topic."
        return f"{instruction} Compare two cases of it and give one concrete example for each (variant {variant})."
    topic = " ".join(last.split()[:10])
    return (
        f"Here is a careful answer to '{topic}': first the background, then the reasoning step by step, and "
        f"finally a short summary of the key points (variant {variant})."
    )


def fake_top_logprobs(messages: Sequence[dict]) -> list[tuple[str, float]]:
    """The judge's first-token distribution: P(Yes) 0.8, or 0.3 for about a third of the rewrites (no gain)."""
    yes = 0.3 if _unit(json.dumps(messages)) < 1 / 3 else 0.8
    return [("Yes", math.log(yes)), ("No", math.log(1 - yes))]


def _serve(conn, latency: tuple[float, float]) -> None:
    """The fake server, in its own process. Records (call id, received, answered) per executed request; answers
    ``"count"`` (requests received so far) and ``("events", since)`` over ``conn``."""
    # tests/ is not a package; load the server module by path.
    spec = importlib.util.spec_from_file_location("fake_openai_server", ROOT / "tests" / "fake_openai_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    low, high = latency

    class Recording(module.FakeOpenAIServer):
        def __init__(self):
            super().__init__(reply=fake_reply, top_logprobs=fake_top_logprobs)
            self.events: list[tuple[str, float, float]] = []
            self._current = threading.local()

        def _respond(self, body, auth):
            cid = body_call_id(body)
            self._current.call = (cid, time.time())
            time.sleep(low + (high - low) * _unit(cid))
            return super()._respond(body, auth)

        def _handler_class(self):
            handler, server = super()._handler_class(), self

            class Handler(handler):
                def do_POST(self):
                    server._current.call = None  # one thread serves a keep-alive connection's requests in turn
                    super().do_POST()
                    call = server._current.call
                    if call is not None:
                        with server._lock:
                            server.events.append((call[0], call[1], time.time()))

            return Handler

    server = Recording().start()
    server._server.handle_error = lambda request, address: None  # a killed client resets its connections
    conn.send(server.base_url)
    while True:
        message = conn.recv()
        if message == "count":
            conn.send(server.requests)
        elif isinstance(message, tuple) and message[0] == "events":
            with server._lock:
                conn.send(server.events[message[1] :])
        else:
            break
    server.stop()


class FakeLLMServer:
    """The soak's handle on the server process."""

    def __init__(self, latency: tuple[float, float] = LATENCY_S):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, latency), daemon=True)
        self._process.start()
        if not self._conn.poll(120):  # the child died on start-up (it re-imports __main__ under spawn)
            self.close()
            raise RuntimeError("the fake LLM server did not start")
        self.base_url: str = self._conn.recv()
        self._lock = threading.Lock()

    def count(self) -> int:
        with self._lock:
            self._conn.send("count")
            return self._conn.recv()

    def events(self, since: int = 0) -> list[tuple[str, float, float]]:
        with self._lock:
            self._conn.send(("events", since))
            return [tuple(e) for e in self._conn.recv()]

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send("stop")
        self._process.join(timeout=10)
        if self._process.is_alive():
            self._process.kill()


def ledger_rows(path: Path) -> list[tuple[str, float]]:
    """(call id, when the ledger recorded it: time.time() of its commit) of every ledger row."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = db.execute("SELECT model, kind, request, created FROM calls").fetchall()
    except sqlite3.OperationalError:  # killed before the table was created
        rows = []
    finally:
        db.close()
    out = []
    for model, kind, request, created in rows:
        req = json.loads(request)
        out.append((call_id(model, kind, req["messages"], req["seed"]), created))
    return out


def recorded_twice(rows: Sequence[tuple[str, float]], reference: set[str]) -> int:
    """Ledger rows beyond one per call, plus calls the uninterrupted run never recorded (the key is the primary
    key, so the first can only come from one call stored under two keys)."""
    ids = [cid for cid, _ in rows]
    return len(ids) - len(set(ids)) + len(set(ids) - reference)


@dataclass
class PaidTwice:
    """Executions of a call beyond the uninterrupted run's, by what became of the earlier execution."""

    in_flight: int = 0  # still being answered when its process was killed: lost with it, necessarily
    unrecorded: int = 0  # answered before the kill, but the process died before the ledger committed it
    recorded: int = 0  # the ledger already held it (or one process asked twice): a resume bug
    unrecorded_margin_s: list[float] = field(default_factory=list)  # per unrecorded: server's answer to the kill

    @property
    def paid_twice(self) -> int:
        return self.unrecorded + self.recorded


def classify_repaid(
    events: Iterable[tuple[str, float, float]],
    reference: Counter,
    attempts: Sequence[tuple[float, float, float | None]],
    recorded_at: dict[str, float],
) -> PaidTwice:
    """``events``: the trial's (call id, received, answered); ``attempts``: (start, end, kill time or None) of each
    process run; ``recorded_at``: the final ledger's commit time per call. See ``PaidTwice``."""
    by_call: dict[str, list[tuple[float, float]]] = {}
    for cid, received, answered in events:
        by_call.setdefault(cid, []).append((received, answered))
    out = PaidTwice()
    for cid, runs in by_call.items():
        runs.sort()
        for i in range(max(reference.get(cid, 0), 1), len(runs)):
            earlier, again = runs[i - 1], runs[i]
            kill = next((k for s, e, k in attempts if s <= earlier[0] <= e), None)
            if cid in recorded_at and recorded_at[cid] < again[0]:
                out.recorded += 1
            elif kill is not None and earlier[1] > kill:
                out.in_flight += 1
            elif kill is not None:
                out.unrecorded += 1
                out.unrecorded_margin_s.append(kill - earlier[1])
            else:
                out.recorded += 1  # asked twice within one uninterrupted process
    return out


# ---------------------------------------------------------------------------------------------- comparisons


def compare_rows(reference: Sequence[dict], rows: Sequence[dict]) -> dict[str, int]:
    """Rows keyed by ``id``: lost (in the reference, not here), duplicated (an id more than once), extra (here, not
    in the reference) and changed (same id, different content)."""
    ref = {r["id"]: r for r in reference}
    counts = Counter(r["id"] for r in rows)
    mine = {r["id"]: r for r in rows}
    return {
        "lost": sum(1 for i in ref if i not in mine),
        "duplicated": sum(n - 1 for n in counts.values()),
        "extra": sum(1 for i in mine if i not in ref),
        "changed": sum(1 for i, r in mine.items() if i in ref and r != ref[i]),
    }


def step_check(log_history: Sequence[dict], steps: int) -> dict[str, int]:
    """Training steps 1..``steps`` in a trainer_state.json log history (entries with a ``loss``): lost, repeated."""
    seen = Counter(h["step"] for h in log_history if "loss" in h and "step" in h)
    return {
        "lost": sum(1 for s in range(1, steps + 1) if s not in seen),
        "repeated": sum(n - 1 for n in seen.values()) + sum(1 for s in seen if not 1 <= s <= steps),
    }


def last_complete_checkpoint(out: Path) -> int:
    """The step of the newest checkpoint-N holding trainer_state.json (what teams-rl sft resumes from), or 0."""
    steps = [
        int(p.name.split("-")[1])
        for p in out.glob("checkpoint-*")
        if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(steps, default=0)


def max_abs_diff(a: dict, b: dict) -> float | None:
    """Largest absolute difference between two state dicts (None when their keys or shapes differ, or one is
    empty: a missing adapter)."""
    if not a or set(a) != set(b) or any(a[k].shape != b[k].shape for k in a):
        return None
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Attempt:
    """One process run of a trial's command."""

    start: float
    end: float
    rc: int
    killed_at: float | None  # time.time() of the SIGKILL, None when it ran to the end
    moment: str  # where the kill landed, in words
    progress: int  # the last step counter its progress bar showed (trainers)
    log: str
    start_step: int = 0  # the checkpoint it started from (trainers)


@dataclass
class Kill:
    """SIGKILL once ``armed(watched)`` has held for ``delay`` s; ``describe(watched, when)`` says where it landed."""

    armed: Callable[[Watched], bool]
    delay: float
    describe: Callable[[Watched, float], str]


class Watched:
    """A command in its own process group, its output teed to a log file; tracks the last tqdm ``n/total``."""

    def __init__(self, cmd: Sequence[str], log: Path, env: dict, total: int | None = None):
        self.total = total  # only a bar over this many steps counts (not the weight-loading bars)
        self.progress = 0
        self.start = time.time()
        self._file = log.open("ab")
        self._file.write(f"\n$ {' '.join(cmd)}\n".encode())
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        tail = b""
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self._file.write(chunk)
            tail = (tail + chunk)[-400:]
            steps = [int(n) for n, total in _PROGRESS.findall(tail) if self.total and int(total) == self.total]
            if steps:
                self.progress = max(self.progress, steps[-1])

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> float:
        when = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the whole group: nothing of the stage survives
        return when

    def wait(self, timeout: float = 900) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = self.proc.wait()
        self._reader.join(timeout=10)
        self._file.close()
        return rc


def run_with_kill(
    cmd: Sequence[str], log: Path, env: dict, kill: Kill | None = None, total: int | None = None
) -> Attempt:
    """Run ``cmd`` to its end, or until ``kill`` fires: then SIGKILL its process group."""
    w = Watched(cmd, log, env, total)
    killed_at, armed_at, moment = None, None, "ran to the end"
    while kill is not None and w.running():
        if armed_at is None and kill.armed(w):
            armed_at = time.time()
        if armed_at is not None and time.time() - armed_at >= kill.delay:
            if w.running():
                killed_at = w.kill()
                moment = kill.describe(w, killed_at)
            break
        time.sleep(0.01)
    rc = w.wait()
    if kill is not None and (killed_at is None or rc != -signal.SIGKILL):  # it ended before the kill landed
        killed_at, moment = None, "ran to the end (finished before the kill)"
    return Attempt(w.start, time.time(), rc, killed_at, moment, w.progress, str(log))


def kill_and_resume(
    cmd: Sequence[str],
    log: Path,
    env: dict,
    plan: Callable[[int], Kill],
    kills: int,
    total: int | None = None,
    start_step: Callable[[], int] = lambda: 0,
) -> list[Attempt]:
    """Up to ``kills`` runs of ``cmd`` killed as ``plan(start step)`` says, then the same command to its end (an
    attempt that finishes before its kill ends the trial)."""
    attempts: list[Attempt] = []
    for n in range(kills + 1):
        start = start_step()
        attempt = run_with_kill(cmd, log, env, plan(start) if n < kills else None, total)
        attempt.start_step = start
        attempts.append(attempt)
        if attempt.killed_at is None:
            break
    return attempts


def _env() -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.setdefault("TEAMS_RL_LOG_LEVEL", "WARNING")
    return env


def teams_rl(command: str, **flags: Any) -> list[str]:
    """``teams-rl <command> --key value ...``."""
    exe = Path(sys.executable).with_name("teams-rl")
    args = [command, *(x for key, value in flags.items() for x in (f"--{key}", str(value)))]
    return [str(exe), *args] if exe.exists() else [sys.executable, "-m", "teams_rl.cli", *args]


def on_server(base_url: str, **models: str) -> dict[str, str]:
    """Each role (``role=model``) through the openai backend to the fake server."""
    keys = {"backend": "openai", "base_url": base_url}
    return {f"{role}_{k}": v for role, model in models.items() for k, v in {**keys, "model": model}.items()}


def _fail(attempt: Attempt, what: str) -> str:
    tail = Path(attempt.log).read_text(errors="replace").strip().splitlines()[-3:]
    return f"{what} exited {attempt.rc}: " + " | ".join(tail)


# ---------------------------------------------------------------------------------------------- trials


@dataclass
class Reference:
    """An uninterrupted run: what it left, its wall time, the server's executions per call, its ledger's calls."""

    output: Any
    wall_s: float
    startup_s: float  # launch to the first LLM request
    calls: Counter
    ledger: set[str]


@dataclass
class TrialResult:
    stage: str
    trial: int
    kills: int
    moments: list[str]
    wall_s: float
    equal: bool
    lost: int = 0
    duplicated: int = 0
    paid_twice: int = 0
    in_flight: int = 0
    unrecorded: int = 0
    repaid_recorded: int = 0
    recorded_twice: int = 0
    detail: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def meets_goal(self) -> bool:
        return (
            self.error is None
            and self.kills > 0
            and self.lost == self.duplicated == self.paid_twice == 0
            and self.equal
        )


def _ledger_ids(out: Path) -> set[str]:
    return {cid for cid, _ in ledger_rows(out / "ledger.sqlite")}


def run_reference(
    what: str, cmd: list[str], out: Path, env: dict, server: FakeLLMServer | None, read: Callable[[Path], Any]
) -> Reference:
    since = len(server.events()) if server else 0
    attempt = run_with_kill(cmd, out.with_name(out.name + ".log"), env)
    if attempt.rc != 0:
        raise SystemExit(_fail(attempt, f"the uninterrupted {what}"))
    events = server.events(since) if server else []
    startup = min((e[1] for e in events), default=attempt.start + 1.0) - attempt.start
    return Reference(read(out), attempt.end - attempt.start, startup, Counter(e[0] for e in events), _ledger_ids(out))


def run_trial(
    stage: str,
    i: int,
    cmd: list[str],
    out: Path,
    env: dict,
    server: FakeLLMServer | None,
    ref: Reference,
    plan: Callable[[int], Kill],
    kills: int,
    **kw: Any,
) -> tuple[TrialResult, list[Attempt]]:
    """Kill and resume (see ``kill_and_resume``), then account the LLM calls; the caller compares the output."""
    began, since = time.time(), len(server.events()) if server else 0
    attempts = kill_and_resume(cmd, out.with_name(out.name + ".log"), env, plan, kills, **kw)
    killed = [a for a in attempts if a.killed_at is not None]
    result = TrialResult(stage, i, len(killed), [a.moment for a in killed], time.time() - began, False)
    result.detail["attempt_rc"] = [a.rc for a in attempts]
    if attempts[-1].rc != 0:
        result.error = _fail(attempts[-1], f"the resumed {stage}")
    elif server is not None:
        events, ledger = server.events(since), ledger_rows(out / "ledger.sqlite")
        spans = [(a.start, a.end, a.killed_at) for a in attempts]
        repaid = classify_repaid(events, ref.calls, spans, dict(ledger))
        result.paid_twice, result.in_flight = repaid.paid_twice, repaid.in_flight
        result.unrecorded, result.repaid_recorded = repaid.unrecorded, repaid.recorded
        result.recorded_twice = recorded_twice(ledger, ref.ledger)
        result.detail |= {
            "requests": len(events),
            "reference_requests": sum(ref.calls.values()),
            "ledger_calls": len({cid for cid, _ in ledger}),
            "reference_ledger_calls": len(ref.ledger),
            # unrecorded calls: how long before the kill the server had sent the answer (the client still had to
            # read, parse and commit it)
            "unrecorded_answered_ms_before_kill": [round(m * 1e3, 1) for m in repaid.unrecorded_margin_s],
        }
    return result, attempts


# ---------------------------------------------------------------------------------------------- synthesis


def synth_cmd(out: Path, base_url: str, max_seeds: int) -> list[str]:
    """The default synthesis recipe with both LLM roles on the fake server and the embedding screens off."""
    roles = on_server(base_url, expert="fake-expert", reviewer="fake-judge")
    return teams_rl("synthesize", config=SYNTH_RECIPE, output_dir=out, max_seeds=max_seeds, **roles, **NO_EMBEDDINGS)


def read_dataset(out: Path) -> tuple[list[dict], list[dict], dict]:
    """(rows, rejected rows, summary) of a synthesis run."""
    from teams_rl.env.dataset import load_rows

    return load_rows(out / "dataset")


def synth_trial(
    i: int, work: Path, server: FakeLLMServer, ref: Reference, max_seeds: int, rng: random.Random, env: dict
) -> TrialResult:
    out = work / f"synth-{i:02d}"
    total = sum(ref.calls.values())

    def plan(_start: int) -> Kill:
        # 1 in 8 kills lands at a random moment of start-up (imports, seeds, ledger); the rest after the k-th
        # request this process sends, k uniform over what is left, plus up to one request's latency.
        left = max(1, total - len(_ledger_ids(out)))
        if rng.random() < 1 / 8:
            return Kill(
                lambda w: True,
                rng.uniform(0.0, ref.startup_s),
                lambda w, t: f"start-up, {t - w.start:.2f} s after launch",
            )
        k, delay, base = rng.randint(1, left), rng.uniform(0.0, LATENCY_S[1]), server.count()
        return Kill(
            lambda w: server.count() - base >= k, delay, lambda w, t: f"request {k}/{left} +{delay * 1e3:.0f} ms"
        )

    cmd = synth_cmd(out, server.base_url, max_seeds)
    result, _ = run_trial("synthesize", i, cmd, out, env, server, ref, plan, rng.choice((1, 1, 2)))
    if result.error:
        return result
    rows, rejected, summary = read_dataset(out)
    ref_rows, ref_rejected, ref_summary = ref.output
    diff = compare_rows(ref_rows, rows)
    rejected_equal = sorted(map(json.dumps, rejected)) == sorted(map(json.dumps, ref_rejected))
    summary_equal = all(summary.get(k) == v for k, v in ref_summary.items() if k not in SUMMARY_IGNORED)
    result.lost, result.duplicated = diff["lost"], diff["duplicated"]
    result.equal = rows == ref_rows and rejected_equal and summary_equal
    result.detail |= {f"rows_{k}": v for k, v in diff.items()}
    result.detail |= {"rows": len(rows), "rejected_equal": rejected_equal, "summary_equal": summary_equal}
    return result


# ---------------------------------------------------------------------------------------------- trainers


def _quiet() -> None:
    """No weight-loading bars from this process (the stages' own output goes to their logs)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def tiny_model(work: Path) -> str:
    """A ~3 M-parameter random Llama with SmolLM2's real tokenizer and chat template (as the tests build it)."""
    out = work / "tiny-llama"
    if (out / "config.json").exists():
        return str(out)
    _quiet()
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from teams_rl.core.refs import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@dataclass
class TrainOutput:
    state: dict  # the final trainer_state.json ({} when missing)
    weights: dict  # the final adapter's tensors ({} when missing)
    loads: bool


def _train_output(state: Path, adapter: Path, load: Callable[[], Any]) -> TrainOutput:
    from safetensors.torch import load_file

    weights = adapter / "adapter_model.safetensors"
    _quiet()
    try:
        load()
        loads = True
    except Exception:  # noqa: BLE001 - any failure to load is the finding
        loads = False
    return TrainOutput(
        json.loads(state.read_text()) if state.is_file() else {},
        load_file(str(weights)) if weights.is_file() else {},
        loads,
    )


@dataclass
class TrainStage:
    name: str  # the teams-rl command
    prefix: str  # of its run folders and logs: <prefix>-reference, <prefix>-01, ...
    what: str  # the uninterrupted run, in words
    steps: int
    cmd: Callable[[Path], list[str]]
    read: Callable[[Path], TrainOutput]
    server: FakeLLMServer | None = None  # where its LLM calls go, if it makes any
    resumes: bool = False  # from its newest checkpoint (sft); train-policy keeps none and restarts at step 0


def sft_stage(model: str, dataset: Path) -> TrainStage:
    """LoRA SFT (the default recipe) of the tiny model on the soak's reference dataset, a checkpoint every 2 steps."""

    def read(out: Path) -> TrainOutput:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        def load() -> None:
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model), str(out / "adapter"))

        # the final trainer_state.json: the last checkpoint's, written at max_steps
        return _train_output(out / f"checkpoint-{SFT_STEPS}" / "trainer_state.json", out / "adapter", load)

    flags = {
        "model_name_or_path": model,
        "dataset_name": dataset,
        "max_steps": SFT_STEPS,
        "save_strategy": "steps",
        "save_steps": SFT_SAVE_STEPS,
        "eval_strategy": "no",
        "report_to": "none",
        "max_length": 128,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "dataloader_pin_memory": "false",
    }

    def cmd(out: Path) -> list[str]:
        return teams_rl("sft", config=SFT_RECIPE, output_dir=out, **flags)

    return TrainStage(
        "sft", "sft", f"LoRA run of {SFT_STEPS} steps on the tiny model", SFT_STEPS, cmd, read, resumes=True
    )


def policy_stage(model: str, server: FakeLLMServer) -> TrainStage:
    """GRPO (the recipe) on the tiny model, rewriter and reviewer on the fake server, on 8 of the training seeds."""

    def read(out: Path) -> TrainOutput:
        from teams_rl.env.build import select_actions
        from teams_rl.policy import load_policy

        def load() -> None:
            load_policy(str(out / "policy"), select_actions(None), run_seed=42)

        return _train_output(out / "trainer_state.json", out / "policy", load)

    roles = on_server(server.base_url, rewriter="fake-rewriter", reviewer="fake-judge")
    flags = {"model_name_or_path": model, "max_seeds": 8, "max_steps": POLICY_STEPS, "report_to": "none"}

    def cmd(out: Path) -> list[str]:
        return teams_rl("train-policy", config=POLICY_RECIPE, output_dir=out, **flags, **roles, **NO_EMBEDDINGS)

    return TrainStage("train-policy", "policy", f"GRPO run of {POLICY_STEPS} steps", POLICY_STEPS, cmd, read, server)


def train_reference(stage: TrainStage, work: Path, env: dict) -> Reference:
    out = work / f"{stage.prefix}-reference"
    ref = run_reference(stage.name, stage.cmd(out), out, env, stage.server, stage.read)
    if not ref.output.loads or ref.output.state.get("global_step") != stage.steps or not ref.output.weights:
        raise SystemExit(f"the uninterrupted {stage.name} did not leave a loadable output at step {stage.steps}")
    return ref


def _losses(output: TrainOutput) -> list[float]:
    return [h["loss"] for h in output.state.get("log_history", []) if "loss" in h]


def train_trial(stage: TrainStage, i: int, work: Path, ref: Reference, rng: random.Random, env: dict) -> TrialResult:
    """One kill at a random training step (uniform over the steps left, plus up to a step's time), then the same
    command to the end."""
    out = work / f"{stage.prefix}-{i:02d}"
    step_s = ref.wall_s / (2 * stage.steps)  # a rough step time: half the wall is start-up

    def plan(start: int) -> Kill:
        target, delay = rng.randint(start, stage.steps - 1), rng.uniform(0.0, step_s)
        return Kill(
            lambda w: w.progress >= max(target, 1),
            delay,
            lambda w, t: f"step {w.progress}/{stage.steps} +{delay * 1e3:.0f} ms",
        )

    start_step = (lambda: last_complete_checkpoint(out)) if stage.resumes else (lambda: 0)
    cmd = stage.cmd(out)
    result, attempts = run_trial(
        stage.name, i, cmd, out, env, stage.server, ref, plan, 1, total=stage.steps, start_step=start_step
    )
    if result.error:
        return result
    final, reference = stage.read(out), ref.output
    steps = step_check(final.state.get("log_history", []), stage.steps)
    weight_diff = max_abs_diff(final.weights, reference.weights)
    result.lost, result.duplicated = steps["lost"], steps["repeated"]
    result.equal = (
        final.loads
        and final.state.get("global_step") == stage.steps
        and steps == {"lost": 0, "repeated": 0}
        and weight_diff is not None
        and weight_diff <= WEIGHT_ATOL
    )
    result.detail |= {
        "global_step": final.state.get("global_step"),
        "reference_global_step": stage.steps,
        "loads": final.loads,
        "resumed_from_step": [a.start_step for a in attempts[1:]],
        # trained again after a kill: from where the next attempt started to where the killed one had got
        "steps_redone": sum(max(0, a.progress - b.start_step) for a, b in zip(attempts, attempts[1:], strict=False)),
        "max_abs_loss_diff": max(
            (abs(a - b) for a, b in zip(_losses(final), _losses(reference), strict=False)), default=None
        ),
        "max_abs_weight_diff": weight_diff,
    }
    return result


# ---------------------------------------------------------------------------------------------- report


def _verdict(r: TrialResult, rich: bool = True) -> str:
    if r.error:
        return f"[red]no: {r.error[:60]}[/red]" if rich else f"NO - {r.error}"
    return "yes" if r.equal else "[red]no[/red]" if rich else "NO"


def _diff(x: float | None) -> str:
    return "-" if x is None else "0" if x == 0 else f"{x:.1e}"


def _trial_line(r: TrialResult, n: int) -> str:
    parts = [f"{r.kills} kill(s) ({'; '.join(r.moments)})"]
    if r.stage == "synthesize":
        parts.append(f"lost {r.lost}, dup. {r.duplicated}")
    else:
        d = r.detail
        parts.append(f"resumed from {d.get('resumed_from_step')}, steps lost {r.lost}, repeated {r.duplicated}")
        parts.append(f"weight diff {_diff(d.get('max_abs_weight_diff'))}")
    if r.stage != "sft":
        parts.append(f"paid twice {r.paid_twice} (+{r.in_flight} in flight)")
    parts += [f"equal {_verdict(r, rich=False)}", f"{r.wall_s:.1f} s"]
    return f"  trial {r.trial}/{n}: " + ", ".join(parts)


def _print_table(stage: str, results: Sequence[TrialResult], console) -> None:
    from rich.table import Table

    training = stage != "synthesize"
    columns: list[tuple[str, Callable[[TrialResult], Any]]] = [
        ("trial", lambda r: r.trial),
        ("kills", lambda r: r.kills),
        ("where the kills landed", lambda r: "; ".join(r.moments) or "-"),
        ("steps lost" if training else "rows lost", lambda r: r.lost),
        ("steps rep." if training else "rows dup.", lambda r: r.duplicated),
    ]
    if stage != "sft":
        columns += [
            ("paid twice (unrec.+rec.)", lambda r: f"{r.paid_twice} ({r.unrecorded}+{r.repaid_recorded})"),
            ("in flight", lambda r: r.in_flight),
            ("recorded twice", lambda r: r.recorded_twice),
        ]
    if training:
        columns += [
            ("from step", lambda r: ",".join(map(str, r.detail.get("resumed_from_step", []))) or "-"),
            ("steps redone", lambda r: r.detail.get("steps_redone", "-")),
            ("final step", lambda r: f"{r.detail.get('global_step')}/{r.detail.get('reference_global_step')}"),
            ("loads", lambda r: "yes" if r.detail.get("loads") else "no"),
            ("weight diff", lambda r: _diff(r.detail.get("max_abs_weight_diff"))),
        ]
    else:
        columns += [("rows", lambda r: r.detail.get("rows", "-"))]
    columns += [("equal" if training else "equal to uninterrupted", _verdict), ("wall s", lambda r: f"{r.wall_s:.1f}")]
    table = Table(title=f"teams-rl {stage}: kill -9, then the same command", title_justify="left")
    for name, _ in columns:
        table.add_column(name, justify="left" if name.startswith("where") else "right")
    for r in results:
        table.add_row(*(str(cell(r)) for _, cell in columns))
    console.print(table)


LEGEND = (
    "paid twice: server executions beyond the uninterrupted run's, of calls answered before the kill - unrec.: the "
    "answer died with the process before the ledger committed it (the JSON has how long before the kill the server "
    "sent it); rec.: the ledger held it and it was asked again.\nin flight: calls the server was still answering "
    "when the process died (a kill -9 loses them). recorded twice: ledger rows beyond one per call, or calls the "
    "uninterrupted run never recorded.\nsteps lost / rep.(eated): entries with a loss in the final "
    "trainer_state.json log history, against 1..N; from step: the checkpoint the next run started from (train-policy "
    "restarts at 0: it keeps no trainer checkpoints).\nequal (trainers): loads, reaches step N with 1..N each logged "
    "once, and weight diff (max abs over the final adapter's tensors vs the uninterrupted run's) "
    f"<= {WEIGHT_ATOL:g}."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="synthesis trials (default: 10)")
    parser.add_argument("--sft-trials", type=int, default=3, help="SFT trials (default: 3)")
    parser.add_argument("--policy-trials", type=int, default=3, help="train-policy (GRPO) trials (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments (default: 0)")
    parser.add_argument("--seeds", type=int, default=24, help="synthesis seeds (default: 24, the recipe's)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"results file (default: {DEFAULT_JSON})")
    parser.add_argument("--workdir", type=Path, default=None, help="where the runs go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders (always kept on a miss)")
    args = parser.parse_args(argv)
    if min(args.trials, args.sft_trials, args.policy_trials) < 0 or args.seeds < 1:
        parser.error("trial counts must be >= 0 and --seeds >= 1")

    from rich.console import Console

    console = Console(width=max(Console().width, 200))
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="crash-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    env = _env()
    began = time.time()
    results: dict[str, list[TrialResult]] = {"synthesize": [], "sft": [], "train-policy": []}
    console.print(f"crash soak, seed {args.seed}; runs and logs in {work}")
    server = FakeLLMServer()
    try:
        console.print(f"[bold]synthesize[/bold]: an uninterrupted run of {args.seeds} seeds ...")
        out = work / "synth-reference"
        ref = run_reference("synthesis", synth_cmd(out, server.base_url, args.seeds), out, env, server, read_dataset)
        rows, rejected, _ = ref.output
        console.print(
            f"  {len(rows)} rows, {len(rejected)} eliminated, {sum(ref.calls.values())} LLM requests, "
            f"{ref.wall_s:.1f} s"
        )
        for i in range(1, args.trials + 1):
            results["synthesize"].append(synth_trial(i, work, server, ref, args.seeds, rng, env))
            console.print(_trial_line(results["synthesize"][-1], args.trials))
        model = tiny_model(work) if args.sft_trials or args.policy_trials else ""
        stages = (
            (sft_stage(model, out / "dataset"), args.sft_trials),
            (policy_stage(model, server), args.policy_trials),
        )
        for stage, n in stages:
            if not n:
                continue
            console.print(f"[bold]{stage.name}[/bold]: an uninterrupted {stage.what} ...")
            tref = train_reference(stage, work, env)
            requests = f", {sum(tref.calls.values())} LLM requests" if stage.server else ""
            console.print(f"  {tref.wall_s:.1f} s{requests}")
            for i in range(1, n + 1):
                results[stage.name].append(train_trial(stage, i, work, tref, rng, env))
                console.print(_trial_line(results[stage.name][-1], n))
    finally:
        server.close()

    wall = time.time() - began
    console.print()
    for stage_name, rs in results.items():
        if rs:
            _print_table(stage_name, rs, console)
    console.print(LEGEND)
    everything = [r for rs in results.values() for r in rs]
    missed = [r for r in everything if not r.meets_goal]
    kills = {name: sum(r.kills for r in rs) for name, rs in results.items()}
    verdict = "meets" if not missed else f"MISSES ({len(missed)} trial(s))"
    console.print(
        f"goal: 0 lost, 0 duplicated, 0 paid twice, equal in every trial - {verdict}; kill -9 count: "
        + ", ".join(f"{name} {n}" for name, n in kills.items())
        + f"; {len(everything)} trials in {wall:.0f} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "seed": args.seed,
        "wall_s": wall,
        "meets_goal": not missed,
        "kills": kills,
        "latency_s": LATENCY_S,
        "ignored_summary_fields": SUMMARY_IGNORED,
        "weight_atol": WEIGHT_ATOL,
        "trials": [{**asdict(r), "meets_goal": r.meets_goal} for r in everything],
    }
    args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    console.print(f"results written to {args.json}")
    if missed or args.keep:
        console.print(f"run folders and logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
