"""What ``teams-rl run`` will do: the pipeline recipe (``PipelineArguments``), each stage's exact command line wired
to the run folder, and a fingerprint per stage (the up-front parse of every command line is ``validate``'s)."""

from __future__ import annotations

import hashlib
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from teams_rl.core.bounds import bounded, one_of
from teams_rl.core.errors import TeamsRLError
from teams_rl.core.layout import recipe_path
from teams_rl.core.recipe_check import recipe_line
from teams_rl.pipeline.validate import parse_stage

STAGE_ORDER = ("train-policy", "synthesize", "baseline", "sft", "evaluate", "push")
UPSTREAM = {
    "train-policy": (),
    "synthesize": ("train-policy",),
    "baseline": (),
    "sft": ("synthesize",),
    "evaluate": ("synthesize", "sft"),
    "push": ("synthesize", "sft", "evaluate"),
}


@bounded()
@dataclass
class PipelineArguments:
    """One experiment: which stage recipes to chain, what to change in them, and where the run lives."""

    run_dir: str = field(
        default="runs/pipeline",
        metadata={
            "help": "The run folder every stage writes into (policy/, dataset/, baseline-random/, sft/, eval/, "
            "report)."
        },
    )
    stages: list[str] = field(
        default_factory=lambda: list(STAGE_ORDER),
        metadata={
            "bound": one_of(*STAGE_ORDER),
            "help": "Stages to run, in order: train-policy synthesize baseline sft evaluate push. Leave one out to "
            "use its recipe's own input instead (e.g. no train-policy: synthesis uses its recipe's policy).",
        },
    )
    policy_recipe: str | None = field(default=None, metadata={"help": "train-policy recipe (policy/config_*.yaml)."})
    policy_overrides: list[str] = field(
        default_factory=list, metadata={"help": "key=value changes to the policy recipe, e.g. max_steps=12."}
    )
    policy_launcher: str | None = field(
        default=None,
        metadata={
            "help": "Launch train-policy with this command + `-m teams_rl.policy`, e.g. 'accelerate launch "
            "--config_file accelerate_configs/ddp.yaml'. Default: this Python."
        },
    )
    synthesize_recipe: str | None = field(default=None, metadata={"help": "synthesize recipe (synthesize/*.yaml)."})
    synthesize_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "key=value changes to the synthesis recipe (also applied to the random baseline)."},
    )
    baseline_overrides: list[str] = field(
        default_factory=list,
        metadata={"help": "key=value changes for the random baseline only (same seeds, the uniform-random policy)."},
    )
    sft_recipe: str | None = field(default=None, metadata={"help": "sft recipe (sft/config_*.yaml)."})
    sft_overrides: list[str] = field(default_factory=list, metadata={"help": "key=value changes to the SFT recipe."})
    sft_launcher: str | None = field(
        default=None,
        metadata={
            "help": "Launch SFT with this command + `-m teams_rl.sft`, e.g. 'accelerate launch --config_file "
            "accelerate_configs/deepspeed_zero2.yaml'. Default: this Python."
        },
    )
    eval_recipe: str | None = field(default=None, metadata={"help": "evaluate recipe (eval/config.yaml)."})
    eval_overrides: list[str] = field(default_factory=list, metadata={"help": "key=value changes to the eval recipe."})
    push_dataset_repo_id: str | None = field(
        default=None, metadata={"help": "push: the dataset's Hub repo (USER/NAME)."}
    )
    push_model_repo_id: str | None = field(default=None, metadata={"help": "push: the model's Hub repo (USER/NAME)."})
    push_revision: str | None = field(default=None, metadata={"help": "push: a branch per experiment (default main)."})
    push_public: bool = field(default=False, metadata={"help": "push: create public repos (default private)."})
    push_overwrite: bool = field(
        default=False,
        metadata={
            "help": "push: replace what an earlier push left at push_revision (otherwise such a push is refused)."
        },
    )


@dataclass
class Stage:
    name: str
    commands: list[list[str]]
    done_marker: Path
    outputs: list[Path]
    fingerprint: str
    recipe: str | None = None
    note: str = ""


# Keys the pipeline sets so that stages find each other's outputs; overriding them would break the chain.
FORCED = {
    "train-policy": {"output_dir"},
    "synthesize": {"output_dir", "policy"},
    "baseline": {"output_dir", "policy"},
    "sft": {"output_dir", "dataset_name"},
    "evaluate": {"output_dir", "tuned_model", "dataset", "privacy_sft_config"},
}


def _flags(pairs: list[str], option: str, stage: str, recipe: str | None) -> list[str]:
    out = []
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise TeamsRLError(
                f"expected key=value, got '{pair}'", file=recipe, line=recipe_line(recipe, option), field=option
            )
        if key.strip() in FORCED.get(stage, ()):
            raise TeamsRLError(
                f"'{key.strip()}' is set by the pipeline (from run_dir) so stages find each other",
                file=recipe,
                line=recipe_line(recipe, option),
                field=option,
            )
        out += [f"--{key.strip()}", *shlex.split(value)]
    return out


def _python(*module: str) -> list[str]:
    return [sys.executable, "-m", *module]


def _launcher(custom: str | None, module: str, stage: str) -> list[str]:
    return shlex.split(custom) + ["-m", module] if custom else _python("teams_rl.cli", stage)


