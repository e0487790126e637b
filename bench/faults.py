"""Bench: the fault table. ``OpenAIBackend`` seen through the ledger, as every stage sees it (``RoleClient``; the
reviewer's ``judge_logprob`` for the scoring cases), against the fake OpenAI-compatible server (in its own process)
misbehaving one way per case: rate limits, 5xx, timeouts, broken connections, bodies that do not parse, answers with
nothing in them, missing logprobs, slow trickles, and the user's own mistakes (a bad key, an unknown model, nothing
listening).

Each case must end as the one outcome it expects: ``ok``, ``retried, then ok``, ``recorded`` on the row (an error, or
the finish reason that explains a short or empty text) or one ``TeamsRLError``; with the retries bounded, a
``Retry-After`` waited, the ledger caching what succeeded and counting what failed; and never a crash (any other
exception), a hang (each case runs under a watchdog), a silently empty row (ok, no text, no finish reason saying
why) or the API key (which some cases' servers echo back) on a row, in the ledger or in a log line.

    python bench/faults.py [--json bench/results/faults.json]

Prints the table, writes the JSON, and exits 1 if any case fails."""

from __future__ import annotations

import argparse
import importlib.util
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import re
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = "fake-model"
KEY_ENV = "TEAMS_RL_FAULTS_BENCH_KEY"
KEY = "sk-faults-Xq7Vt2mK4pL8sN3wY6rB"  # a fake key; some servers below echo it back in their error bodies
WATCHDOG_S = 20.0  # a case still running after this is a hang
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.02, 0.5  # OpenAIBackend's own knobs, shrunk so the table runs in seconds

OK, RETRIED, RECORDED, USER_ERROR = "ok", "retried, then ok", "recorded", "TeamsRLError"
CRASH, HANG = "CRASH", "HANG"


# ---------------------------------------------------------------------------------------------- the cases


def _first(n: int) -> Callable[[Any], bool]:
    """A ``hang`` predicate true for the first ``n`` requests only."""
    seen = itertools.count()
    return lambda messages: next(seen) < n


def _echo_key(status: int, auth: str) -> str:
    # The key starts 12 characters before the backend's 200-character cut of error messages: masking after
    # cutting would leave those 12 behind.
    said = " request rejected, Authorization: "
    return "x" * (188 - len(said) - len("Bearer ")) + said + auth


def _eight_words(messages: Any) -> str:
    return "one two three four five six seven eight"


@dataclass(frozen=True)
class Case:
    name: str
    did: str  # what the server does, for the table
    expect: str  # OK, RETRIED, RECORDED or USER_ERROR
    attempts: int | None  # requests the server must see (None: nothing listens)
    server: Callable[[], dict[str, Any]] | None = None  # FakeOpenAIServer's keyword arguments (built in its process)
    kind: str = "generate"  # "generate" through the expert's client, or "review": judge_logprob through the reviewer
    max_new_tokens: int = 16
    timeout_s: float = 2.0
    max_retries: int = 2
    min_wall_s: float = 0.0  # e.g. a Retry-After the backend must have waited
    finish: str | None = None  # the finish reason a recorded row must carry
    error_has: str = ""  # text the recorded error (or the TeamsRLError) must contain


