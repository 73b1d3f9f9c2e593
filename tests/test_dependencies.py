"""Every third-party module the package imports comes with a plain install.

`make run` installs the package with its runtime extras only; the tests run in a venv
that also has the dev tools, so a module imported by the package but declared only for
development (httpx once, for the alert notifier) passed every test and broke the worker
of a new user's `make run`.
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
#: The folders installed as the package (see pyproject's package-dir).
PACKAGE_FOLDERS = ("tokenquota", "schemas", "producers", "processors", "projections", "api")
#: The extras `make run` installs (`.[embedded]`, which brings openai and anthropic).
RUNTIME_EXTRAS = ("embedded", "openai", "anthropic")


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        lines += project["optional-dependencies"][extra]
    names: set[str] = {canonicalize_name(Requirement(line).name) for line in lines}
    return names - {"tokenquota"}


def _closure(names: set[str]) -> set[str]:
    """`names` and everything they require (without extras), as installed here."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def _imports() -> dict[str, str]:
    """Top-level module imported -> where (file:line), for the package's own files."""
    found: dict[str, str] = {}
    for folder in PACKAGE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    found.setdefault(top, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_imported_module_is_installed_by_the_runtime_dependencies() -> None:
    runtime = _closure(_declared())
    owners = metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imports().items()):
        if module in sys.stdlib_module_names or module == "tokenquota":
            continue
        distributions = {canonicalize_name(d) for d in owners.get(module, [])}
        if not distributions & runtime:
            missing.append(f"{module} ({where}): from {sorted(distributions) or 'nowhere'}")
    assert not missing, "imported but not a runtime dependency: " + "; ".join(missing)
