"""Markdown for reports and cards: a ``rich`` table as GitHub Markdown, and jinja2 templates rendered strictly."""

from __future__ import annotations

import re
from pathlib import Path


def markdown_table(table) -> str:
    """A ``rich`` table as GitHub Markdown; its title is left to the surrounding heading."""
    from rich.text import Text

    def plain(cell) -> str:
        text = Text.from_markup(cell).plain if isinstance(cell, str) else str(cell)
        return text.replace("|", "\\|").replace("\n", " ") or " "

    align = {"right": "---:", "center": ":---:"}
    columns = [[plain(c) for c in col.cells] for col in table.columns]
    lines = [
        "| " + " | ".join(plain(c.header) for c in table.columns) + " |",
        "|" + "|".join(align.get(c.justify, "---") for c in table.columns) + "|",
    ]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in zip(*columns, strict=True)])


def render(template: str | Path, *, filters: dict | None = None, **context) -> str:
    """Render the jinja2 template file ``template`` (with extra ``filters``); an undefined name is an error, and
    runs of blank lines collapse to one."""
    import jinja2

    template = Path(template)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template.parent),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(filters or {})
    return re.sub(r"\n{3,}", "\n\n", env.get_template(template.name).render(**context))
