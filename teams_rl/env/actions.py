"""The six instruction-evolution actions and the reviewer prompts: YAML files, validated on load,
rendered as chat messages (system, few-shot user/assistant turns, then the real request)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from teams_rl.core.errors import TeamsRLError
from teams_rl.env.parsing import INPUT_LABEL
from teams_rl.llm.base import Message

PROMPTS_DIR = Path(__file__).parent / "prompts"
CANONICAL_ORDER = ("add_constraints", "deepen", "concretize", "add_reasoning", "in_breadth", "complicate_input")


def _fill(template: str, values: dict[str, str], optional: Sequence[str] = ()) -> str:
    """Substitute placeholders. An empty optional value removes its placeholder together with the whitespace
    (blank lines included) just before it, so no dangling label or gap is left."""
    out = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        out += literal
        if field is None:
            continue
        if field in optional and not values.get(field, "").strip():
            out = out.rstrip()
        elif field not in values:
            raise TeamsRLError(f"no value given for placeholder {{{field}}}", field=field)
        else:
            out += values[field]
    return out.strip()


@dataclass(frozen=True)
class Example:
    """A few-shot example: the user turn renders ``instruction``/``input``; ``rewrite`` is the assistant turn."""

    instruction: str
    rewrite: str
    input: str = ""


@dataclass(frozen=True)
class Action:
    """One evolution action. ``render`` builds the rewriter's chat.

    ``{input}`` in the template expands to ``"Input:\\n<input>"``, or vanishes with the whitespace before it when
    the input is empty. A template without ``{input}`` gets that block appended at the end when there is one.
    """

    name: str
    description: str
    system: str
    template: str
    examples: tuple[Example, ...] = ()
    source: str = ""

    def user_turn(self, instruction: str, input: str = "") -> str:
        block = f"{INPUT_LABEL}\n{input.strip()}" if input.strip() else ""
        text = _fill(self.template, {"instruction": instruction.strip(), "input": block}, optional=("input",))
        has_slot = any(field == "input" for _, field, _, _ in string.Formatter().parse(self.template))
        return f"{text}\n\n{block}" if block and not has_slot else text

    def render(self, instruction: str, input: str = "") -> tuple[Message, ...]:
        messages: list[Message] = [{"role": "system", "content": self.system}] if self.system.strip() else []
        for ex in self.examples:
            messages.append({"role": "user", "content": self.user_turn(ex.instruction, ex.input)})
            messages.append({"role": "assistant", "content": ex.rewrite.strip()})
        messages.append({"role": "user", "content": self.user_turn(instruction, input)})
        return tuple(messages)


@dataclass(frozen=True)
class PromptSpec:
    """A reviewer prompt; ``choices`` are the answers scored by log-probability (e.g. ``("Yes", "No")``)."""

    name: str
    system: str
    template: str
    choices: tuple[str, ...] = ()
    source: str = ""

    def render(self, **values: str) -> tuple[Message, ...]:
        """Fill the template; every placeholder it uses needs a value, extra values are ignored."""
        user = _fill(self.template, {k: str(v) for k, v in values.items()})
        system = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return (*system, {"role": "user", "content": user})


class _Doc:
    """A parsed YAML mapping plus the line of each key, for errors that point at ``file:line: key``."""

    def __init__(self, path: Path, allowed: set[str], required: set[str]):
        self.file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
            line = mark.line + 1 if mark else None
            raise TeamsRLError(
                f"invalid YAML: {getattr(exc, 'problem', None) or exc}", file=self.file, line=line
            ) from None
        except OSError as exc:
            raise TeamsRLError(f"cannot read: {exc.strerror}", file=self.file) from None
        if not isinstance(node, yaml.MappingNode):
            raise TeamsRLError(
                "expected a mapping of keys", file=self.file, line=node.start_mark.line + 1 if node else 1
            )
        self.lines = self._key_lines(node, "")
        self.top = node.start_mark.line + 1
        for key in self.lines:
            if "." not in key and "[" not in key and key not in allowed:
                raise self.error(f"unknown key; allowed: {', '.join(sorted(allowed))}", key)
        missing = sorted(required - set(self.data))
        if missing:
            raise TeamsRLError("missing required key", file=self.file, line=self.top, field=missing[0])

    def _key_lines(self, node: yaml.MappingNode, prefix: str) -> dict[str, int]:
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = prefix + str(key_node.value)
            if key in lines:
                raise TeamsRLError("duplicate key", file=self.file, line=key_node.start_mark.line + 1, field=key)
            lines[key] = key_node.start_mark.line + 1
            items = value_node.value if isinstance(value_node, yaml.SequenceNode) else []
            for i, item in enumerate(items):
                lines[f"{key}[{i}]"] = item.start_mark.line + 1
                if isinstance(item, yaml.MappingNode):
                    lines.update(self._key_lines(item, f"{key}[{i}]."))
        return lines

    def error(self, message: str, field: str) -> TeamsRLError:
        line = self.lines.get(field, self.lines.get(field.rsplit(".", 1)[0], self.top))
        return TeamsRLError(message, file=self.file, line=line, field=field)

    def text(self, data: dict, key: str, field: str, *, required: bool = True, one_line: bool = False) -> str:
        value = data.get(key)
        value = "" if value is None else value  # "system:" left blank in YAML is null: the same as empty
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {type(value).__name__}", field)
        if required and not value.strip():
            raise self.error("must not be empty", field)
        if one_line and "\n" in value.strip():
            raise self.error("must be a single line", field)
        return value

    def template(self, allowed: tuple[str, ...], required: tuple[str, ...]) -> str:
        value = self.text(self.data, "template", "template")
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise self.error(f"{exc}; write {{{{ and }}}} for literal braces", "template") from None
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in allowed:
                raise self.error(
                    f"unknown placeholder {{{name}}}; allowed: {', '.join(f'{{{a}}}' for a in allowed)}", "template"
                )
            if spec or conversion:
                written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise self.error(
                    f"placeholder {written} takes no conversion or format spec; write {{{name}}}", "template"
                )
        used = {p[1] for p in parts}
        for name in required:
            if name not in used:
                raise self.error(f"template must contain {{{name}}}", "template")
        return value


_ACTION_KEYS = {"name", "description", "system", "template", "examples"}
_EXAMPLE_KEYS = {"instruction", "input", "rewrite"}


def _load_action(path: Path) -> tuple[Action, int]:
    doc = _Doc(path, _ACTION_KEYS, _ACTION_KEYS - {"examples"})
    examples = doc.data.get("examples") or []
    if not isinstance(examples, list):
        raise doc.error("must be a list of {instruction, input, rewrite}", "examples")
    parsed = []
    for i, item in enumerate(examples):
        where = f"examples[{i}]"
        if not isinstance(item, dict):
            raise doc.error("must be a mapping with instruction, rewrite and optional input", where)
        for key in item:
            if key not in _EXAMPLE_KEYS:
                raise doc.error(f"unknown key; allowed: {', '.join(sorted(_EXAMPLE_KEYS))}", f"{where}.{key}")
        for key in ("instruction", "rewrite"):
            if key not in item:
                raise doc.error("missing required key", f"{where}.{key}")
        parsed.append(
            Example(
                instruction=doc.text(item, "instruction", f"{where}.instruction"),
                rewrite=doc.text(item, "rewrite", f"{where}.rewrite"),
                input=doc.text(item, "input", f"{where}.input", required=False),
            )
        )
    name = doc.text(doc.data, "name", "name", one_line=True)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise doc.error("must be lower_snake_case (letters, digits, _)", "name")
    action = Action(
        name=name,
        description=doc.text(doc.data, "description", "description", one_line=True).strip(),
        system=doc.text(doc.data, "system", "system", required=False).strip(),
        template=doc.template(("instruction", "input"), ("instruction",)),
        examples=tuple(parsed),
        source=doc.file,
    )
    return action, doc.lines["name"]


def load_actions(folder: str | Path | None = None, names: Sequence[str] | None = None) -> list[Action]:
    """Every ``*.yaml`` action in ``folder`` (default: the shipped ones), in canonical order then by name.

    ``names`` selects and orders a subset. Raises :class:`TeamsRLError` pointing at the file, line and key at fault.
    """
    root = Path(folder) if folder is not None else PROMPTS_DIR / "actions"
    if not root.is_dir():
        raise TeamsRLError("action folder not found", file=str(root))
    files = sorted([*root.glob("*.yaml"), *root.glob("*.yml")])
    if not files:
        raise TeamsRLError("no *.yaml action files in folder", file=str(root))
    by_name: dict[str, Action] = {}
    for path in files:
        action, line = _load_action(path)
        if action.name in by_name:
            raise TeamsRLError(
                f"duplicate action name '{action.name}' (also in {by_name[action.name].source})",
                file=str(path),
                line=line,
                field="name",
            )
        by_name[action.name] = action
    rank = {n: i for i, n in enumerate(CANONICAL_ORDER)}
    ordered = sorted(by_name.values(), key=lambda a: (rank.get(a.name, len(rank)), a.name))
    if names is None:
        return ordered
    known = [a.name for a in ordered]
    for name in names:
        if name not in by_name:
            raise TeamsRLError(f"unknown action '{name}'; known: {', '.join(known)}", field="names")
    if len(set(names)) != len(names):
        raise TeamsRLError("an action is named twice", field="names")
    return [by_name[n] for n in names]


def load_prompt(
    name: str,
    folder: str | Path | None = None,
    placeholders: Sequence[str] = ("original", "rewrite"),
    required: Sequence[str] = ("rewrite",),
) -> PromptSpec:
    """A prompt file: ``judge``/``graded`` from the package's prompts/reviewer (or ``folder``), or a YAML path.

    ``placeholders`` are the names its template may use and ``required`` those it must use."""
    root = Path(folder) if folder is not None else PROMPTS_DIR / "reviewer"
    path = Path(name) if name.endswith((".yaml", ".yml")) else root / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("*.yaml")) if root.is_dir() else []
        raise TeamsRLError(f"prompt '{name}' not found; known: {', '.join(known) or 'none'}", file=str(path))
    doc = _Doc(path, {"name", "description", "system", "template", "choices"}, {"system", "template"})
    choices = doc.data.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, (str, int)) and str(c).strip() for c in choices):
        raise doc.error("must be a list of non-empty strings", "choices")
    if len({str(c) for c in choices}) != len(choices):
        raise doc.error("choices must be distinct", "choices")
    return PromptSpec(
        name=str(doc.data.get("name") or path.stem),
        system=doc.text(doc.data, "system", "system", required=False).strip(),
        template=doc.template(tuple(placeholders), tuple(required)),
        choices=tuple(str(c) for c in choices),
        source=doc.file,
    )