def _fingerprint(argv: list[str], recipe: str | None, upstream: list[str]) -> str:
    text = Path(recipe).read_text(encoding="utf-8") if recipe and Path(recipe).is_file() else ""
    blob = json.dumps({"argv": argv, "recipe": text, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def _need(value: str | None, option: str, stage: str, recipe: str | None) -> str:
    if not value:
        raise TeamsRLError(f"stage '{stage}' is in `stages` but has no recipe", file=recipe, field=option)
    return value


def plan(args: PipelineArguments, recipe: str | None = None) -> list[Stage]:
    """The stages to run with their exact command lines, in order."""
    unknown = [s for s in args.stages if s not in STAGE_ORDER]
    if unknown:
        raise TeamsRLError(
            f"unknown stage '{unknown[0]}' (choose from {', '.join(STAGE_ORDER)})",
            file=recipe,
            line=recipe_line(recipe, "stages"),
            field="stages",
        )
    run = Path(args.run_dir)
    on = [s for s in STAGE_ORDER if s in args.stages]
    stages: dict[str, Stage] = {}

    def add(
        name: str,
        commands: list[list[str]],
        marker: Path,
        outputs: list[Path],
        stage_recipe: str | None,
        argv: list[str],
        note: str = "",
    ) -> None:
        ups = [stages[u].fingerprint for u in UPSTREAM[name] if u in stages]
        stages[name] = Stage(
            name, commands, marker, outputs, _fingerprint(argv, stage_recipe, ups), stage_recipe, note
        )

    if "train-policy" in on:
        r = _need(args.policy_recipe, "policy_recipe", "train-policy", recipe)
        argv = [
            "--config",
            r,
            *_flags(args.policy_overrides, "policy_overrides", "train-policy", recipe),
            "--output_dir",
            str(run),
        ]
        add(
            "train-policy",
            [_launcher(args.policy_launcher, "teams_rl.policy", "train-policy") + argv],
            run / "policy" / "policy.json",
            [run / "policy", run / "plots", run / "runs", recipe_path(run, "train-policy")],
            r,
            argv,
        )
    synth_flags = _flags(args.synthesize_overrides, "synthesize_overrides", "synthesize", recipe)
    for name in ("synthesize", "baseline"):
        if name not in on:
            continue
        r = _need(args.synthesize_recipe, "synthesize_recipe", name, recipe)
        if name == "synthesize":
            out, policy = run, ["--policy", str(run / "policy")] if "train-policy" in on else []
            extra = []
        else:
            out, policy = run / "baseline-random", ["--policy", "random"]
            extra = _flags(args.baseline_overrides, "baseline_overrides", "baseline", recipe)
        argv = ["--config", r, *synth_flags, *extra, "--output_dir", str(out), *policy]
        commands = [_python("teams_rl.cli", "synthesize") + argv]
        if name == "baseline":  # the baseline's dataset metrics, for the policy-vs-random comparison
            commands.append(_python("teams_rl.cli", "metrics", str(out / "dataset"), "--output_dir", str(out)))
        add(
            name,
            commands,
            out / ("eval/metrics.json" if name == "baseline" else "dataset/summary.json"),
            [out / "dataset", out / "eval", recipe_path(out, "synthesize")],
            r,
            argv,
        )
    if "sft" in on:
        r = _need(args.sft_recipe, "sft_recipe", "sft", recipe)
        argv = [
            "--config",
            r,
            *_flags(args.sft_overrides, "sft_overrides", "sft", recipe),
            "--output_dir",
            str(run / "sft"),
            *(["--dataset_name", str(run / "dataset")] if "synthesize" in on else []),
        ]
        add(
            "sft",
            [_launcher(args.sft_launcher, "teams_rl.sft", "sft") + argv],
            run / "sft" / _sft_weights(argv, recipe) / "README.md",
            [run / "sft"],
            r,
            argv,
        )
    if "evaluate" in on:
        r = _need(args.eval_recipe, "eval_recipe", "evaluate", recipe)
        argv = [
            "--config",
            r,
            *_flags(args.eval_overrides, "eval_overrides", "evaluate", recipe),
            "--output_dir",
            str(run),
        ]
        if "sft" in on:
            argv += [
                "--tuned_model",
                str(stages["sft"].done_marker.parent),
                "--privacy_sft_config",
                str(run / "sft" / "config" / "sft.yaml"),
            ]
        if "synthesize" in on:
            argv += ["--dataset", str(run / "dataset")]
        add(
            "evaluate",
            [_python("teams_rl.cli", "evaluate") + argv],
            run / "eval" / "results.json",
            [run / "eval"],
            r,
            argv,
        )
    if "push" in on:
        common = [
            *(["--revision", args.push_revision] if args.push_revision else []),
            *(["--public"] if args.push_public else []),
            *(["--overwrite"] if args.push_overwrite else []),
        ]
        commands = [
            _python("teams_rl.cli", "push", kind, str(run), "--repo-id", repo, *common)
            for kind, repo in (("dataset", args.push_dataset_repo_id), ("model", args.push_model_repo_id))
            if repo
        ]
        argv = [c for cmd in commands for c in cmd[3:]]
        note = "" if commands else "nothing to push: set push_dataset_repo_id and/or push_model_repo_id"
        add("push", [c for c in commands if not _pushed(run, c)], run / "hub.json", [], None, argv, note)
    return list(stages.values())


def _pushed(run: Path, command: list[str]) -> bool:
    """Already on the Hub (hub.json records it): a push stage resumed after its model upload failed must not push
    the dataset again, which the Hub side would refuse without --overwrite."""
    from teams_rl.hub.runs import read_pushes

    kind, repo = command[command.index("push") + 1], command[command.index("--repo-id") + 1]
    revision = command[command.index("--revision") + 1] if "--revision" in command else None
    entry = read_pushes(run).get(kind) or {}
    return entry.get("repo_id") == repo and (entry.get("revision") or "main") == (revision or "main")


def _sft_weights(argv: list[str], recipe: str | None) -> str:
    """adapter/ for LoRA and QLoRA, model/ for a full fine-tune (read from the parsed SFT command line)."""
    return "adapter" if parse_stage("sft", argv, recipe)[2].use_peft else "model"
