"""The Hub cards of ``teams-rl push``: facts read from a run folder, rendered with ``templates/*.md``. The tables are
the ones ``teams-rl`` prints in the terminal (report, eval_dataset), turned into Markdown."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from teams_rl.core import secrets
from teams_rl.core.layout import PLOTS_DIR, RESULTS_FILE, recipe_path, stage_of_recipe
from teams_rl.core.markdown import markdown_table, render
from teams_rl.core.refs import is_embedded, upstream_id
from teams_rl.hub.provenance import lineage, project_licence, read_yaml, roles, seeds_are_ours
from teams_rl.llm.tables import has_ledger, ledger_markdown

TEMPLATES = Path(__file__).parent / "templates"
DATASET_TAGS = ["teams-rl", "synthetic", "instruction-tuning"]
MODEL_PLOTS = ("benchmarks", "privacy")  # eval/plots/*.png of the model card; the rest belong to the dataset's
MODEL_SECTIONS = ("benchmarks", "privacy")  # of the evaluation report; the dataset section is the dataset card's


# --- Files -----------------------------------------------------------------------------------------------------------
def attach(files: dict, folder: str, paths: Iterable[Path | None]) -> list[str]:
    """Add the existing ``paths`` to ``files`` (path in repo -> local path) under ``folder/``; first name wins."""
    added = []
    for path in paths:
        target = None if path is None else path.name if folder == "." else f"{folder}/{path.name}"
        if target and target not in files and path.is_file():
            files[target] = path
            added.append(target)
    return added


def _plots(paths: Iterable[str]) -> list[dict]:
    return [{"path": p, "stem": Path(p).stem.replace("_", " ")} for p in paths]


def reproduce(recipes: Sequence[str]) -> list[str]:
    """A line per attached recipe, with the command that re-runs its stage."""
    out = []
    for path in recipes:
        stage = stage_of_recipe(path)
        out.append(f"`{path}`" + (f": `teams-rl {stage} --config {path}`" if stage else ""))
    return out


# --- Facts ---------------------------------------------------------------------------------------------------------
def policy_section(name: str, meta: dict | None, recipe: dict, plots: Sequence[str]) -> dict:
    """The policy paragraph: the random baseline, or a trained policy with its probe table and how it trained."""
    if meta is None:
        what = "the random policy (the Evol-Instruct baseline)" if name == "random" else f"the policy `{name}`"
        return {"random": name == "random", "summary": what, "name": name, "table": None}
    from teams_rl.policy.tables import policy_table

    training = [
        f"{k.replace('_', ' ')}: {recipe[k]}"
        for k in ("learning_rate", "depth", "reviewer_modes", "held_out_seeds")
        if recipe.get(k) not in (None, 0)
    ]
    if rewards := meta.get("reward_per_update"):
        training.append(f"mean reward per update: {rewards[0]:.3f} (first) -> {rewards[-1]:.3f} (last)")
    if meta.get("stopped"):
        training.append(f"stopped early: {meta['stopped']}")
    algorithm = meta.get("algorithm", meta.get("kind", "?"))
    return {
        "random": False,
        "summary": f"a trained {algorithm} instructor policy",
        "name": name,
        "algorithm": algorithm,
        "table": markdown_table(policy_table(meta)),
        "training": training,
        "facts": "".join(f", {meta[k]} {k}" for k in ("steps", "episodes") if meta.get(k) is not None),
        "plots": _plots(plots),
    }


def synthesis_markdown(summary: dict) -> str | None:
    from teams_rl.synthesize.tables import summary_tables

    try:
        return markdown_table(summary_tables(summary)[0])
    except KeyError:  # a merged dataset's summary holds its shards' summaries instead
        return None


def dataset_metrics(root: Path, folder: Path, rows: list[dict], plots_dir: Path, compute: bool):
    """The metrics table and dataset plots: from ``eval/`` when they describe these rows, else computed now (that
    loads the embedding model), else none. Returns (Markdown table or None, plot paths)."""
    from teams_rl.evaluate import dataset_metrics as eval_dataset

    saved = root / "eval" / "metrics.json"
    metrics = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    if metrics and metrics.get("rows") == len(rows):
        plots = [p for p in sorted((saved.parent / "plots").glob("*.png")) if not p.name.startswith(MODEL_PLOTS)]
        return markdown_table(eval_dataset.metrics_table(metrics)), plots
    if not compute:
        return None, []
    from teams_rl.evaluate.plots import dataset_plots

    metrics, _ = eval_dataset.compute(folder)
    return markdown_table(eval_dataset.metrics_table(metrics)), dataset_plots(metrics, rows, plots_dir)


# --- Dataset card ----------------------------------------------------------------------------------------------------
def dataset_card(
    root: Path,
    folder: Path,
    rows: list[dict],
    summary: dict,
    *,
    title: str,
    files: dict,
    plots_dir: Path,
    compute_metrics: bool,
) -> tuple[str, bool]:
    """The dataset card's body; the files it shows or names are added to ``files``. Also says whether the seeds are
    the package's own (the data's licence is then the project's). Keys and URL credentials are masked."""
    from teams_rl.core.versions import framework_versions
    from teams_rl.env.actions import load_actions
    from teams_rl.policy.instructor import POLICY_FILE, read_policy_meta

    found = sorted((root / "config").glob("synthesize*.yaml"))
    recipe = read_yaml(found[0]) if found else {}
    line = lineage(summary, rows)
    name, ref = str(line.get("policy") or recipe.get("policy") or "unknown"), recipe.get("policy")
    candidates = ([Path(ref)] if ref and ref != "random" else []) + ([root / "policy"] if name != "random" else [])
    policy_dir = next((c for c in candidates if (c / POLICY_FILE).is_file()), None)
    meta = read_policy_meta(policy_dir) if policy_dir else None
    policy_run = policy_dir.parent if policy_dir else None
    policy_recipe = read_yaml(policy_run / "config" / "train-policy.yaml") if policy_run else {}

    recipes = attach(files, "recipes", sorted((root / "config").glob("*.yaml")))
    recipes += attach(files, "recipes", [policy_run / "config" / "train-policy.yaml"] if policy_run else [])
    policy_plots = attach(files, "plots", sorted((policy_run / "plots").glob("*.png"))) if policy_run else []
    ledgers = [(root, "This run folder's ledger (every stage that shared it)")]
    if policy_run and policy_run.resolve() != root.resolve():
        ledgers.append((policy_run, f"Policy training's ledger (`{policy_run.name}`)"))
    metrics, metric_plots = dataset_metrics(root, folder, rows, plots_dir, compute_metrics)
    notes = ["`output_dir` in each recipe names the original run folder; point it elsewhere to re-run."]
    if recipe.get("dataset_name") not in (None, "builtin"):
        notes.append(f"`dataset_name: {recipe['dataset_name']}` is the local seed source; it is not attached.")
    if ref and ref != "random":
        notes.append(
            f"`policy: {ref}` is the folder `teams-rl train-policy` wrote: train it first (its recipe is "
            "attached when it was found), or set `policy: random` for the Evol-Instruct baseline."
        )

    ours = seeds_are_ours(recipe) if recipe else False
    people = roles(recipe, line, meta, policy_recipe)
    expert = people[0]["model"].strip("`")
    source = recipe.get("dataset_name") or "builtin"
    merged = summary.get("merged_from")
    body = render(
        TEMPLATES / "dataset_card.md",
        title=title,
        n_rows=len(rows),
        expert=expert,
        roles=people,
        licence=project_licence(),
        seeds={
            "count": summary.get("seeds_total") or len({r.get("seed_id") for r in rows}),
            "ours": ours,
            "source": "an unrecorded source (no config/synthesize.yaml)"
            if not recipe
            else "teams-rl's built-in seed set"
            if source == "builtin"
            else f"`{source}`",
        },
        actions=", ".join(f"`{a}`" for a in (recipe.get("actions") or "").split(",") if a)
        or ", ".join(f"`{a.name}`" for a in load_actions()),
        policy=policy_section(name, meta, policy_recipe, policy_plots),
        synthesis=synthesis_markdown(summary),
        synthesis_note=f"Merged from {len(merged)} shards ({summary.get('duplicates_dropped', 0)} duplicate rows "
        "dropped); the per-shard counts are in `summary.json`."
        if merged
        else "See `summary.json`.",
        ledgers=[{"label": label, "table": ledger_markdown(path)} for path, label in ledgers if has_ledger(path)],
        metrics=metrics,
        plots=_plots(attach(files, "plots", metric_plots)),
        metrics_note="Not computed for this push (`--no-metrics`); `teams-rl metrics DATASET` computes them.",
        columns=", ".join(f"`{c}`" for c in dict.fromkeys(k for r in rows for k in r)),
        recipes=reproduce(recipes),
        notes=notes,
        versions=framework_versions(),
        embedded_expert=is_embedded(str(recipe.get("expert_model")))
        if recipe
        else expert == upstream_id("smollm2-135m"),
    )
    return secrets.mask(body), ours


