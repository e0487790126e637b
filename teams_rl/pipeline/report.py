"""The pipeline's report: ``report.md`` and ``report.html`` in the run folder (the numbers that matter and the
plots of every stage), and the ``--dry-run`` plan table."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from teams_rl.core.files import atomic_write_text
from teams_rl.pipeline.state import read_state, status_of

PLOTS = [  # (path under the run folder, caption)
    ("plots/reward.png", "Policy training: reward per step"),
    ("plots/action_mix.png", "Policy training: action probabilities"),
    ("plots/action_mix_by_policy.png", "Actions kept in the dataset: trained policy vs random"),
    ("eval/plots/actions.png", "Dataset (the policy's): actions kept and eliminated"),
    ("eval/plots/lengths.png", "Dataset (the policy's): instruction and response lengths"),
    ("eval/plots/depth_and_eliminations.png", "Dataset (the policy's): depth and eliminations"),
    ("eval/plots/scores.png", "Dataset (the policy's): reviewer scores"),
    ("sft/plots/loss.png", "SFT: train and eval loss"),
    ("eval/plots/benchmarks.png", "lm-eval: base vs tuned"),
    ("eval/plots/privacy_roc_min_k.png", "Membership inference: ROC (Min-K% Prob)"),
    ("eval/plots/privacy_roc_neg_loss.png", "Membership inference: ROC (loss)"),
]


def print_plan(stages, state: dict, run_dir: Path, console) -> None:
    """The ``--dry-run`` view: each stage, whether it is done, and the exact commands it runs."""
    from rich.table import Table

    table = Table(title=f"teams-rl run: {run_dir}")
    for name in ("stage", "status", "recipe"):
        table.add_column(name, overflow="fold")
    for stage in stages:
        status = status_of(stage, state)
        entry = state["stages"].get(stage.name, {})
        if status == "done" and entry.get("wall_s") is not None:
            status += f" ({_duration(entry['wall_s'])})"
        table.add_row(stage.name, status, stage.recipe or stage.note)
    console.print(table)
    for stage in stages:
        for command in stage.commands:
            console.print(f"[bold]{stage.name}[/bold]: {shlex.join(_short(command))}", soft_wrap=True, highlight=False)


def _short(command: list[str]) -> list[str]:
    """``python -m teams_rl.cli X`` reads as ``teams-rl X`` in the plan."""
    if len(command) > 2 and command[1:3] == ["-m", "teams_rl.cli"]:
        return ["teams-rl", *command[3:]]
    return command


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def write_report(run_dir: Path, stages) -> Path:
    """Write report.md and report.html from what the stages left in the run folder; returns report.md."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    policy_metrics = _load(run_dir / "eval" / "metrics.json")
    random_metrics = _load(run_dir / "baseline-random" / "eval" / "metrics.json")
    if policy_metrics and random_metrics:
        from teams_rl.evaluate.plots import action_mix_by_policy

        action_mix_by_policy(
            {_policy_label(run_dir): policy_metrics, "random": random_metrics},
            run_dir / "plots" / "action_mix_by_policy.png",
        )
    lines = [
        f"# teams-rl run: `{run_dir.name}`",
        "",
        f"Recipe `{state.get('recipe')}`; report written {time.strftime('%Y-%m-%d %H:%M')}. TeaMs-RL "
        "([arXiv 2403.08694](https://arxiv.org/abs/2403.08694)): a trained instructor picks the rewrites, the "
        "expert executes and answers them, a model is fine-tuned on the result.",
        "",
    ]
    lines += _stage_table(stages, state)
    lines += _summary(run_dir, policy_metrics, random_metrics)
    lines += _comparison(run_dir)
    lines += _queries(run_dir)
    lines += _policy(run_dir)
    lines += _evaluation(run_dir)
    lines += ["## Plots", ""]
    for rel, caption in PLOTS:
        if (run_dir / rel).is_file():
            lines += [f"**{caption}**", "", f"![{caption}]({rel})", ""]
    lines += [
        "## Files",
        "",
        "`config/` resolved recipes, `ledger.sqlite` every LLM call, `logs/` each stage's "
        "output, `policy/`, `dataset/` (+ rows.jsonl, rejected.jsonl), `baseline-random/`, `sft/`, `eval/`, "
        "`pipeline.json` stage state.",
        "",
    ]
    text = "\n".join(lines)
    atomic_write_text(run_dir / "report.md", text)
    atomic_write_text(run_dir / "report.html", to_html(text, f"teams-rl run: {run_dir.name}"))
    return run_dir / "report.md"