CASES: tuple[Case, ...] = (
    Case(
        "429 + Retry-After",
        "429, Retry-After: 0.3, once",
        RETRIED,
        2,
        lambda: {"failures": [429], "retry_after": "0.3"},
        min_wall_s=0.3,
    ),
    Case(
        "429, no Retry-After",
        "429 without Retry-After, twice",
        RETRIED,
        3,
        lambda: {"failures": [429, 429], "retry_after": None},
    ),
    Case(
        "429 forever",
        "429, Retry-After: 0, always",
        RECORDED,
        3,
        lambda: {"fail": lambda body: 429},
        error_has="rate limited",
    ),
    Case("500", "500 once", RETRIED, 2, lambda: {"failures": [500]}),
    Case("503", "503 once", RETRIED, 2, lambda: {"failures": [503]}),
    Case(
        "500 forever, key echoed",
        "500 always, body echoes the Authorization header",
        RECORDED,
        3,
        lambda: {"fail": lambda body: 500, "error_body": _echo_key},
        error_has="http 500",
    ),
    Case(
        "timeout once",
        "first request hangs past timeout_s",
        RETRIED,
        2,
        lambda: {"hang": _first(1), "hang_s": 10.0},
        timeout_s=0.5,
    ),
    Case(
        "timeout",
        "every request hangs past timeout_s",
        RECORDED,
        2,
        lambda: {"hang": lambda messages: True, "hang_s": 10.0},
        timeout_s=0.5,
        max_retries=1,
        error_has="timeout",
    ),
    Case("dropped mid-body", "headers + half the JSON, then closes", RETRIED, 2, lambda: {"failures": ["drop"]}),
    Case(
        "dropped mid-body forever",
        "headers + half the JSON, then closes, always",
        RECORDED,
        3,
        lambda: {"fail": lambda body: "drop"},
        error_has="connection error",
    ),
    Case("disconnect", "closes the socket without answering", RETRIED, 2, lambda: {"failures": ["disconnect"]}),
    Case("invalid JSON", "200 with a body that does not parse", RETRIED, 2, lambda: {"failures": ["invalid_json"]}),
    Case(
        "invalid JSON forever",
        "200 with a body that does not parse, always",
        RECORDED,
        3,
        lambda: {"fail": lambda body: "invalid_json"},
        error_has="invalid JSON",
    ),
    Case("HTML page", "200 with a proxy's text/html page", RETRIED, 2, lambda: {"failures": ["not_json"]}),
    Case(
        "empty choices",
        '200 with "choices": []',
        RECORDED,
        1,
        lambda: {"failures": ["empty_choices"]},
        error_has="no choices",
    ),
    Case(
        "no content",
        "200, content null, no finish_reason",
        RECORDED,
        1,
        lambda: {"failures": ["no_content"]},
        error_has="no content",
    ),
    Case(
        "refusal",
        "200, content null, a refusal text, finish stop",
        RECORDED,
        1,
        lambda: {"failures": ["refusal"]},
        error_has="refused",
    ),
    Case(
        "finish length",
        "8 words asked for 4 tokens: cut",
        RECORDED,
        1,
        lambda: {"reply": _eight_words},
        max_new_tokens=4,
        finish="length",
    ),
    Case(
        "finish content_filter",
        "content null, finish content_filter",
        RECORDED,
        1,
        lambda: {"content_filter": lambda messages: True},
        finish="content_filter",
    ),
    Case(
        "no logprobs, answer Yes",
        "judge_logprob: no logprobs, answers 'Yes'",
        OK,
        1,
        lambda: {"logprobs": False, "reply": lambda messages: "Yes"},
        kind="review",
    ),
    Case(
        "no logprobs, answer off",
        "judge_logprob: no logprobs, answers 'Perhaps'",
        RECORDED,
        1,
        lambda: {"logprobs": False, "reply": lambda messages: "Perhaps"},
        kind="review",
        error_has="no logprobs",
    ),
    Case(
        "logprobs refused",
        "judge_logprob: 400 to any request for logprobs",
        RETRIED,
        2,
        lambda: {
            "fail": lambda body: 400 if body.get("logprobs") else None,
            "error_body": lambda status, auth: "logprobs are not supported for this model",
            "reply": lambda messages: "No",
        },
        kind="review",
    ),
    Case(
        "slow trickle",
        "body in 10 pieces over 0.4 s, timeout 1.5 s",
        OK,
        1,
        lambda: {"trickle_s": 0.4},
        timeout_s=1.5,
        min_wall_s=0.4,
    ),
    Case(
        "trickle past timeout",
        "body in 30 pieces over 3 s (0.1 s apart), timeout 0.6 s",
        RECORDED,
        2,
        lambda: {"trickle_s": 3.0, "trickle_chunks": 30},
        timeout_s=0.6,
        max_retries=1,
        error_has="timeout",
    ),
    Case(
        "401, key echoed",
        "401, body echoes the Authorization header",
        USER_ERROR,
        1,
        lambda: {"failures": [401], "error_body": _echo_key},
        error_has="rejected the API key",
    ),
    Case(
        "404 unknown model",
        "404 naming the model",
        USER_ERROR,
        1,
        lambda: {"failures": [404], "error_body": lambda status, auth: f"The model `{MODEL}` does not exist."},
        error_has="expert_model",
    ),
    Case("nothing listening", "connection refused", USER_ERROR, None, None, error_has="cannot reach"),
)
BY_NAME = {case.name: case for case in CASES}


