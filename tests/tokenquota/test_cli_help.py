"""Every command and subcommand of `tokenquota` explains itself with an example."""

from __future__ import annotations

import re

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from tokenquota.cli import app


def _paths(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """`path` and the path of every command under it, as a user types them."""
    found = [path]
    if isinstance(command, TyperGroup):
        for name, sub in sorted(command.commands.items()):
            found += _paths(sub, (*path, name))
    return found


PATHS = _paths(typer.main.get_command(app))


def test_the_walk_finds_commands_groups_and_their_subcommands() -> None:
    words = {" ".join(path) for path in PATHS}
    assert {"", "dev", "mcp-proxy", "budget", "budget set", "api", "api hash-token"} <= words
    assert "report daily" in words


@pytest.mark.parametrize("path", PATHS, ids=lambda path: " ".join(path) or "tokenquota")
def test_help_shows_a_one_line_example_of_the_command(path: tuple[str, ...]) -> None:
    shown = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    example = re.search(r"Example: (.*)", shown.output)
    assert example is not None, f"`tokenquota {' '.join(path)} --help` shows no example"
    line = example.group(1).strip()
    # The command itself (after any environment settings), all on one line to copy.
    assert re.search(rf"(^|\s)tokenquota {re.escape(' '.join(path))}", line), line
    following = shown.output[example.end() :].splitlines()[1:2]
    assert not any(text.strip() and "╭" not in text for text in following), (line, following)
