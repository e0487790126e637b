"""lm-evaluation-harness through its Python API: local task folders resolved at run time, task checks that fail with
one clear line, a model loaded once and run over every task, and the base-vs-tuned results table."""

from __future__ import annotations

import difflib
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from teams_rl.core.errors import TeamsRLError

logger = logging.getLogger(__name__)

LOCAL_TASK = "teams_rl_mc"  # the offline task shipped in eval/
_DATA_FILE_KEYS = ("data_files", "data_dir")


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark: an lm-eval task, group or tag name, and its number of few-shot examples (None: the task's)."""

    name: str
    num_fewshot: int | None = None

    @classmethod
    def parse(cls, text: str) -> TaskSpec:
        name, _, shots = str(text).strip().partition(":")
        if not name or (shots and not shots.strip().isdigit()):
            raise TeamsRLError(f"bad task '{text}': write NAME or NAME:SHOTS, e.g. arc_challenge:25", field="tasks")
        return cls(name.strip(), int(shots) if shots else None)


def lm_eval_version() -> str:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:  # not installed: the caller raises the install hint
        return "not installed"


def _require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise TeamsRLError("evaluation needs lm-evaluation-harness: pip install 'teams-rl[eval]'") from None
    return lm_eval


# --- Local tasks ----------------------------------------------------------------------------------------------------
class _Tagged:
    """A YAML node with a custom tag (lm-eval's ``!function module.fn``), carried through a rewrite unchanged."""

    def __init__(self, tag: str, value: str):
        self.tag, self.value = tag, value


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: _Tagged("!" + suffix, loader.construct_scalar(node)))
_Dumper.add_representer(_Tagged, lambda dumper, data: dumper.represent_scalar(data.tag, data.value))


def _absolute(value, base: Path):
    if isinstance(value, str):
        return value if "://" in value or Path(value).is_absolute() else str((base / value).resolve())
    if isinstance(value, list):
        return [_absolute(v, base) for v in value]
    if isinstance(value, dict):
        return {k: _absolute(v, base) for k, v in value.items()}
    return value


def resolve_tasks_dir(source: str | Path, dest: str | Path) -> Path:
    """Copy a folder of task YAMLs into ``dest``, with relative ``data_files``/``data_dir`` made absolute against
    each YAML's own folder (lm-eval reads them relative to the working directory). Python helpers are copied too."""
    source, dest = Path(source), Path(dest)
    if not source.is_dir():
        raise TeamsRLError("local task folder not found", file=str(source), field="tasks_dir")
    if dest.exists():
        shutil.rmtree(dest)
    for path in sorted(source.rglob("*")):
        target = dest / path.relative_to(source)
        if path.suffix in (".yaml", ".yml"):
            config = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506 (SafeLoader subclass)
            kwargs = config.get("dataset_kwargs") if isinstance(config, dict) else None
            if isinstance(kwargs, dict):
                for key in _DATA_FILE_KEYS:
                    if key in kwargs:
                        kwargs[key] = _absolute(kwargs[key], path.parent)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True), "utf-8")
        elif path.suffix == ".py":
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest


def local_task_names(folder: str | Path | None) -> list[str]:
    """The ``task:`` names declared by the YAMLs of a local folder."""
    names = []
    for path in sorted(Path(folder).rglob("*.y*ml")) if folder else []:
        config = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)  # noqa: S506
        if isinstance(config, dict) and isinstance(config.get("task"), str):
            names.append(config["task"])
    return names


def task_manager(specs: Sequence[TaskSpec], include_path: str | Path | None):
    """A ``TaskManager``; when every task is local it skips indexing lm-eval's ~15k built-in YAMLs (~30 s)."""
    _require_lm_eval()
    from lm_eval.tasks import TaskManager

    local = set(local_task_names(include_path))
    only_local = bool(local) and all(s.name in local for s in specs)
    return TaskManager(include_path=str(include_path) if include_path else None, include_defaults=not only_local)