def _policy_label(run_dir: Path) -> str:
    meta = _load(run_dir / "policy" / "policy.json")
    return f"trained ({meta.get('algorithm') or meta.get('kind')})" if meta else "policy"


def _get(m: dict | None, *keys):
    for key in keys:
        if not isinstance(m, dict) or key not in m:
            return None
        m = m[key]
    return m


def _fmt(value, kind: str = "f") -> str:
    if value is None:
        return "-"
    if kind == "%":
        return f"{value:.1%}"
    return f"{value:,}" if isinstance(value, int) else format(value, ".3f" if kind == "f" else kind)


SUMMARY_ROWS = [  # (label, keys into metrics.json, format, is higher better? None: neither)
    ("seeds with a kept row", ("seeds",), "f", True),
    ("rewrites tried", ("review", "rewrites_tried"), "f", None),
    ("rows kept", ("review", "kept"), "f", True),
    ("kept / tried", ("review", "kept_rate"), "%", True),
    ("expert calls", ("queries", "synthesis", "expert", "calls"), "f", False),
    ("expert calls per kept row", ("queries", "synthesis", "expert", "per_row"), "f", False),
    ("reviewer calls", ("queries", "synthesis", "reviewer", "calls"), "f", None),
    ("reviewer P(gain), kept rows", ("scores", "judge_logprob", "mean"), "f", True),
    ("novelty vs parent, kept rows", ("scores", "embedding", "mean"), "f", True),
    ("Vendi score, instructions", ("diversity", "vendi_instruction"), "f", True),
    ("Vendi score, responses", ("diversity", "vendi_response"), "f", True),
    ("distinct-2, instructions", ("diversity", "distinct_2_instruction"), "f", True),
    ("near-duplicate rows", ("near_duplicates", "rate"), "%", False),
    ("mean instruction words", ("lengths_words", "instruction", "mean"), ".1f", None),
]


def _summary(run_dir: Path, policy: dict | None, random: dict | None) -> list[str]:
    """The policy-vs-random table: the paper's claim (better data for fewer expert queries) measured here."""
    if not policy:
        return []
    label = _policy_label(run_dir)
    head = f"| | {label} |" + (" random (Evol-Instruct) | ratio |" if random else "")
    lines = [
        "## Summary: trained policy vs random",
        "",
        "Same seeds, models and recipe; only the policy differs. Ratio = policy / random."
        if random
        else "No random baseline in this run (add `baseline` to `stages` to compare).",
        "",
        head,
        "|---|---:|" + ("---:|---:|" if random else ""),
    ]
    for name, keys, kind, higher in SUMMARY_ROWS:
        a, b = _get(policy, *keys), _get(random, *keys)
        if a is None and b is None:
            continue
        cells = [_fmt(a, kind), _fmt(b, kind)]
        numbers = isinstance(a, int | float) and isinstance(b, int | float)
        if numbers and higher is not None and a != b:  # bold the better side
            best = 0 if (a > b) == higher else 1
            cells[best] = f"**{cells[best]}**"
        row = f"| {name} | {cells[0]} |"
        if random:
            row += f" {cells[1]} | {f'{a / b:.2f}x' if numbers and b else '-'} |"
        lines.append(row)
    return [*lines, ""]


