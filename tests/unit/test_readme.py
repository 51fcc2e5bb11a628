"""The README's examples stay true: its commands parse, its make targets and files exist.

The README quotes no console output (what a command prints is tested where it is made); what
it does quote, commands, is checked here, so a renamed flag, config or script fails a test.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def code_lines(text: str) -> list[str]:
    """The lines of the fenced code blocks, comments cut, continuation lines joined."""
    lines, joined = [], ""
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            joined = f"{joined} {line}" if joined else line
            if joined.endswith("\\"):
                joined = joined[:-1].strip()
                continue
            if joined:
                lines.append(joined)
            joined = ""
    return lines


def commands(script: str) -> list[list[str]]:
    """The arguments of every ``python <script> ...`` in the README's code blocks."""
    found = []
    for line in code_lines(README.read_text(encoding="utf-8")):
        for part in re.split(r"&&|;", line):
            if script not in part:
                continue
            words = shlex.split(part)
            if script in words and words[0].endswith("python"):
                found.append(words[words.index(script) + 1 :])
    return found


class Parsed(Exception):
    """Raised right after argparse accepted the arguments, so nothing runs."""


def parse_only(script: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    main = runpy.run_path(str(ROOT / script))["main"]
    with pytest.raises(Parsed) as parsed:
        main(argv)
    return parsed.value.args[0]


def test_readme_is_for_users_and_short():
    text = README.read_text(encoding="utf-8")
    assert "\n## Quick start\n" in text
    assert len(text.splitlines()) <= 300, "README.md is over 300 lines: move details to docs/"


@pytest.mark.parametrize("script", ["train.py", "infer.py"])
def test_every_readme_command_parses(script, monkeypatch):
    found = commands(script)
    assert found, f"no python {script} command found in README.md"
    for argv in found:
        try:
            parse_only(script, argv, monkeypatch)
        except SystemExit:
            pytest.fail(f"README.md: `python {script} {' '.join(argv)}` is refused by {script}'s arguments")


def test_readme_configs_settings_and_make_targets_exist():
    text = README.read_text(encoding="utf-8")
    for argv in commands("train.py"):
        for flag, value in zip(argv, argv[1:]):
            if flag == "--config" and not value.startswith("runs/"):  # runs/...: written by an earlier command
                assert (ROOT / value).is_file(), value
            if flag == "--set":  # every overridden key is a real one
                from lit_forecast import config

                section, key = value.split("=", 1)[0].split(".")
                assert key in {f.name for f in config.dataclasses.fields(getattr(config.Config(), section))}, value
    targets = set(re.findall(r"^([a-z]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    for target in set(re.findall(r"\bmake ([a-z]+)\b", text)):
        assert target in targets, f"README.md names `make {target}`, which the Makefile lacks"
    for path in set(re.findall(r"`((?:configs|bench|tests|docs|lit_forecast)/[\w./-]+\.(?:py|yaml|md))`", text)):
        assert (ROOT / path).is_file(), f"README.md names {path}, which does not exist"
    for link in set(re.findall(r"\]\((docs/[\w.-]+\.md)(?:#[\w-]+)?\)", text)):
        assert (ROOT / link).is_file(), link


def test_readme_links_land_on_headings():
    text = README.read_text(encoding="utf-8")
    for path, anchor in set(re.findall(r"\]\((docs/[\w.-]+\.md)#([\w-]+)\)", text)):
        headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(encoding="utf-8"), flags=re.M)
        slugs = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
        assert anchor in slugs, f"README.md links {path}#{anchor}, a heading that does not exist"
