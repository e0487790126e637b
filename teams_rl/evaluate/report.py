"""The evaluation report: results.md (benchmarks, privacy, dataset) and the tables ``teams-rl evaluate`` prints."""

from __future__ import annotations

from pathlib import Path

from teams_rl.evaluate import lmeval

SIGNALS = {"neg_loss": "loss", "min_k": "Min-K% Prob", "neg_loss_vs_base": "loss - base loss"}


def privacy_rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(model, signal, AUC, 95% interval, members/non-members) per model and signal."""
    out = []
    for label, signals in results.get("privacy", {}).get("models", {}).items():
        for signal, r in signals.items():
            out.append(
                (
                    label,
                    SIGNALS.get(signal, signal),
                    f"{r['auc']:.3f}",
                    f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]",
                    f"{r['members']} / {r['non_members']}",
                )
            )
    return out


def privacy_verdict(results: dict) -> str:
    """One sentence on what the membership-inference test found: the tuned model's signals whose 95% interval lies
    wholly above 0.5 (membership shows through them), or that none does (the base model is the control)."""
    tuned = results.get("privacy", {}).get("models", {}).get("tuned", {})
    leaks = [
        f"{SIGNALS.get(name, name)} (AUC {r['auc']:.3f}, 95% {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f})"
        for name, r in tuned.items()
        if r["ci95"][0] > 0.5
    ]
    if leaks:
        return (
            f"The tuned model's rows show through {', '.join(leaks)}: an attacker with these signals tells "
            "its training rows from held-out ones better than chance."
        )
    return (
        "No signal of the tuned model tells its training rows from held-out ones better than chance (every 95% "
        "interval includes 0.5); an AUC near 0.5 is the goal."
    )


def privacy_markdown(results: dict) -> str:
    """The membership-inference table as GitHub Markdown."""
    lines = ["| model | signal | ROC AUC | 95% bootstrap | members / non-members |", "|---|---|---:|---:|---:|"]
    return "\n".join(lines + [f"| {' | '.join(row)} |" for row in privacy_rows(results)])


def sections(results: dict) -> list[dict]:
    """The report's sections as ``{"key", "title", "body"}`` (benchmarks, privacy, dataset), each present only when
    the results hold it: results.md, the model card and the pipeline report all take them from here."""
    out = []
    if results.get("table"):
        versions = ", ".join(f"{t} v{v['version']} ({v['source']})" for t, v in results["tasks"].items())
        out.append(
            {
                "key": "benchmarks",
                "title": "Benchmarks (lm-eval)",
                "body": f"{lmeval.markdown_table(results['table'])}\nTask versions: {versions}.",
            }
        )
    if results.get("privacy"):
        p = results["privacy"]
        out.append(
            {
                "key": "privacy",
                "title": "Membership inference (privacy)",
                "body": f"Rows: {p['members']} members vs {p['non_members']} non-members ({p['source']}). "
                f"{p['note']}. {privacy_verdict(results)}\n\n{privacy_markdown(results)}",
            }
        )
    if results.get("metrics"):
        m = results["metrics"]
        near = m["near_duplicate_rate"]
        out.append(
            {
                "key": "dataset",
                "title": "Dataset",
                "body": f"{m['rows']} rows; "
                + ", ".join(f"{k} {v:.3f}" for k, v in m["diversity"].items())
                + (f"; near-duplicate rate {near:.1%}" if near is not None else "")
                + f". Details: `{Path(m['file']).name}`.",
            }
        )
    return out


def markdown_report(results: dict) -> str:
    """results.md: models and versions, then every section."""
    models = results["models"]
    lines = [
        f"# Evaluation: {results['config']['output_dir']}",
        "",
        f"- base: `{models['base']['ref']}`"
        + (f" ({models['base']['upstream']})" if models["base"].get("upstream") != models["base"]["ref"] else ""),
    ]
    if "tuned" in models:
        lines.append(f"- tuned: `{models['tuned']['ref']}` ({models['tuned']['kind']})")
    chat = ", ".join(f"{k}: {'yes' if v.get('chat_template') else 'no'}" for k, v in models.items())
    lines += [
        f"- lm-eval {results['lm_eval_version']}, teams-rl {results['teams_rl_version']}, device "
        f"{results['device']}, chat template ({chat})",
        "",
    ]
    for section in sections(results):
        lines += [f"## {section['title']}", "", section["body"], ""]
    return "\n".join(lines)


def print_results(results: dict, console) -> None:
    """The benchmark and privacy tables, on a rich console."""
    from rich.table import Table

    if results.get("table"):
        table = Table(title="lm-eval: base vs tuned")
        for name in ("task", "metric", "shots", "base", "tuned", "delta"):
            table.add_column(name, justify="left" if name in ("task", "metric") else "right")
        for r in results["table"]:
            table.add_row(
                r["task"],
                r["metric"],
                str(r["n_shot"]),
                lmeval.fmt_score(r["base"], r["base_stderr"]),
                lmeval.fmt_score(r["tuned"], r["tuned_stderr"]),
                lmeval.fmt_score(r["delta"], r["delta_stderr"], True),
            )
        console.print(table)
    if results.get("privacy"):
        table = Table(title="Membership inference (AUC near 0.5 = better privacy)")
        for name in ("model", "signal", "ROC AUC", "95% bootstrap", "members / non-members"):
            table.add_column(name)
        for row in privacy_rows(results):
            table.add_row(*row)
        console.print(table)
    if results.get("metrics") and Path(results["metrics"]["file"]).is_file():
        import json

        from teams_rl.evaluate.dataset_metrics import metrics_table

        console.print(metrics_table(json.loads(Path(results["metrics"]["file"]).read_text(encoding="utf-8"))))
    console.print(f"results: [bold]{Path(results['config']['output_dir']) / 'eval'}[/bold]")