def dataset_metadata(card_data, *, n_rows: int, title: str, seeds_ours: bool) -> None:
    """Add ours to the YAML header ``push_to_hub`` wrote (its ``dataset_info`` and ``configs`` stay)."""
    card_data.license = project_licence() if seeds_ours else None  # None: no stale licence from an earlier push
    card_data.language = ["en"] if seeds_ours else None
    card_data.tags = sorted({*(card_data.get("tags") or []), *DATASET_TAGS})
    card_data.task_categories = ["text-generation"]
    sizes = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"))
    card_data.size_categories = [next((name for limit, name in sizes if n_rows < limit), "n>1M")]
    card_data.pretty_name = title


# --- Model card ------------------------------------------------------------------------------------------------------
def evaluation(folders: Iterable[Path]) -> tuple[list[dict], list[Path], Path | None]:
    """The benchmark and privacy sections of the first ``eval/results.json`` found, with the eval plots that belong
    to the model and the resolved eval recipe."""
    from teams_rl.evaluate.report import sections

    for folder in folders:
        if not (folder / RESULTS_FILE).is_file():
            continue
        results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
        found = [s for s in sections(results) if s["key"] in MODEL_SECTIONS]
        plots = [p for p in sorted((folder / PLOTS_DIR).glob("*.png")) if p.name.startswith(MODEL_PLOTS)]
        recipe = recipe_path(folder, "evaluate")
        return found, plots, recipe if recipe.is_file() else None
    return [], [], None


def model_card(
    facts: dict,
    *,
    repo_id: str,
    revision: str | None,
    library: str,
    dataset: dict | None,
    evaluation: list[dict],
    plots: Sequence[str],
    recipes: Sequence[str],
) -> str:
    """The SFT run's model card, rendered from its facts with the Hub's part: the repo, the data link, evaluation,
    plots and recipes."""
    from teams_rl.sft.card import render_model_card

    link = None
    if dataset:
        link = (
            f"[`{dataset['repo_id']}`]({dataset['url']})"
            + (f" at revision `{dataset['revision']}`" if dataset.get("revision") else "")
            + (f" (commit `{dataset['commit'][:12]}`)" if dataset.get("commit") else "")
        )
    hub = {
        "repo_id": repo_id,
        "revision": revision,
        "dataset": dataset,
        "dataset_link": link,
        "evaluation": evaluation,
        "plots": _plots(plots),
        "recipes": reproduce(recipes),
    }
    return secrets.mask(render_model_card(facts, hub=hub, library=library))
