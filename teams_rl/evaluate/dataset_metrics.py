"""Dataset metrics for ``teams-rl metrics DATASET``: size, lengths, actions, depth, reviewer verdicts, eliminations,
diversity (distinct-n, Vendi), near-duplicates and LLM queries per kept row; a rich table, JSON and PNG plots."""

from __future__ import annotations

import argparse
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from teams_rl.core.files import atomic_write_text
from teams_rl.env.chat import user_content
from teams_rl.env.dataset import load_rows
from teams_rl.env.environment import NO_GAIN
from teams_rl.evaluate.metrics import distinct_n, near_duplicates, summary_stats, vendi_score

logger = logging.getLogger(__name__)


def _count(values) -> dict:
    return dict(sorted(Counter(values).items(), key=lambda kv: (-kv[1], str(kv[0]))))


def review_counts(rows: Sequence[dict], rejected: Sequence[dict], summary: dict) -> dict:
    """Rewrites tried, eliminated by the text rules, judged by the reviewer, accepted, and kept as rows."""
    rewrite_stage = [r for r in rejected if r.get("stage", "rewrite") == "rewrite"]
    answered = len(rows) + sum(1 for r in rejected if r.get("stage") == "answer")
    tried = summary.get("steps") or answered + len(rewrite_stage)
    no_gain = sum(1 for r in rewrite_stage if r.get("reason") == NO_GAIN)
    reviewed = answered + no_gain
    return {
        "rewrites_tried": tried,
        "rule_eliminated": len(rewrite_stage) - no_gain,
        "reviewed": reviewed,
        "reviewer_accepted": answered,
        "reviewer_acceptance": answered / reviewed if reviewed else None,
        "answers_eliminated": answered - len(rows),
        "kept": len(rows),
        "kept_rate": len(rows) / tried if tried else None,
    }


def _summary_calls(summary: dict) -> list[dict]:
    calls = list(summary.get("calls") or [])
    for shard in summary.get("shards") or []:  # a merged dataset keeps each shard's summary
        calls += shard.get("calls") or []
    return calls


def query_counts(rows: int, summary: dict, run_dir: Path | None) -> dict:
    """LLM calls per kept row by role: from the synthesis summary (this dataset's calls, new + replayed) and, when
    the dataset lies in a run folder, from its ledgers (every stage that shared the folder, policy training too;
    a Ray run's shard ledgers), with the dollars of the priced roles."""
    per_role: Counter = Counter()
    for entry in _summary_calls(summary):
        per_role[entry["role"]] += entry.get("new", 0) + entry.get("cached", 0)
    out: dict = {
        "synthesis": {
            role: {"calls": n, "per_row": n / rows if rows else None} for role, n in sorted(per_role.items())
        }
    }
    if run_dir is not None:
        from teams_rl.llm.tables import ledger_files, run_totals

        files = ledger_files(run_dir)
        if files:
            totals, _ = run_totals(run_dir)
            out["ledger"] = {
                "path": str(run_dir),
                "files": [str(f) for f in files],
                "roles": {role: _role_spend(t, rows) for role, t in sorted(totals.items())},
            }
    return out


def _role_spend(t, rows: int) -> dict:
    spend = {
        "calls": t.calls,
        "tokens": t.tokens,
        "calls_per_row": t.calls / rows if rows else None,
        "tokens_per_row": t.tokens / rows if rows else None,
    }
    if t.calls and t.unpriced_calls == 0:  # dollars only where every call of the role had a price
        spend |= {"usd": t.usd, "usd_per_row": t.usd / rows if rows else None}
    return spend