def check_tasks(manager, specs: Sequence[TaskSpec], include_path: str | Path | None) -> None:
    """Fail before any model is loaded: an unknown name, or a task whose data cannot be reached, is one line."""
    known = set(manager.all_tasks)
    local = local_task_names(include_path)
    offline_hint = f"use the local task {local[0]} (tasks_dir: eval)" if local else "use a local task folder"
    for spec in specs:
        if spec.name not in known:
            close = difflib.get_close_matches(spec.name, known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise TeamsRLError(
                f"unknown lm-eval task '{spec.name}': {hint}list tasks with `lm-eval ls tasks`, or {offline_hint}",
                field="tasks",
            )
        try:
            manager.load([spec.name])
        except Exception as err:  # offline Hub, missing file, gated dataset: all the user's to fix
            where = "a local file" if spec.name in local else "the Hugging Face Hub (network access)"
            reason = " ".join(str(err).split())[:300]
            raise TeamsRLError(
                f"task '{spec.name}': its data cannot be reached ({type(err).__name__}: {reason}); "
                f"this task needs {where}; offline, {offline_hint}",
                field="tasks",
            ) from None


# --- Running --------------------------------------------------------------------------------------------------------
def load_lm(
    pretrained: str,
    *,
    adapter: str | None = None,
    tokenizer: str | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    batch_size: int = 8,
):
    """lm-eval's ``hf`` model (``HFLM``), loaded once; ``adapter`` is a peft folder applied with ``peft=``."""
    lm_eval = _require_lm_eval()
    args = {"pretrained": pretrained, "dtype": dtype}
    if adapter:
        args["peft"] = adapter
    if tokenizer:
        args["tokenizer"] = tokenizer
    return lm_eval.api.registry.get_model("hf").create_from_arg_obj(args, {"batch_size": batch_size, "device": device})


def has_chat_template(lm) -> bool:
    return bool(getattr(getattr(lm, "tokenizer", None), "chat_template", None))


def run_tasks(
    lm,
    specs: Sequence[TaskSpec],
    manager,
    *,
    chat_template: bool,
    limit: float | None = None,
    bootstrap_iters: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """Each task with its own few-shot count (lm-eval takes one count per call). Returns per task: metrics
    (``{"acc": (value, stderr)}``), lm-eval's task version, the shots used and the number of documents scored."""
    lm_eval = _require_lm_eval()
    out = {}
    for spec in specs:
        logger.info(
            "lm-eval: %s (%s-shot%s)",
            spec.name,
            spec.num_fewshot if spec.num_fewshot is not None else "default",
            ", chat template" if chat_template else "",
        )
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=[spec.name],
            num_fewshot=spec.num_fewshot,
            task_manager=manager,
            limit=limit,
            apply_chat_template=chat_template,
            fewshot_as_multiturn=chat_template,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        out[spec.name] = _task_result(res, spec.name)
    return out


def _task_result(res: dict, name: str) -> dict:
    raw = res["results"].get(name) or res.get("groups", {}).get(name, {})
    metrics = {}
    for key, value in raw.items():
        metric, _, filt = key.partition(",")
        if (
            metric in ("alias", "name", "sample_len")
            or metric.endswith("_stderr")
            or not isinstance(value, int | float)
        ):
            continue
        label = metric if filt in ("none", "") else f"{metric} ({filt})"
        stderr = raw.get(f"{metric}_stderr,{filt}")
        metrics[label] = (float(value), float(stderr) if isinstance(stderr, int | float) else None)
    samples = res.get("n-samples", {})
    n = samples[name]["effective"] if name in samples else sum(v.get("effective", 0) for v in samples.values())
    return {
        "metrics": metrics,
        "version": res.get("versions", {}).get(name),
        "num_fewshot": res.get("n-shot", {}).get(name),
        "samples": n,
        "higher_is_better": res.get("higher_is_better", {}).get(name, {}),
    }


# --- The table ------------------------------------------------------------------------------------------------------
def comparison_rows(base: dict[str, dict], tuned: dict[str, dict] | None) -> list[dict]:
    """One row per (task, metric): base and tuned scores with stderr, and the delta (tuned - base) with its stderr
    (independent errors: sqrt(se_b^2 + se_t^2))."""
    rows = []
    for task, result in base.items():
        for metric, (value, stderr) in result["metrics"].items():
            row = {
                "task": task,
                "metric": metric,
                "n_shot": result["num_fewshot"],
                "samples": result["samples"],
                "base": value,
                "base_stderr": stderr,
                "tuned": None,
                "tuned_stderr": None,
                "delta": None,
                "delta_stderr": None,
            }
            other = (tuned or {}).get(task, {}).get("metrics", {}).get(metric)
            if other is not None:
                row.update(tuned=other[0], tuned_stderr=other[1], delta=other[0] - value)
                if stderr is not None and other[1] is not None:
                    row["delta_stderr"] = math.sqrt(stderr**2 + other[1] ** 2)
            rows.append(row)
    return rows


def fmt_score(value: float | None, stderr: float | None = None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return text + (f" ± {stderr:.4f}" if stderr is not None and not math.isnan(stderr) else "")


def markdown_table(rows: Sequence[dict]) -> str:
    """The base-vs-tuned table as GitHub Markdown (value ± stderr)."""
    lines = ["| task | metric | shots | n | base | tuned | delta |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['n_shot']} | {r['samples']} | "
            f"{fmt_score(r['base'], r['base_stderr'])} | {fmt_score(r['tuned'], r['tuned_stderr'])} | "
            f"{fmt_score(r['delta'], r['delta_stderr'], signed=True)} |"
        )
    return "\n".join(lines) + "\n"
