"""Recipe validation: value types are checked whether a dataclass's annotations are resolved or left as text."""

from dataclasses import dataclass, field

import pytest

from teams_rl.core.errors import TeamsRLError
from teams_rl.core.recipe_check import validate_recipe


@dataclass
class _TextAnnotations:
    shard: "str | None" = field(default=None)
    depth: "int" = 2


@dataclass
class _Unresolvable:
    # a forward reference no module can resolve: validation falls back to the annotation's text
    thing: "NotARealType | None" = None  # noqa: F821
    limit: "int | None" = None


@pytest.mark.parametrize("cls", [_TextAnnotations, _Unresolvable])
def test_optional_text_annotations_accept_null_and_reject_other_types(tmp_path, cls):
    key = "shard" if cls is _TextAnnotations else "limit"
    ok = tmp_path / "ok.yaml"
    ok.write_text(f"{key}: null\n", encoding="utf-8")
    assert validate_recipe(ok, [cls]) == {key: None}
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"# comment\n{key}: [1, 2]\n", encoding="utf-8")
    with pytest.raises(TeamsRLError) as err:
        validate_recipe(bad, [cls])
    assert err.value.line == 2 and err.value.field == key


def test_synthesis_recipe_accepts_null_for_optional_keys(tmp_path):
    from teams_rl.env.build import ReviewArguments, ReviewerArguments, SeedArguments
    from teams_rl.synthesize.args import SynthesisArguments

    recipe = tmp_path / "r.yaml"
    recipe.write_text("shard: null\nactions: null\nmax_seeds: null\n", encoding="utf-8")
    assert validate_recipe(recipe, [SeedArguments, SynthesisArguments, ReviewerArguments, ReviewArguments])


@pytest.mark.parametrize("stage,module", [("synthesize", "teams_rl.synthesize.args"), ("sft", "teams_rl.sft.args")])
def test_inherited_keys_that_do_nothing_are_hidden_and_refused(tmp_path, stage, module, capsys):
    """TRL's ScriptArguments brings keys teams-rl never reads: --help must not list them, and setting one fails."""
    import importlib

    from teams_rl.core.recipes import parse_args

    classes = importlib.import_module(module)
    classes = classes.ARGUMENTS if stage == "synthesize" else classes.CONFIG_CLASSES
    with pytest.raises(SystemExit):
        parse_args(classes, ["--help"], f"teams-rl {stage}")
    shown = capsys.readouterr().out
    assert "--dataset_name" in shown
    for key in ("ignore_bias_buffers", "dataset_test_split", "dataset_streaming"):
        assert f"--{key}" not in shown
    recipe = tmp_path / "r.yaml"
    recipe.write_text("dataset_name: x.jsonl\nignore_bias_buffers: true\n", encoding="utf-8")
    with pytest.raises(TeamsRLError) as err:
        validate_recipe(recipe, classes)
    assert err.value.line == 2 and err.value.field == "ignore_bias_buffers" and "does nothing" in str(err.value)
    with pytest.raises(TeamsRLError, match="--dataset_streaming does nothing"):
        parse_args(classes, ["--dataset_streaming", "true"], f"teams-rl {stage}")


def test_a_saved_resolved_recipe_parses_back_as_a_recipe(tmp_path):
    """config/<stage>.yaml in a run folder must be a valid recipe again (the privacy test re-reads sft.yaml)."""
    from teams_rl.core.recipes import to_yaml
    from teams_rl.env.build import ReviewArguments, ReviewerArguments, SeedArguments
    from teams_rl.synthesize.args import ARGUMENTS, ExpertArguments, SynthesisArguments

    saved = tmp_path / "synthesize.yaml"
    saved.write_text(
        to_yaml(SeedArguments(), SynthesisArguments(), ExpertArguments(), ReviewerArguments(), ReviewArguments()),
        encoding="utf-8",
    )
    assert "ignore_bias_buffers" not in saved.read_text()
    assert validate_recipe(saved, ARGUMENTS)["depth"] == SynthesisArguments().depth
