"""Actions and reviewer prompts as data: the shipped YAMLs load and render; bad files fail with file, line and key."""

import pytest

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.actions import CANONICAL_ORDER, PROMPTS_DIR, load_actions, load_prompt

GOOD = """\
name: {name}
description: Make it longer.
system: You edit instructions.
template: |-
  Edit this instruction.

  Instruction: {{instruction}}
  {{input}}
"""


def _write(folder, filename, text):
    folder.mkdir(exist_ok=True)
    (folder / filename).write_text(text, encoding="utf-8")
    return folder


def _error(folder, filename, text, **kwargs) -> TeamsRLError:
    _write(folder, filename, text)
    with pytest.raises(TeamsRLError) as info:
        load_actions(folder, **kwargs)
    return info.value


# ---------------------------------------------------------------- shipped actions


def test_shipped_actions_load_in_canonical_order():
    actions = load_actions()
    expected = ["add_constraints", "deepen", "concretize", "add_reasoning", "in_breadth", "complicate_input"]
    assert [a.name for a in actions] == expected == list(CANONICAL_ORDER)
    for action in actions:
        assert action.source.endswith(f"{action.name}.yaml")
        assert action.description and "\n" not in action.description
        assert action.system
        assert "{instruction}" in action.template
        assert len(action.examples) == 2


def test_shipped_actions_render_the_instruction_and_input():
    for action in load_actions():
        messages = action.render("Explain photosynthesis to a child.", "")
        assert messages[0] == {"role": "system", "content": action.system}
        assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 2 + ["user"]
        last = messages[-1]["content"]
        assert last.endswith("Instruction: Explain photosynthesis to a child.")
        assert last.count("Input:") == action.template.count("Input:")  # an empty input leaves no dangling label
        assert "{" not in last

        with_input = action.render("Sort these numbers.", "  7, 2, 9 \n")[-1]["content"]
        assert with_input.endswith("Instruction: Sort these numbers.\nInput:\n7, 2, 9")


def test_few_shot_examples_become_chat_turns():
    add_constraints = load_actions(names=["add_constraints"])[0]
    messages = add_constraints.render("Name a colour.")
    first, second = add_constraints.examples
    assert messages[1]["content"].endswith(f"Instruction: {first.instruction}")
    assert messages[2] == {"role": "assistant", "content": first.rewrite.strip()}
    # the second example has an input: its user turn carries it, the assistant turn is the rewrite with its input
    assert second.input == "7, 2, 9, 4"
    assert messages[3]["content"].endswith(f"Instruction: {second.instruction}\nInput:\n7, 2, 9, 4")
    assert messages[4]["content"].endswith("Input:\n7, 2, 9, 4")
    assert messages[4]["content"].startswith("Sort these numbers from largest to smallest")


def test_names_select_and_order_a_subset():
    assert [a.name for a in load_actions(names=["in_breadth", "deepen"])] == ["in_breadth", "deepen"]


def test_unknown_action_name_in_subset():
    with pytest.raises(TeamsRLError) as info:
        load_actions(names=["deepen", "widen"])
    assert info.value.field == "names"
    assert "unknown action 'widen'" in str(info.value)
    assert "add_constraints" in str(info.value)  # lists the known ones


def test_action_named_twice_in_subset():
    with pytest.raises(TeamsRLError, match="named twice"):
        load_actions(names=["deepen", "deepen"])


# ---------------------------------------------------------------- custom actions


def test_custom_action_without_input_slot_appends_the_input(tmp_path):
    text = "name: shorten\ndescription: d\nsystem: ''\ntemplate: 'Shorten: {instruction}'\n"
    action = load_actions(_write(tmp_path / "a", "shorten.yaml", text))[0]
    assert action.render("Write a long essay.") == ({"role": "user", "content": "Shorten: Write a long essay."},)
    assert action.render("Sum these.", "1, 2")[-1]["content"] == "Shorten: Sum these.\n\nInput:\n1, 2"


def test_custom_actions_come_after_canonical_ones(tmp_path):
    folder = tmp_path / "a"
    for name in ("zeta", "deepen", "alpha", "add_constraints"):
        _write(folder, f"{name}.yml" if name == "alpha" else f"{name}.yaml", GOOD.format(name=name))
    assert [a.name for a in load_actions(folder)] == ["add_constraints", "deepen", "alpha", "zeta"]