def _comparison(run_dir: Path) -> list[str]:
    """Rows per expert call vs random with a paired bootstrap interval over the seeds, and what it means."""
    from teams_rl.core.files import read_jsonl
    from teams_rl.core.layout import DATASET_DIR, REJECTED_FILE, ROWS_FILE
    from teams_rl.evaluate.compare import compare_datasets, verdict

    folders = {"policy": run_dir / DATASET_DIR, "random": run_dir / "baseline-random" / DATASET_DIR}
    if not all((f / ROWS_FILE).is_file() and (f / REJECTED_FILE).is_file() for f in folders.values()):
        return []
    data = {k: (read_jsonl(f / ROWS_FILE), read_jsonl(f / REJECTED_FILE)) for k, f in folders.items()}
    interval = compare_datasets(data["policy"], data["random"])
    return [
        "## Rows per expert call: trained policy vs random",
        "",
        f"{verdict(interval, 'the trained policy')} Each kept row costs its rewrite and its answer, an eliminated "
        "rewrite one call; the interval is a paired bootstrap over the seeds (10,000 draws), so it says how much "
        "of the difference these few seeds can carry. `bench/policy_vs_random.py` repeats the comparison at an "
        "equal expert budget over several synthesis seeds.",
        "",
    ]


def _queries(run_dir: Path) -> list[str]:
    """Every LLM call of the run per role, from the ledgers (policy training and synthesis share the run's)."""
    from teams_rl.llm.tables import has_ledger, ledger_markdown

    lines = []
    for name, folder in (
        ("Run (policy training + synthesis)", run_dir),
        ("Random baseline", run_dir / "baseline-random"),
    ):
        if has_ledger(folder):
            lines += [f"**{name}**", "", ledger_markdown(folder), ""]
    return (
        [
            "## Queries per role (ledgers)",
            "",
            *lines,
            "The instructor runs in-process (one forward pass per choice) and is not an LLM query.",
            "",
        ]
        if lines
        else []
    )


def _policy(run_dir: Path) -> list[str]:
    from teams_rl.core.markdown import markdown_table
    from teams_rl.policy.tables import policy_table

    meta = _load(run_dir / "policy" / "policy.json")
    if not meta:
        return []
    return [
        "## Policy",
        "",
        f"{meta.get('algorithm', meta.get('kind'))} on `{meta.get('base_model')}`, "
        f"{meta.get('steps', '?')} steps"
        + (f", stopped: {meta['stopped']}" if meta.get("stopped") else "")
        + ". P(action) on probe states before and after training:",
        "",
        markdown_table(policy_table(meta)),
        "",
    ]


def _evaluation(run_dir: Path) -> list[str]:
    from teams_rl.evaluate import lmeval
    from teams_rl.evaluate.report import privacy_markdown, privacy_verdict

    results = _load(run_dir / "eval" / "results.json")
    if not results:
        return []
    lines = []
    if results.get("table"):
        lines += ["## Base vs tuned (lm-eval)", "", lmeval.markdown_table(results["table"])]
    if results.get("privacy"):
        lines += [
            "## Membership inference (privacy)",
            "",
            privacy_verdict(results),
            "",
            privacy_markdown(results),
            "",
        ]
        if results["privacy"]["non_members"] < 20:
            lines += [
                f"Only {results['privacy']['non_members']} non-members (the rows SFT held out): these AUCs "
                "and their intervals say little; hold out more rows (`test_split_size`) for a real test.",
                "",
            ]
    return lines


def _stage_table(stages, state: dict) -> list[str]:
    lines = ["## Stages", "", "| stage | status | wall time |", "|---|---|---:|"]
    for stage in stages:
        entry = state["stages"].get(stage.name, {})
        wall = _duration(entry["wall_s"]) if entry.get("wall_s") is not None else ""
        lines.append(f"| {stage.name} | {status_of(stage, state)} | {wall} |")
    return [*lines, ""]


CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 10px}th{background:#f3f3f3}
td{text-align:right}td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 3px}"""


def to_html(markdown: str, title: str) -> str:
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    return (
        f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>"
        f"<body>\n{body}</body></html>\n"
    )