def dataset_metrics(
    rows: Sequence[dict],
    rejected: Sequence[dict],
    summary: dict,
    *,
    instruction_embeddings=None,
    response_embeddings=None,
    run_dir: Path | None = None,
    rouge_threshold: float = 0.7,
    cosine_threshold: float = 0.9,
) -> dict:
    """Every dataset metric as one JSON-able dict. Embedding-based entries are skipped when no embeddings are given."""
    prompts = [user_content(r.get("instruction", ""), r.get("input") or "") for r in rows]
    responses = [r.get("response", "") for r in rows]
    score_columns = sorted({k for r in rows for k in r if k.startswith("score_")})
    reasons = _count(r.get("reason") for r in rejected) or dict(summary.get("eliminated") or {})
    out = {
        "rows": len(rows),
        "rejected": len(rejected),
        "seeds": len({r.get("seed_id") for r in rows}),
        "lengths_words": {
            "instruction": summary_stats([len(p.split()) for p in prompts]),
            "response": summary_stats([len(t.split()) for t in responses]),
        },
        "actions": {
            "kept": _count(r["actions"][-1] for r in rows if r.get("actions")),
            "eliminated": _count(r["action"] for r in rejected if r.get("action")),
            "in_lineage": _count(a for r in rows for a in r.get("actions") or []),
        },
        "depth": {str(k): v for k, v in sorted(Counter(r["depth"] for r in rows if "depth" in r).items())},
        "review": review_counts(rows, rejected, summary),
        "scores": {c.removeprefix("score_"): summary_stats([r.get(c) for r in rows]) for c in score_columns},
        "eliminated": reasons,
        "diversity": {
            "distinct_1_instruction": distinct_n(prompts, 1),
            "distinct_2_instruction": distinct_n(prompts, 2),
            "distinct_1_response": distinct_n(responses, 1),
            "distinct_2_response": distinct_n(responses, 2),
        },
        "queries": query_counts(len(rows), summary, run_dir),
    }
    if instruction_embeddings is not None:
        out["diversity"]["vendi_instruction"] = vendi_score(instruction_embeddings)
        dups = near_duplicates(
            prompts, instruction_embeddings, rouge_threshold=rouge_threshold, cosine_threshold=cosine_threshold
        )
        dups["pairs"] = [
            {**p, "a": rows[p["a"]].get("id", p["a"]), "b": rows[p["b"]].get("id", p["b"])} for p in dups["pairs"]
        ]
        out["near_duplicates"] = {"rouge_l_threshold": rouge_threshold, "cosine_threshold": cosine_threshold, **dups}
    if response_embeddings is not None:
        out["diversity"]["vendi_response"] = vendi_score(response_embeddings)
    return out


def _run_for(folder: Path) -> Path | None:
    """The run folder of a dataset with ledgers: <run>/dataset or <run>/shards/i-of-N/dataset."""
    from teams_rl.llm.tables import has_ledger

    for parent in (folder.parent, folder.parent.parent.parent):
        if has_ledger(parent):
            return parent
    return None


def compute(dataset: str | Path, *, embedding_model: str | None = "minilm", batch_size: int = 64) -> tuple[dict, list]:
    """Load a dataset folder, embed its instructions and responses, compute the metrics; returns (metrics, rows)."""
    folder = Path(dataset)
    rows, rejected, summary = load_rows(folder)
    inst_emb = resp_emb = None
    if embedding_model and rows:
        from teams_rl.llm.embeddings import load_embedder

        embedder = load_embedder(embedding_model)
        encode = {
            "normalize_embeddings": True,
            "convert_to_numpy": True,
            "batch_size": batch_size,
            "show_progress_bar": len(rows) > 256,
        }
        inst_emb = embedder.encode([user_content(r["instruction"], r.get("input") or "") for r in rows], **encode)
        resp_emb = embedder.encode([r.get("response", "") for r in rows], **encode)
    metrics = dataset_metrics(
        rows,
        rejected,
        summary,
        instruction_embeddings=inst_emb,
        response_embeddings=resp_emb,
        run_dir=_run_for(folder.resolve()),
    )
    return {"dataset": str(folder), "embedding_model": embedding_model, **metrics}, rows


