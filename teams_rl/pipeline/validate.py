"""The up-front check of ``teams-rl run``: each stage's command line parsed now, as the stage itself will parse it,
so a typo in a recipe or an override fails before any stage runs; an error points at the pipeline recipe's
overrides field for that stage (``OVERRIDES``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.recipe_check import recipe_line
from teams_rl.core.recipes import parse_args


class StageLine(Protocol):
    """What the check reads of a planned stage (``plan.Stage``): its name, its recipe and its command lines."""

    name: str
    recipe: str | None
    commands: list[list[str]]


OVERRIDES = {
    "train-policy": "policy_overrides",
    "synthesize": "synthesize_overrides",
    "baseline": "baseline_overrides",
    "sft": "sft_overrides",
    "evaluate": "eval_overrides",
}


def parse_stage(name: str, argv: list[str], recipe: str | None = None) -> tuple:
    """A stage's command line parsed as the stage will parse it; a bad flag points at the pipeline's overrides."""
    from teams_rl.evaluate.args import EvalArguments
    from teams_rl.policy import train
    from teams_rl.sft import args as sft
    from teams_rl.synthesize import run as synthesize

    try:
        if name == "train-policy":
            return parse_args(train.argument_classes(argv), argv, "teams-rl train-policy")[0]
        if name in ("synthesize", "baseline"):
            from teams_rl.synthesize.distributed import check_executor

            parsed = parse_args(synthesize.ARGUMENTS, argv, "teams-rl synthesize")[0]
            check_executor(parsed[1])  # executor ray with a shard: refused before any stage runs
            return parsed
        if name == "sft":
            return sft.parse(argv)[0]
        return parse_args([EvalArguments], argv, "teams-rl evaluate")[0]
    except TeamsRLError as err:
        raise err.located(recipe, recipe_line(recipe, OVERRIDES[name])) from None


def validate(stages: Iterable[StageLine], recipe: str | None = None) -> None:
    """Parse every stage's command line now, so a typo in a recipe or an override fails before hours of work."""
    for stage in stages:
        if stage.recipe and stage.name != "sft":  # sft was parsed by plan()
            parse_stage(stage.name, stage.commands[0][stage.commands[0].index("--config") :], recipe)
