"""Stage 4, evaluation: lm-eval on the base and the tuned model, dataset metrics and the membership-inference
(privacy) test, written to ``<output_dir>/eval/``. ``teams-rl evaluate --config recipes/<model>/eval/config.yaml``."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import time
from pathlib import Path

from teams_rl import __version__
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.files import atomic_write_text
from teams_rl.core.guard import config_changes, move_aside, output_lock, refusal
from teams_rl.core.layout import ROWS_FILE
from teams_rl.core.recipe_check import located
from teams_rl.core.recipes import parse_args, to_yaml
from teams_rl.core.refs import resolve_model, upstream_id
from teams_rl.evaluate import inputs, lmeval, privacy
from teams_rl.evaluate import report as eval_report
from teams_rl.evaluate.args import EvalArguments
from teams_rl.llm.loader import default_device

logger = logging.getLogger(__name__)


# --- Setup -----------------------------------------------------------------------------------------------------------
def _fingerprint(args: EvalArguments, tuned: dict | None) -> str:
    settings = {k: v for k, v in dataclasses.asdict(args).items() if k != "overwrite"}  # how, not what
    parts = [json.dumps(settings, sort_keys=True)]
    if tuned and os.path.isdir(tuned["path"]):  # a retrained adapter invalidates the results
        parts += [
            f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in sorted(Path(tuned["path"]).iterdir())
            if p.suffix in (".safetensors", ".bin")
        ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


# --- Run -------------------------------------------------------------------------------------------------------------
def evaluate(args: EvalArguments) -> dict:
    """Run everything the arguments ask for and write ``<output_dir>/eval``. Returns the results dict."""
    began = time.perf_counter()
    out = Path(args.output_dir) / "eval"
    tuned = inputs.describe_tuned(args.tuned_model) if args.tuned_model else None
    fingerprint = _fingerprint(args, tuned)
    previous = out / "results.json"
    with output_lock(args.output_dir, "evaluate"):
        if previous.is_file() and not args.overwrite:
            done = json.loads(previous.read_text(encoding="utf-8"))
            if done.get("fingerprint") == fingerprint:
                logger.warning("%s is complete for this config; skipping (--overwrite true to re-run)", previous)
                return done
            record = out / "config" / "evaluate.yaml"
            changes = config_changes(record.read_text(encoding="utf-8"), to_yaml(args)) if record.is_file() else []
            raise refusal(out, changes or ["the tuned model's weights changed since"])
        if previous.is_file():
            move_aside(args.output_dir, [out])
        return _evaluate(args, out, tuned, fingerprint, began)


def _evaluate(args: EvalArguments, out: Path, tuned: dict | None, fingerprint: str, began: float) -> dict:
    previous = out / "results.json"
    if not args.run_lm_eval and not args.privacy and not args.dataset:
        raise TeamsRLError(
            "nothing to do: run_lm_eval is false, privacy is false and no dataset is set", field="run_lm_eval"
        )

    # Fail fast, before any model loads: task names and their data, the models, the privacy rows.
    specs = [lmeval.TaskSpec.parse(t) for t in args.tasks] if args.run_lm_eval else []
    manager = tasks_dir = None
    if specs:
        source = inputs.tasks_dir(args.tasks_dir)
        tasks_dir = lmeval.resolve_tasks_dir(source, out / "tasks") if source else None
        manager = lmeval.task_manager(specs, tasks_dir)
        lmeval.check_tasks(manager, specs, tasks_dir)
    base_path = resolve_model(args.base_model, field="base_model")
    if args.dataset and not (Path(args.dataset) / ROWS_FILE).is_file():
        raise TeamsRLError(
            f"not a teams-rl dataset folder (no {ROWS_FILE}); run synthesize first, or set dataset: null",
            file=args.dataset,
            field="dataset",
        )
    pairs, privacy_source, n_members = None, None, 0
    if args.privacy:
        members, others, privacy_source = inputs.privacy_rows(args)
        from transformers import AutoTokenizer

        # One rendering for both models: the tuned model's template (the one its training rows were written in).
        fmt = AutoTokenizer.from_pretrained((tuned or {}).get("tokenizer") or base_path)
        pairs, n_members = privacy.to_pairs(members + others, fmt), len(members)

    device = args.device or default_device()
    models = {"base": {"ref": args.base_model, "upstream": upstream_id(args.base_model), "path": base_path}}
    if tuned:
        models["tuned"] = tuned
    bench, scores = {}, {}
    for label, info in models.items():
        adapter = info["path"] if info.get("kind") == "peft adapter" else None
        pretrained = base_path if adapter or label == "base" else info["path"]
        try:
            lm = lmeval.load_lm(
                pretrained,
                adapter=adapter,
                tokenizer=info.get("tokenizer"),
                dtype=args.dtype,
                device=device,
                batch_size=args.batch_size,
            )
        except (OSError, ValueError) as err:  # unreachable Hub id, missing weights, adapter for another base
            reason = " ".join(str(err).split())[:300]
            raise TeamsRLError(f"cannot load the {label} model: {reason}", field=f"{label}_model") from None
        chat = args.apply_chat_template == "true" or (
            args.apply_chat_template == "auto" and lmeval.has_chat_template(lm)
        )
        info["chat_template"] = chat
        if specs:
            bench[label] = lmeval.run_tasks(
                lm,
                specs,
                manager,
                chat_template=chat,
                limit=args.limit,
                bootstrap_iters=args.bootstrap_iters,
                seed=args.seed,
            )
        if pairs is not None:
            scores[label] = privacy.membership_scores(
                lm.model,
                lm.tokenizer,
                pairs,
                min_k=args.privacy_min_k,
                batch_size=args.batch_size,
                max_length=args.privacy_max_length,
                desc=f"privacy ({label})",
            )
        del lm
        gc.collect()

    results = {
        "teams_rl_version": __version__,
        "lm_eval_version": lmeval.lm_eval_version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fingerprint": fingerprint,
        "config": dataclasses.asdict(args),
        "device": device,
        "models": models,
    }
    if specs:
        base_runs = bench["base"]
        results["tasks"] = {
            s.name: {
                "version": base_runs[s.name]["version"],
                "num_fewshot": base_runs[s.name]["num_fewshot"],
                "samples": base_runs[s.name]["samples"],
                "source": "local" if s.name in lmeval.local_task_names(tasks_dir) else "lm-eval built-in (Hub data)",
            }
            for s in specs
        }
        results["table"] = lmeval.comparison_rows(base_runs, bench.get("tuned"))
        results["lm_eval"] = bench
    if "base" in scores and "tuned" in scores:
        # A reference-calibrated attack: how much likelier did fine-tuning make each row? Row difficulty cancels.
        scores["tuned"]["neg_loss_vs_base"] = scores["tuned"]["neg_loss"] - scores["base"]["neg_loss"]
    if scores:
        results["privacy"] = {
            "source": privacy_source,
            "members": n_members,
            "non_members": len(pairs) - n_members,
            "min_k": args.privacy_min_k,
            "note": "AUC near 0.5 = the model tells members from "
            "non-members no better than chance (better privacy); base = control",
            "models": {
                label: privacy.membership_auc(
                    {k: v[:n_members] for k, v in s.items()},
                    {k: v[n_members:] for k, v in s.items()},
                    iters=args.privacy_bootstrap,
                    seed=args.seed,
                )
                for label, s in scores.items()
            },
            "row_scores": {label: {k: v.round(5).tolist() for k, v in s.items()} for label, s in scores.items()},
        }
    if args.dataset:
        from teams_rl.evaluate import dataset_metrics as eval_dataset

        metrics, rows = eval_dataset.compute(args.dataset, embedding_model=args.embedding_model)
        eval_dataset.write(metrics, rows, out, plots=args.plots)
        results["metrics"] = {
            "file": str(out / "metrics.json"),
            "rows": metrics["rows"],
            "diversity": metrics["diversity"],
            "near_duplicate_rate": metrics.get("near_duplicates", {}).get("rate"),
        }
    if args.plots:
        from teams_rl.evaluate import plots as eval_plots

        if results.get("table"):
            eval_plots.benchmarks(results["table"], out / "plots" / "benchmarks.png")
        for signal, title in (("neg_loss", "loss"), ("min_k", f"Min-{args.privacy_min_k:.0%} Prob")):
            if scores:
                reports = results["privacy"]["models"]
                curves = {label: r[signal] for label, r in reports.items()}
                if signal == "neg_loss" and "neg_loss_vs_base" in reports.get("tuned", {}):
                    curves["tuned, calibrated by base"] = reports["tuned"]["neg_loss_vs_base"]
                eval_plots.roc(
                    curves, out / "plots" / f"privacy_roc_{signal}.png", title=f"Membership inference ({title})"
                )
    results["wall_s"] = round(time.perf_counter() - began, 1)
    atomic_write_text(out / "results.md", eval_report.markdown_report(results))
    atomic_write_text(out / "config" / "evaluate.yaml", to_yaml(args))
    atomic_write_text(previous, json.dumps(results, indent=2, ensure_ascii=False, default=float) + "\n")
    logger.info("evaluation written to %s (%.0f s)", out, results["wall_s"])
    return results


def main(argv: list[str] | None = None) -> dict:
    """``teams-rl evaluate --config recipes/<model>/eval/config.yaml [--key value ...]``; returns the results."""
    argv = list(argv or [])
    (args,), recipe = parse_args([EvalArguments], argv, "teams-rl evaluate")
    for f in dataclasses.fields(args):  # `--tuned_model null` on the command line means None, as in YAML
        if isinstance(getattr(args, f.name), str) and getattr(args, f.name).lower() in ("null", "none"):
            setattr(args, f.name, None)
    with located(recipe):
        return evaluate(args)


def cli(argv: list[str]) -> None:
    """``teams-rl evaluate`` / ``python -m teams_rl.evaluate``: run, then print the tables."""
    from rich.console import Console

    from teams_rl.evaluate.report import print_results

    print_results(main(argv), Console())