def write(metrics: dict, rows: Sequence[dict], out_dir: str | Path, plots: bool = True) -> Path:
    """``<out_dir>/metrics.json`` and, with ``plots``, ``<out_dir>/plots/*.png``."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if plots:
        from teams_rl.evaluate.plots import dataset_plots

        dataset_plots(metrics, rows, out_dir / "plots")
    return out_dir / "metrics.json"


def _f(value, fmt: str = ".3f") -> str:
    return "-" if value is None else format(value, fmt)


def metrics_table(m: dict):
    """The metrics as one rich table (section, metric, value); each section is named on its first row."""
    from rich.table import Table

    table = Table(title=f"Dataset metrics: {m['dataset']}")
    for name, justify in (("", "left"), ("metric", "left"), ("value", "right")):
        table.add_column(name, justify=justify)
    shown: set[str] = set()

    def add(section: str, name: str, value: str) -> None:
        table.add_row("" if section in shown else section, name, value)
        shown.add(section)

    rv = m["review"]
    add("size", "rows kept / seeds with rows", f"{m['rows']} / {m['seeds']}")
    add("size", "rewrites tried / rule-eliminated", f"{rv['rewrites_tried']} / {rv['rule_eliminated']}")
    add(
        "size",
        "reviewer acceptance",
        f"{rv['reviewer_accepted']}/{rv['reviewed']} = {_f(rv['reviewer_acceptance'], '.1%')}",
    )
    for reason, n in m["eliminated"].items():
        add("size", f"eliminated: {reason}", str(n))
    for kind, s in m["lengths_words"].items():
        add(
            "length",
            f"{kind} words: median (p10-p90)",
            f"{_f(s['median'], '.0f')} ({_f(s['p10'], '.0f')}-{_f(s['p90'], '.0f')})",
        )
    add("actions", "kept rows by last action", ", ".join(f"{a} {n}" for a, n in m["actions"]["kept"].items()))
    add("actions", "eliminated by action", ", ".join(f"{a} {n}" for a, n in m["actions"]["eliminated"].items()))
    add("depth", "rows by depth", ", ".join(f"{d}: {n}" for d, n in m["depth"].items()))
    for name, s in m["scores"].items():
        add("review", f"score {name}: mean, median", f"{_f(s['mean'])}, {_f(s['median'])}")
    for name, value in m["diversity"].items():
        add("diversity", name.replace("_", " "), _f(value))
    if "near_duplicates" in m:
        nd = m["near_duplicates"]
        add("diversity", f"near-duplicates ROUGE-L > {nd['rouge_l_threshold']}", _f(nd["rouge_l_rate"], ".1%"))
        add("diversity", f"near-duplicates cosine > {nd['cosine_threshold']}", _f(nd["embedding_rate"], ".1%"))
        add("diversity", "near-duplicates (either)", _f(nd["rate"], ".1%"))
    for role, q in m["queries"]["synthesis"].items():
        add("queries", f"{role} calls per kept row (synthesis)", f"{_f(q['per_row'], '.2f')} ({q['calls']})")
    for role, q in m["queries"].get("ledger", {}).get("roles", {}).items():
        add("queries", f"{role} calls per kept row (run ledger)", f"{_f(q['calls_per_row'], '.2f')} ({q['calls']})")
        if "usd" in q:
            add(
                "queries", f"{role} USD per kept row (run ledger)", f"${_f(q['usd_per_row'], '.5f')} (${q['usd']:.4f})"
            )
    return table


def main(argv: list[str] | None = None) -> tuple[dict, Path]:
    """``teams-rl metrics DATASET [--output_dir DIR]``: writes ``DIR/eval/metrics.json`` and ``DIR/eval/plots``."""
    parser = argparse.ArgumentParser(prog="teams-rl metrics", description="Dataset metrics of a teams-rl dataset.")
    parser.add_argument("dataset", help="A dataset folder written by synthesize or merge (holds rows.jsonl).")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="Run folder; results go to OUTPUT_DIR/eval (default: the folder holding DATASET).",
    )
    parser.add_argument("--embedding_model", default="minilm", help="Sentence-embedding model; 'none' to skip.")
    parser.add_argument("--no_plots", action="store_true", help="Skip the PNG plots.")
    args = parser.parse_args(argv)
    out_dir = Path(args.output_dir or Path(args.dataset).resolve().parent) / "eval"
    model = None if args.embedding_model.lower() == "none" else args.embedding_model
    metrics, rows = compute(args.dataset, embedding_model=model)
    path = write(metrics, rows, out_dir, plots=not args.no_plots)
    logger.info("metrics written to %s", path)
    return metrics, path


def cli(argv: list[str]) -> None:
    """The ``teams-rl metrics`` handler: compute, write, print the table."""
    from rich.console import Console

    metrics, path = main(argv)
    console = Console()
    console.print(metrics_table(metrics))
    console.print(f"metrics: [bold]{path}[/bold], plots: [bold]{path.parent / 'plots'}[/bold]")
