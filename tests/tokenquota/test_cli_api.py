"""`tokenquota api hash-token`: prints the SHA-256 that api.tokens entries hold."""

from __future__ import annotations

import hashlib
import re

from typer.testing import CliRunner

from tokenquota.cli import app
from tokenquota.sections import ApiToken


def test_hash_token_prints_the_sha256_of_the_token_on_stdin() -> None:
    result = CliRunner().invoke(app, ["api", "hash-token"], input="s3cret-token\n")
    assert result.exit_code == 0, result.output
    expected = hashlib.sha256(b"s3cret-token").hexdigest()
    assert result.stdout == expected + "\n"
    ApiToken(name="ci", sha256=result.stdout.strip())  # what the setting accepts


def test_hash_token_generate_prints_a_token_and_its_sha256() -> None:
    result = CliRunner().invoke(app, ["api", "hash-token", "--generate"])
    assert result.exit_code == 0, result.output
    found = re.fullmatch(r"token:  (\S{32,})\nsha256: ([0-9a-f]{64})\n", result.stdout)
    assert found is not None, result.stdout
    assert found[2] == hashlib.sha256(found[1].encode()).hexdigest()


def test_hash_token_without_a_token_fails() -> None:
    result = CliRunner().invoke(app, ["api", "hash-token"], input="\n")
    assert result.exit_code == 2
    assert result.stdout == ""