# ---------------------------------------------------------------------------------------------- the server process


def _fake_server_class() -> type:
    # tests/ is not a package; load the server module by path.
    spec = importlib.util.spec_from_file_location("fake_openai_server", ROOT / "tests" / "fake_openai_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FakeOpenAIServer


def _serve(conn) -> None:
    """The fake server, in its own process as a real one would be. ``("start", case)`` (re)starts it configured for
    that case and answers its URL; ``"count"`` answers the requests it received; ``"stop"`` ends it."""
    server_class = _fake_server_class()
    server = None
    while True:
        message = conn.recv()
        if message == "count":
            conn.send(server.requests if server is not None else 0)
            continue
        if server is not None:
            server.stop()
            server = None
        if message == "stop":
            return
        _, name = message
        server = server_class(**BY_NAME[name].server()).start()
        conn.send(server.base_url)


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# ---------------------------------------------------------------------------------------------- one case


@dataclass
class Row:
    case: str
    server: str
    expect: str
    outcome: str = ""
    detail: str = ""
    attempts: int | None = None
    wall_s: float = 0.0
    verdict: str = "FAIL"
    problems: list[str] = field(default_factory=list)


def _drive(case: Case, client) -> tuple[Any, str]:
    """Send the case's one request the way a stage would; returns (the result, what the stage made of it)."""
    from teams_rl.env.reviewer import Reviewer, ReviewItem
    from teams_rl.llm.base import GenerationRequest, SamplingParams

    if case.kind == "generate":
        request = GenerationRequest(
            ({"role": "user", "content": f"fault case: {case.name}"},),
            SamplingParams(max_new_tokens=case.max_new_tokens),
        )
        (result,) = client.generate([request])
        return result, ""
    seen: list = []
    score = client.score
    client.score = lambda requests: seen.extend(out := score(requests)) or out  # keep the ScoreResult
    (review,) = Reviewer(client, {"judge_logprob": 1.0}).review([ReviewItem("Name a colour.", "Name a rare colour.")])
    p_yes = review.scores["judge_logprob"]
    made = "reviewer: no score (a failure)" if p_yes is None else f"reviewer: P(Yes)={p_yes:.2f}"
    return seen[0], made


def _classify(case: Case, result: Any, attempts: int | None) -> tuple[str, str, list[str]]:
    """(outcome, detail, problems) of a result the backend returned."""
    problems = []
    if case.kind == "generate":
        explained = result.finish_reason in ("length", "content_filter")
        if result.ok and not result.text and not explained:
            return "SILENT EMPTY", f"ok, no text, finish_reason {result.finish_reason}", ["a silently empty row"]
        if not result.ok:
            if not result.error or result.text:
                problems.append("a failed row must have an error and no text")
            return RECORDED, f"error: {result.error}", problems
        if explained:
            return RECORDED, f"finish_reason {result.finish_reason}, text {result.text!r}", problems
        return (RETRIED if (attempts or 0) > 1 else OK), f"text {result.text!r}", problems
    if not result.ok:
        if not result.error:
            problems.append("a failed score must have an error")
        return RECORDED, f"error: {result.error}", problems
    if not any(math.isfinite(lp) for lp in result.logprobs):
        return "SILENT EMPTY", "ok, but no choice has a probability", ["a silently empty score"]
    probs = ", ".join(f"{c}={p:.2f}" for c, p in zip(("Yes", "No"), result.probs, strict=False))
    return (RETRIED if (attempts or 0) > 1 else OK), f"probs {probs}", problems


def _leaks(text: str) -> bool:
    """Any 8 characters in a row of the key, anywhere in ``text``."""
    return any(KEY[i : i + 8] in text for i in range(len(KEY) - 7))


def _ledger_dump(path: Path) -> tuple[int, int, str]:
    """(cached calls, counted errors, every stored value as text) of a ledger file."""
    db = sqlite3.connect(path)
    try:
        calls = db.execute("SELECT * FROM calls").fetchall()
        errors = db.execute("SELECT * FROM errors").fetchall()
    finally:
        db.close()
    return len(calls), len(errors), json.dumps([calls, errors], default=str)


def run_case(case: Case, conn) -> Row:
    from teams_rl.core.errors import TeamsRLError
    from teams_rl.llm.ledger import Ledger
    from teams_rl.llm.openai_backend import OpenAIBackend
    from teams_rl.llm.role_client import RoleClient

    row = Row(case.name, case.did, case.expect)
    if case.server is not None:
        conn.send(("start", case.name))
        base_url = conn.recv()
    else:
        base_url = _refused_url()
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("teams_rl", "openai", "httpx", "httpcore", "httpx2", "httpcore2")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
        ledger = Ledger(Path(tmp) / "ledger.sqlite")
        backend = OpenAIBackend(
            MODEL,
            base_url=base_url,
            api_key_env=KEY_ENV,
            timeout_s=case.timeout_s,
            max_retries=case.max_retries,
            role="expert",
        )
        client = RoleClient(backend, ledger, "reviewer" if case.kind == "review" else "expert")
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["result"], box["made"] = _drive(case, client)
            except TeamsRLError as exc:
                box["user_error"] = exc
            except BaseException as exc:  # noqa: BLE001 - a crash is what the table looks for
                box["crash"] = exc

        worker = threading.Thread(target=work, name=f"fault-{case.name}", daemon=True)
        start = time.perf_counter()
        worker.start()
        worker.join(WATCHDOG_S)
        row.wall_s = time.perf_counter() - start
        for logger in loggers:
            logger.removeHandler(handler)
        if case.server is not None:
            row.attempts = _count(conn, case.attempts)
        texts = [logs.getvalue()]
        if worker.is_alive():
            row.outcome, row.detail = HANG, f"still running after {WATCHDOG_S:g} s"
            row.problems.append("a hang")
        elif "crash" in box:
            exc = box["crash"]
            row.outcome, row.detail = CRASH, f"{type(exc).__name__}: {exc}"
            row.problems.append(f"a crash ({type(exc).__name__})")
        elif "user_error" in box:
            exc = box["user_error"]
            row.outcome, row.detail = USER_ERROR, str(exc)
            if "\n" in str(exc):
                row.problems.append("the error is more than one line")
        else:
            row.outcome, row.detail, problems = _classify(case, box["result"], row.attempts)
            row.problems += problems
            if box["made"]:
                row.detail += f"; {box['made']}"
        texts.append(row.detail)
        if not worker.is_alive():
            cached, errors, stored = _ledger_dump(Path(tmp) / "ledger.sqlite")
            texts.append(stored)
            _check_ledger(case, row, cached, errors)
        ledger.close()
    _check(case, row)
    if any(_leaks(text) for text in texts):
        row.problems.append("the API key leaked (row, ledger or log)")
    row.detail = " ".join(row.detail.split())
    row.verdict = "FAIL" if row.problems else "PASS"
    return row


def _count(conn, expected: int | None) -> int:
    """The requests the server saw; a retry sent as the client gave up may reach it a moment later."""
    deadline = time.monotonic() + 1.0
    while True:
        conn.send("count")
        seen = conn.recv()
        if expected is None or seen >= expected or time.monotonic() > deadline:
            return seen
        time.sleep(0.02)


def _check_ledger(case: Case, row: Row, cached: int, errors: int) -> None:
    """The ledger caches a row that succeeded (a resume will not pay for it twice) and counts one that failed (a
    resume will try it again); a user error stores nothing."""
    if row.outcome not in (OK, RETRIED, RECORDED, USER_ERROR):
        return  # already a failure; what the ledger holds then says nothing more
    if row.outcome in (OK, RETRIED) or (row.outcome == RECORDED and row.detail.startswith("finish_reason")):
        want = (1, 0)
    elif row.outcome == RECORDED:
        want = (0, 1)
    else:
        want = (0, 0)
    if (cached, errors) != want:
        row.problems.append(f"ledger holds {cached} cached call(s) and {errors} error(s), expected {want}")


def _check(case: Case, row: Row) -> None:
    if row.outcome != case.expect and not row.problems:
        row.problems.append(f"expected {case.expect}, got {row.outcome}")
    if case.attempts is not None and row.attempts != case.attempts:
        row.problems.append(f"{row.attempts} request(s) reached the server, expected {case.attempts}")
    if row.wall_s < case.min_wall_s:
        row.problems.append(f"took {row.wall_s:.2f} s, less than the {case.min_wall_s:g} s it must wait")
    if case.finish is not None and f"finish_reason {case.finish}" not in row.detail:
        row.problems.append(f"the row does not carry finish_reason {case.finish}")
    if case.error_has and case.error_has not in row.detail:
        row.problems.append(f"the error does not say {case.error_has!r}")


# ---------------------------------------------------------------------------------------------- the table


def run(cases: tuple[Case, ...] = CASES) -> list[Row]:
    from teams_rl.llm.openai_backend import OpenAIBackend

    OpenAIBackend.backoff_base_s, OpenAIBackend.backoff_cap_s = BACKOFF_BASE_S, BACKOFF_CAP_S
    os.environ[KEY_ENV] = KEY
    import openai  # noqa: F401 - imported here (~1 s, once), not inside the first case's wall time

    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(child_conn,), daemon=True)
    server.start()
    try:
        return [run_case(case, conn) for case in cases]
    finally:
        conn.send("stop")
        server.join(timeout=10)
        if server.is_alive():
            server.kill()


