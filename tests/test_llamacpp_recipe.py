"""The llama.cpp recipe parses and validates like every shipped recipe, and matches config_random.yaml in all that
is not about where the model runs, so the two routes stay comparable. No llama.cpp server is needed."""

from pathlib import Path

import yaml

from teams_rl.core.recipe_check import validate_recipe
from teams_rl.core.recipes import parse_args
from teams_rl.synthesize.args import ARGUMENTS

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-135m" / "synthesize"
RECIPE = RECIPES / "config_llamacpp.yaml"
# Keys that say where and how the model is served; everything else must equal config_random.yaml.
SERVING = (
    "_backend",
    "_base_url",
    "_api_key_env",
    "_timeout_s",
    "_dtype",
    "_batch_size",
)  # batch = requests in flight there


def test_the_llamacpp_recipe_validates_and_parses():
    config = validate_recipe(RECIPE, ARGUMENTS)
    (_, run, expert, reviewer, review, _), recipe = parse_args(ARGUMENTS, ["--config", str(RECIPE)])
    assert recipe == str(RECIPE) and config["output_dir"] == run.output_dir
    for role in (expert, reviewer):
        prefix = "expert" if role is expert else "reviewer"
        assert getattr(role, f"{prefix}_backend") == "openai"
        assert getattr(role, f"{prefix}_base_url") == "http://127.0.0.1:8080/v1"
        assert getattr(role, f"{prefix}_model") == "smollm2-135m"
    assert "judge_logprob" in review.reviewer_modes


def test_the_llamacpp_recipe_differs_from_the_random_one_only_in_serving():
    ours = yaml.safe_load(RECIPE.read_text(encoding="utf-8"))
    random = yaml.safe_load((RECIPES / "config_random.yaml").read_text(encoding="utf-8"))
    same = {k for k in ours.keys() | random.keys() if not k.endswith(SERVING) and k != "output_dir"}
    assert {k: ours.get(k) for k in same} == {k: random.get(k) for k in same}
    assert ours["output_dir"] != random["output_dir"]