def test_blank_system_means_no_system_message(tmp_path):
    action = load_actions(
        _write(tmp_path / "a", "x.yaml", GOOD.format(name="x").replace("You edit instructions.", ""))
    )[0]
    assert action.system == ""
    assert [m["role"] for m in action.render("Do it.")] == ["user"]


# ---------------------------------------------------------------- validation errors


def test_unknown_placeholder(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", GOOD.format(name="x").replace("{input}", "{context}"))
    assert (err.file, err.line, err.field) == (str(tmp_path / "a" / "x.yaml"), 4, "template")
    assert "unknown placeholder {context}" in err.message
    assert "{instruction}, {input}" in err.message
    assert str(err).startswith(f"{tmp_path / 'a' / 'x.yaml'}:4: template: ")


def test_placeholder_with_conversion_is_named_as_written(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", "name: x\ndescription: d\nsystem: s\ntemplate: 'Do {instruction!r}'\n")
    assert (err.line, err.field) == (4, "template")
    assert "{instruction!r}" in err.message and "unknown" not in err.message


def test_template_must_use_instruction(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", "name: x\ndescription: d\nsystem: s\ntemplate: 'Do {input}'\n")
    assert (err.line, err.field) == (4, "template")
    assert "{instruction}" in err.message


def test_unbalanced_brace(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", "name: x\ndescription: d\nsystem: s\ntemplate: 'Do {instruction'\n")
    assert (err.line, err.field) == (4, "template")
    assert "{{" in err.message


@pytest.mark.parametrize("template", ["''", "'   '", ""])
def test_empty_template(tmp_path, template):
    err = _error(tmp_path / "a", "x.yaml", f"name: x\ndescription: d\nsystem: s\ntemplate: {template}\n")
    assert (err.line, err.field, err.message) == (4, "template", "must not be empty")


def test_missing_required_key(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", "name: x\ndescription: d\ntemplate: 'Do {instruction}'\n")
    assert (err.file, err.line, err.field) == (str(tmp_path / "a" / "x.yaml"), 1, "system")
    assert "missing required key" in err.message


def test_unknown_key(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", GOOD.format(name="x") + "temperature: 0.7\n")
    assert (err.line, err.field) == (9, "temperature")
    assert "unknown key" in err.message and "template" in err.message


def test_duplicate_key(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", "name: x\n" + GOOD.format(name="y"))
    assert (err.line, err.field, err.message) == (2, "name", "duplicate key")


def test_bad_yaml(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", "name: x\ndescription: d\n  system: s\n")
    assert err.file == str(tmp_path / "a" / "x.yaml")
    assert err.line == 3
    assert "invalid YAML" in err.message


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a\n- b\n"])
def test_not_a_mapping(tmp_path, text):
    err = _error(tmp_path / "a", "x.yaml", text)
    assert err.message == "expected a mapping of keys"
    assert err.line == 1


def test_bad_name(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", GOOD.format(name="Add Detail"))
    assert (err.line, err.field) == (1, "name")
    assert "lower_snake_case" in err.message


def test_non_string_field(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", GOOD.format(name="x").replace("Make it longer.", "[a, b]"))
    assert (err.line, err.field) == (2, "description")
    assert "must be a string, got list" in err.message


def test_example_with_unknown_key(tmp_path):
    text = GOOD.format(name="x") + "examples:\n  - instruction: a\n    rewrite: b\n    output: c\n"
    err = _error(tmp_path / "a", "x.yaml", text)
    assert (err.line, err.field) == (12, "examples[0].output")
    assert "unknown key" in err.message


def test_example_missing_rewrite(tmp_path):
    text = GOOD.format(name="x") + "examples:\n  - instruction: a\n    rewrite: b\n  - instruction: c\n"
    err = _error(tmp_path / "a", "x.yaml", text)
    assert (err.line, err.field) == (12, "examples[1].rewrite")
    assert "missing required key" in err.message


def test_examples_must_be_a_list(tmp_path):
    err = _error(tmp_path / "a", "x.yaml", GOOD.format(name="x") + "examples: none\n")
    assert (err.line, err.field) == (9, "examples")


def test_duplicate_action_names_across_files(tmp_path):
    folder = _write(tmp_path / "a", "first.yaml", GOOD.format(name="same"))
    err = _error(folder, "second.yaml", GOOD.format(name="same"))
    assert (err.file, err.line, err.field) == (str(folder / "second.yaml"), 1, "name")
    assert "duplicate action name 'same'" in err.message
    assert str(folder / "first.yaml") in err.message


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(TeamsRLError, match="folder not found"):
        load_actions(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeamsRLError, match="no \\*.yaml action files"):
        load_actions(tmp_path / "empty")


# ---------------------------------------------------------------- reviewer prompts


def test_shipped_reviewer_prompts():
    judge = load_prompt("judge")
    assert judge.choices == ("Yes", "No")
    assert judge.source == str(PROMPTS_DIR / "reviewer" / "judge.yaml")
    messages = judge.render(original="Write a poem.", rewrite="Write a sonnet about rain.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Instruction A:\nWrite a poem.\n\nInstruction B:\nWrite a sonnet about rain.\n" in messages[1]["content"]
    assert "{" not in messages[1]["content"]

    graded = load_prompt("graded")
    assert graded.choices == tuple(str(i) for i in range(1, 11))
    assert (
        "New instruction:\nB text" in graded.render(original="A text", rewrite="B text", extra="ignored")[1]["content"]
    )


def test_prompt_render_needs_every_placeholder():
    with pytest.raises(TeamsRLError) as info:
        load_prompt("judge").render(rewrite="only the rewrite")
    assert info.value.field == "original"


def test_unknown_prompt_lists_known_ones():
    with pytest.raises(TeamsRLError) as info:
        load_prompt("jduge")
    assert "known: graded, judge" in info.value.message
    assert info.value.file.endswith("jduge.yaml")


def _prompt_error(tmp_path, text) -> TeamsRLError:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TeamsRLError) as info:
        load_prompt(str(path))
    assert info.value.file == str(path)
    return info.value


def test_custom_prompt_by_path(tmp_path):
    path = tmp_path / "strict.yaml"
    path.write_text("system: Be strict.\ntemplate: 'Is {rewrite} harder than {original}?'\nchoices: [Y, N]\n")
    spec = load_prompt(str(path))
    assert (spec.name, spec.choices) == ("strict", ("Y", "N"))
    assert spec.render(original="a", rewrite="b") == (
        {"role": "system", "content": "Be strict."},
        {"role": "user", "content": "Is b harder than a?"},
    )


def test_prompt_unknown_placeholder(tmp_path):
    err = _prompt_error(tmp_path, "system: s\ntemplate: 'Rate {instruction}: {rewrite}'\n")
    assert (err.line, err.field) == (2, "template")
    assert "unknown placeholder {instruction}" in err.message and "{original}, {rewrite}" in err.message


def test_prompt_template_needs_rewrite(tmp_path):
    err = _prompt_error(tmp_path, "system: s\ntemplate: 'Rate {original}'\n")
    assert (err.line, err.field) == (2, "template")
    assert "{rewrite}" in err.message


def test_prompt_missing_template(tmp_path):
    err = _prompt_error(tmp_path, "name: p\nsystem: s\n")
    assert (err.line, err.field, err.message) == (1, "template", "missing required key")


def test_prompt_empty_template(tmp_path):
    err = _prompt_error(tmp_path, "system: s\ntemplate:\n")
    assert (err.line, err.field, err.message) == (2, "template", "must not be empty")


def test_prompt_unknown_key(tmp_path):
    err = _prompt_error(tmp_path, "system: s\ntemplate: '{rewrite}'\nchoice: [Yes, No]\n")
    assert (err.line, err.field) == (3, "choice")


@pytest.mark.parametrize(
    ("choices", "message"),
    [("Yes", "list of non-empty strings"), ("[Yes, '']", "list of non-empty strings"), ("[Yes, Yes]", "distinct")],
)
def test_prompt_bad_choices(tmp_path, choices, message):
    err = _prompt_error(tmp_path, f"system: s\ntemplate: '{{rewrite}}'\nchoices: {choices}\n")
    assert (err.line, err.field) == (3, "choices")
    assert message in err.message


def test_prompt_bad_yaml(tmp_path):
    err = _prompt_error(tmp_path, "system: s\ntemplate: [oops\n")
    assert err.line == 3 and "invalid YAML" in err.message