def print_table(rows: list[Row], wall_s: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="OpenAIBackend under faults (fake OpenAI-compatible server, one request per case)")
    for name, justify in (
        ("case", "left"),
        ("what the server did", "left"),
        ("outcome", "left"),
        ("row / error", "left"),
        ("attempts", "right"),
        ("wall s", "right"),
        ("verdict", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")
    for row in rows:
        detail = re.sub(r"x{10,}", "xxx...", row.detail)  # the padding of the key-echo cases
        detail = detail if len(detail) <= 90 else detail[:87] + "..."
        verdict = "[green]PASS[/]" if row.verdict == "PASS" else "[bold red]FAIL[/]"
        attempts = "-" if row.attempts is None else str(row.attempts)
        table.add_row(row.case, row.server, row.outcome, detail, attempts, f"{row.wall_s:.2f}", verdict)
    console = Console(width=None if sys.stdout.isatty() else 180)
    console.print(table)
    failed = [row for row in rows if row.verdict != "PASS"]
    for row in failed:
        console.print(f"[bold red]FAIL[/] {row.case}: {'; '.join(row.problems)}")
    console.print(f"{len(rows) - len(failed)}/{len(rows)} cases pass, {wall_s:.1f} s in all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--json", default=str(ROOT / "bench" / "results" / "faults.json"), help="where to write the rows as JSON"
    )
    parser.add_argument("--case", action="append", choices=list(BY_NAME), help="run only this case (repeatable)")
    args = parser.parse_args(argv)
    cases = tuple(BY_NAME[name] for name in args.case) if args.case else CASES
    start = time.perf_counter()
    rows = run(cases)
    wall_s = time.perf_counter() - start
    print_table(rows, wall_s)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "passed": sum(row.verdict == "PASS" for row in rows),
        "failed": sum(row.verdict != "PASS" for row in rows),
        "wall_s": round(wall_s, 2),
        "settings": {"watchdog_s": WATCHDOG_S, "backoff_base_s": BACKOFF_BASE_S, "backoff_cap_s": BACKOFF_CAP_S},
        "cases": [{**vars(row), "wall_s": round(row.wall_s, 3), **_settings(BY_NAME[row.case])} for row in rows],
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if report["failed"] else 0


def _settings(case: Case) -> dict[str, Any]:
    return {"timeout_s": case.timeout_s, "max_retries": case.max_retries, "expected_attempts": case.attempts}


if __name__ == "__main__":
    sys.exit(main())
