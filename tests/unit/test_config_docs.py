"""docs/configuration.md is generated from the config dataclasses and must not drift from them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from lit_forecast import config
from lit_forecast.config_docs import REGENERATE, field_comments, render, type_name

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_docs_configuration_matches_the_dataclasses():
    assert DOC.read_text(encoding="utf-8") == render(), (
        f"docs/configuration.md is out of date with lit_forecast/config.py: regenerate it with `{REGENERATE}` "
        "(or `make docs`)"
    )


def test_every_key_is_listed_with_its_default_and_a_description():
    text = render()
    defaults = config.Config()
    for section in dataclasses.fields(defaults):
        for f in dataclasses.fields(getattr(defaults, section.name)):
            rows = [line for line in text.splitlines() if line.startswith(f"| `{section.name}.{f.name}` |")]
            assert len(rows) == 1, (section.name, f.name)
            assert "(no description)" not in rows[0], f"{section.name}.{f.name} has no comment in config.py"
    assert "| `train.max_epochs` | int | `10` |" in text
    assert "| `data.series_column` | str or null | `null` |" in text
    assert "| `model.quantiles` | list of float | `[0.1, 0.5, 0.9]` |" in text
    assert "Where a run lives: &lt;storage&gt;/&lt;name&gt;." in text  # not an HTML tag that Markdown hides


def test_field_comments_joins_the_lines_above_and_the_end_of_line():
    source = (
        "class A:\n"
        "    x: int = 1  # the x\n"
        "    # first line\n"
        "    # second line\n"
        "    y: str = 'a'  # and more\n"
        "    z: bool = False\n"
        "    # not about w: a blank line follows\n"
        "\n"
        "    w: int = 2\n"
    )
    found = field_comments(source)
    assert found == {("A", "x"): "the x", ("A", "y"): "first line second line and more", ("A", "z"): "", ("A", "w"): ""}


def test_type_names_read_as_a_user_writes_them():
    assert type_name(int) == "int"
    assert type_name(str | None) == "str or null"
    assert type_name(Literal["sum", "mean"]) == "one of sum, mean"
    assert type_name(list[float]) == "list of float"
    assert type_name(int | float) == "int or float"
