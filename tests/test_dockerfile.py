"""The Dockerfile cannot be built here (no Docker engine): check what it copies and installs.

`pip install .` in the image needs pyproject.toml, the README (the long description) and
every folder of the package-dir mapping with its package data; a folder left out (api/
once) builds an image whose commands fail on import. The last test builds the wheel from
exactly what the Dockerfile copies, through the build context's .dockerignore.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tokenquota.config import env_var_names

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def _instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    found: list[Instruction] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        found.append(Instruction(keyword.upper(), arguments.strip()))
    assert not pending, "a continuation line ends the file"
    return found


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _install_step(instructions: list[Instruction]) -> int:
    """The index of the RUN that installs the package."""
    runs = [
        i for i, ins in enumerate(instructions) if ins.keyword == "RUN" and "pip" in ins.arguments
    ]
    assert len(runs) == 1, "one RUN installs the package"
    return runs[0]


def _copied(instructions: list[Instruction]) -> list[str]:
    """What the COPY instructions before the install step bring into the work dir."""
    install = _install_step(instructions)
    sources: list[str] = []
    for ins in instructions[:install]:
        if ins.keyword != "COPY":
            continue
        *froms, destination = shlex.split(ins.arguments)
        assert not any(f.startswith("--") for f in froms), f"COPY {ins.arguments}: no options"
        if len(froms) == 1 and destination != "./":
            # COPY folder ./folder: the layout of the repository is kept.
            assert PurePosixPath(destination) == PurePosixPath(froms[0]), ins.arguments
        else:
            assert destination == "./", ins.arguments
        sources += froms
    return sources


def _needed() -> set[str]:
    """What `pip install .` reads: the project file, its README, every package-dir folder."""
    pyproject = _pyproject()
    readme = pyproject["project"]["readme"]
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    return {"pyproject.toml", readme if isinstance(readme, str) else readme["file"], *folders}


def _covered(path: str, sources: list[str]) -> bool:
    return any(path == s or path.startswith(s.rstrip("/") + "/") for s in sources)


def test_every_folder_of_the_package_is_copied_before_the_install() -> None:
    instructions = _instructions()
    sources = _copied(instructions)
    missing = sorted(p for p in _needed() if not _covered(p, sources))
    assert not missing, f"the Dockerfile does not COPY {missing} before `pip install .`"
    assert all((ROOT / s).exists() for s in sources)


def test_the_install_step_is_pip_install_of_the_work_dir() -> None:
    instructions = _instructions()
    install = _install_step(instructions)
    first_copy = next(i for i, ins in enumerate(instructions) if ins.keyword == "COPY")
    # The COPYs and the install run in the same work dir.
    assert not any(ins.keyword == "WORKDIR" for ins in instructions[first_copy:install])
    commands = [shlex.split(c) for c in instructions[install].arguments.split("&&")]
    pip = [c for c in commands if c[:2] in (["pip", "install"], ["python", "-m"])]
    assert len(pip) == 1
    words = pip[0][3:] if pip[0][0] == "python" else pip[0][2:]
    assert [w for w in words if not w.startswith("-")] == ["."], pip[0]
    assert set(words) - {"."} <= {"--no-cache-dir"}, "options that would change what installs"


def test_the_image_runs_as_its_own_user_with_a_writable_data_dir() -> None:
    instructions = _instructions()
    environment: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            name, _, value = ins.arguments.partition("=")
            environment[name] = value
    known = {v for variables in env_var_names().values() for v in variables}
    assert set(environment) <= known, set(environment) - known
    data_dir = environment["TOKENQUOTA_DATA_DIR"]
    run = " ".join(ins.arguments for ins in instructions if ins.keyword == "RUN")
    assert re.search(rf"install -d -o tokenquota -g tokenquota -m 07[05]0 {data_dir}\b", run)
    assert [ins.arguments for ins in instructions if ins.keyword == "USER"] == ["tokenquota"]
    # docker-compose.yml says the same data dir, the API's volume mounted on it.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["x-tokenquota-env"]["TOKENQUOTA_DATA_DIR"] == data_dir
    assert f"api-data:{data_dir}" in compose["services"]["api"]["volumes"]


def _ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (negated, regex), in order (the last match decides)."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    path = ROOT / ".dockerignore"
    lines = path.read_text().splitlines() if path.exists() else []
    for line in (raw.strip() for raw in lines):
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*|\?)", glob):
            regex += {"**/": "(?:.*/)?", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        patterns.append((negated, re.compile(regex)))
    return patterns


def _ignored(relative: PurePosixPath, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves `relative` out (a pattern may name any ancestor)."""
    prefixes = [str(PurePosixPath(*relative.parts[: n + 1])) for n in range(len(relative.parts))]
    ignored = False
    for negated, pattern in patterns:
        if any(pattern.fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


def _context_copy(destination: Path) -> None:
    """Copy what the Dockerfile COPYs, as the build context holds it, into `destination`."""
    patterns = _ignore_patterns()
    for source in _copied(_instructions()):
        top = ROOT / source
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in files:
            relative = PurePosixPath(path.relative_to(ROOT).as_posix())
            if _ignored(relative, patterns):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def test_the_context_keeps_what_the_package_needs(tmp_path: Path) -> None:
    _context_copy(tmp_path)
    for needed in _needed():
        assert (tmp_path / needed).exists(), f".dockerignore leaves out {needed}"
    assert not list(tmp_path.rglob("__pycache__"))


def _source_of(package: str, package_dir: dict[str, str]) -> Path:
    """The folder of `package` under setuptools' package-dir mapping."""
    parts = package.split(".")
    for n in range(len(parts), 0, -1):
        mapped = package_dir.get(".".join(parts[:n]))
        if mapped is not None:
            return ROOT.joinpath(mapped, *parts[n:])
    return ROOT.joinpath(*parts)


def test_pip_builds_the_whole_package_from_what_the_dockerfile_copies(tmp_path: Path) -> None:
    context = tmp_path / "context"
    _context_copy(context)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", ".", "-w", str(tmp_path)],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    if built.returncode != 0 and "build dependencies" in built.stdout + built.stderr:
        pytest.skip(f"pip could not install setuptools to build with: {built.stderr[-500:]}")
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = tmp_path.glob("tokenquota-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "tokenquota = tokenquota.cli:main" in archive.read(entry_points).decode()
    setuptools = _pyproject()["tool"]["setuptools"]
    package_dir: dict[str, str] = setuptools["package-dir"]
    for package in setuptools["packages"]:
        installed = package.replace(".", "/")
        assert any(n.startswith(installed + "/") for n in names), f"{package} is not installed"
        source = _source_of(package, package_dir)
        for module in source.glob("*.py"):
            assert f"{installed}/{module.name}" in names
    # Package data (the JSON Schemas, the migrations, the page's files under api/static).
    for package, globs in setuptools.get("package-data", {}).items():
        source = _source_of(package, package_dir)
        for glob in globs:
            files = [p for p in source.glob(glob) if p.is_file()]
            assert files, f"{package}: {glob} matches nothing"
            for path in files:
                relative = path.relative_to(source).as_posix()
                assert f"{package.replace('.', '/')}/{relative}" in names
    assert "tokenquota/api/app.py" in names
