"""The documentation says what the code does: every config key with its default, and a
README that stays a short library README."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import yaml

from lstmq import config

ROOT = Path(__file__).resolve().parents[1]


def _documented_keys() -> dict[str, str]:
    rows = re.findall(r"^\| `([a-z_]+\.[a-z_0-9]+)` \| `([^`]*)` \| (.+) \|$",
                      (ROOT / "docs" / "config.md").read_text(), re.M)
    return {key: default for key, default, meaning in rows if meaning.strip()}


def _yaml(value) -> str:
    value = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


def test_config_page_lists_every_key_with_its_default():
    documented = _documented_keys()
    actual = {}
    for section in dataclasses.fields(config.Config):
        for field in dataclasses.fields(section.default):
            actual[f"{section.name}.{field.name}"] = _yaml(field.default)
    assert sorted(documented) == sorted(actual), "docs/config.md and lstmq/config.py disagree"
    wrong = {k: (documented[k], v) for k, v in actual.items() if documented[k] != v}
    assert not wrong, f"defaults in docs/config.md differ from the code: {wrong}"


def test_readme_is_a_short_library_readme_with_working_links():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 150
    assert "../shared" not in text
    for link in re.findall(r"\]\(((?:docs|examples|lstmq)/[^)#]+)\)", text):
        assert (ROOT / link).exists(), link


def test_readme_command_table_names_only_options_the_commands_take():
    from lstmq.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # pylint: disable=protected-access
    rows = re.findall(r"^\| `lstmq (\w+) ([^`]*)` \|", (ROOT / "README.md").read_text(), re.M)
    assert {name for name, _ in rows} == set(commands)
    for name, usage in rows:
        taken = {flag for action in commands[name]._actions for flag in action.option_strings}
        named = set(re.findall(r"--[a-z][a-z-]*", usage))
        assert named <= taken, f"README's `lstmq {name}` names {sorted(named - taken)}"
