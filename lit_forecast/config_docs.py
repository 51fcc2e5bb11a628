"""docs/configuration.md, generated from the config dataclasses of :mod:`lit_forecast.config`.

    python -m lit_forecast.config_docs > docs/configuration.md     # or: make docs

Each key's type and default come from the dataclass field; its description from the comments
written next to it in config.py: the comment lines directly above the field, then the comment
at the end of its line. ``tests/unit/test_config_docs.py`` fails when the file and this text differ.
"""

from __future__ import annotations

import ast
import dataclasses
import io
import tokenize
import types
import typing
from pathlib import Path
from typing import Literal

from lit_forecast import config

REGENERATE = "python -m lit_forecast.config_docs > docs/configuration.md"
SECTIONS = tuple(section.name for section in dataclasses.fields(config.Config))  # in the order of the tree


def field_comments(source: str) -> dict[tuple[str, str], str]:
    """(class name, field name) -> the text of the comments that describe the field in ``source``."""
    comments: dict[int, str] = {}  # line -> comment text
    code_lines: set[int] = set()  # lines holding code (a comment alone on its line is not one)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above, line = [], item.lineno - 1
            while line in comments and line not in code_lines:
                above.insert(0, comments[line])
                line -= 1
            trailing = [comments[item.end_lineno]] if item.end_lineno in comments else []
            found[(node.name, item.target.id)] = " ".join(above + trailing)
    return found


def type_name(hint: object) -> str:
    """A field's type as a reader writes it: ``int``, ``str or null``, ``one of sum, mean``."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(str(choice) for choice in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(option) for option in typing.get_args(hint))
    if origin is list:
        return f"list of {type_name(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def default_text(value: object) -> str:
    """A default as it would be written in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def escape(text: str) -> str:
    """Markdown-safe prose: ``<storage>`` would otherwise be read as an HTML tag and vanish."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render() -> str:
    """The whole of docs/configuration.md."""
    comments = field_comments(Path(config.__file__).read_text(encoding="utf-8"))
    defaults = config.Config()
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from lit_forecast/config.py; do not edit. Regenerate: {REGENERATE} (or make docs) -->",
        "",
        "A config is a YAML file of five sections (`configs/local.yaml` is the default and sets nothing).",
        "Any key can be overridden on the command line with `--set section.key=value`;",
        "`python train.py --print-config` prints the resolved tree. Unknown keys, wrong types and",
        "values out of range are refused before anything runs, naming the key.",
        "The defaults below are what `python train.py` trains.",
    ]
    hints_of = {section: typing.get_type_hints(type(getattr(defaults, section))) for section in SECTIONS}
    for section in SECTIONS:
        part = getattr(defaults, section)
        cls = type(part)
        lines += [
            "",
            f"## `{section}`",
            "",
            escape((cls.__doc__ or "").strip()),
            "",
            "| key | type | default | description |",
            "|---|---|---|---|",
        ]
        for f in dataclasses.fields(cls):
            description = escape(comments.get((cls.__name__, f.name), "") or "(no description)")
            cells = (
                f"`{section}.{f.name}`",
                type_name(hints_of[section][f.name]),
                f"`{default_text(getattr(part, f.name))}`",
                description,
            )
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
