"""Running the plan: one process per stage, output teed to ``logs/``, ``pipeline.json`` as the record of what
finished, a lock per run folder, ``--redo``, and the ``teams-rl run`` command."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.guard import move_aside
from teams_rl.core.recipes import parse_args
from teams_rl.pipeline.plan import PipelineArguments, Stage, plan
from teams_rl.pipeline.state import read_state, status_of, write_state
from teams_rl.pipeline.validate import validate

logger = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How to run the pipeline now (not part of the experiment)."""

    dry_run: bool = field(
        default=False, metadata={"help": "Print the stages, their commands and what is done; run nothing."}
    )
    redo: str | None = field(
        default=None,
        metadata={"help": "Run this stage and every later one again; their old outputs move to RUN_DIR/superseded/."},
    )


def _supersede(run_dir: Path, stages: list[Stage], first: str, state: dict) -> None:
    names = [s.name for s in stages]
    if first not in names:
        raise TeamsRLError(f"--redo {first}: not a stage of this pipeline ({', '.join(names)})", field="redo")
    later = stages[names.index(first) :]
    move_aside(run_dir, [path for stage in later for path in stage.outputs])
    for stage in later:
        state["stages"].pop(stage.name, None)
    write_state(run_dir, state)


def _tee(command: list[str], log: Path) -> int:
    """Run a stage, streaming its output to the console and to its log file (progress bars included)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        out.write(f"\n$ {shlex.join(command)}\n".encode())
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        try:
            while chunk := proc.stdout.read1(65536):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                out.write(chunk)
        except KeyboardInterrupt:
            proc.wait()
            raise
        return proc.wait()


def execute(
    args: PipelineArguments, stages: list[Stage], recipe: str | None, redo: str | None = None, console=None
) -> dict:
    """Run what is not done yet, in order; returns the final state. Raises on a stage that fails."""
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _lock(run_dir):
        return _execute(args, stages, recipe, redo, console, run_dir)


@contextlib.contextmanager
def _lock(run_dir: Path):
    """One pipeline per run folder at a time (a second one would interleave stages and corrupt the state)."""
    import fcntl

    with (run_dir / ".pipeline.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TeamsRLError("another `teams-rl run` is using this run folder", file=str(run_dir)) from None
        yield


def _execute(args, stages, recipe, redo, console, run_dir: Path) -> dict:
    state = read_state(run_dir)
    if redo:
        _supersede(run_dir, stages, redo, state)
    changed = [s.name for s in stages if status_of(s, state) == "changed"]
    if changed:
        raise TeamsRLError(
            f"stage '{changed[0]}' finished with another recipe or input than it has now: re-run with "
            f"--redo {changed[0]} (its old outputs move to superseded/), or use a new run_dir",
            file=recipe,
        )
    state["recipe"] = recipe
    state["pipeline"] = dataclasses.asdict(args)
    for stage in stages:
        status = status_of(stage, state)
        if status in ("done", "nothing to do"):
            _say(console, f"[bold]{stage.name}[/bold]: {stage.note or 'done, skipped'}")
            continue
        _say(console, f"[bold]{stage.name}[/bold]: {'resuming' if status != 'to run' else 'running'}")
        began = time.time()
        entry = state["stages"][stage.name] = {
            "status": "running",
            "fingerprint": stage.fingerprint,
            "started": began,
            "commands": [shlex.join(c) for c in stage.commands],
        }
        write_state(run_dir, state)
        try:
            for command in stage.commands:
                code = _tee(command, run_dir / "logs" / f"{stage.name}.log")
                if code != 0:
                    entry.update(status="failed", exit_code=code, wall_s=time.time() - began)
                    write_state(run_dir, state)
                    raise StageFailed(stage.name, code, run_dir)
        except KeyboardInterrupt:
            entry.update(status="interrupted", wall_s=time.time() - began)
            write_state(run_dir, state)
            raise
        entry.update(status="done", finished=time.time(), wall_s=time.time() - began)
        write_state(run_dir, state)
    return state


class StageFailed(Exception):
    def __init__(self, stage: str, code: int, run_dir: Path):
        super().__init__(
            f"stage '{stage}' failed (exit code {code}); its log: {run_dir / 'logs' / (stage + '.log')}. "
            "Fix the cause and run the same command again: finished stages are skipped and this one "
            "resumes from its checkpoint or ledger"
        )
        self.code = code


def _say(console, text: str) -> None:
    if console is not None:
        console.print(text)
    else:
        logger.info(text)


DESCRIPTION = """The whole method from one recipe: train-policy, synthesize (and a random baseline on the same seeds),
sft, evaluate, push, each stage a process writing into run_dir. Finished stages are skipped, a killed one resumes
from its ledger or checkpoint, a changed one is refused until --redo. Ends with run_dir/report.md and report.html.
Example: teams-rl run --config recipes/smollm2-135m/pipeline.yaml [--dry-run] [--redo STAGE] [--key value ...]"""


def cli(argv: list[str]) -> None:
    """``teams-rl run --config recipes/<model>/pipeline.yaml [--dry-run] [--redo STAGE] [--key value ...]``."""
    from rich.console import Console

    from teams_rl.pipeline.report import print_plan, write_report

    (args, options), recipe = parse_args([PipelineArguments, RunOptions], argv, "teams-rl run", DESCRIPTION)
    console = Console()
    stages = plan(args, recipe)
    validate(stages, recipe)
    run_dir = Path(args.run_dir)
    if options.dry_run:
        print_plan(stages, read_state(run_dir), run_dir, console)
        return
    try:
        execute(args, stages, recipe, options.redo, console)
    except StageFailed as err:
        write_report(run_dir, stages)
        console.print(f"[red]error:[/red] {err}", highlight=False)
        raise SystemExit(2 if err.code == 2 else 1) from None
    report = write_report(run_dir, stages)
    console.print(f"report: [bold]{report}[/bold] and [bold]{report.with_suffix('.html')}[/bold]")
