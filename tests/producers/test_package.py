"""tokenquota.producers imports its integrations on first use: the names it promises for
type checkers and the ones it resolves at run time must be the same."""

from __future__ import annotations

import ast
import importlib
import inspect

import tokenquota.producers as producers


def _type_checking_imports() -> dict[str, tuple[str, ...]]:
    """Module (under integrations/) -> names, from the `if TYPE_CHECKING:` block."""
    tree = ast.parse(inspect.getsource(producers))
    found: dict[str, tuple[str, ...]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom) and statement.module
                module = statement.module.removeprefix("integrations.")
                found[module] = tuple(alias.name for alias in statement.names)
    return found


def test_the_lazy_names_are_the_type_checked_ones_and_exported() -> None:
    lazy = producers._INTEGRATIONS
    assert {m: sorted(n) for m, n in _type_checking_imports().items()} == {
        m: sorted(n) for m, n in lazy.items()
    }
    names = {name for group in lazy.values() for name in group}
    assert names <= set(producers.__all__)
    for name in sorted(names):  # each resolves to what its module defines
        module = next(m for m, group in lazy.items() if name in group)
        defined = getattr(
            importlib.import_module(f"tokenquota.producers.integrations.{module}"), name
        )
        assert getattr(producers, name) is defined, name
