"""The README's configuration table documents every setting, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from tokenquota.config import REMOVED_SETTINGS, env_var_names

README = Path(__file__).parents[2] / "README.md"


def _table_settings() -> list[str]:
    """The settings named in the first column of the table under `## Configuration`."""
    section = README.read_text(encoding="utf-8").split("\n## Configuration\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    named: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        group = ""
        for item in re.findall(r"`([^`]+)`", first):
            if item.startswith("."):  # `.field` after `section.field`
                item = group + item
            group = item.rsplit(".", 1)[0] if "." in item else ""
            named.append(item)
    return named


def test_the_configuration_table_names_every_setting_once_and_no_other() -> None:
    named = _table_settings()
    assert len(named) == len(set(named)), "a setting is listed twice"
    assert set(named) == {".".join(path) for path in env_var_names()}


def test_removed_settings_are_not_in_the_table() -> None:
    assert not {".".join(path) for path in REMOVED_SETTINGS} & set(_table_settings())
