"""The built wheel is a complete bot: installed outside the checkout, it migrates a database.

The wheel is built from a copy of the source files (so the checkout gets no build/ folder) with
the setuptools already installed, and installed with --no-deps into a fresh virtual environment
whose site-packages can see this environment's dependencies: nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from synatra_bot.storage.migrate import head_revision

CHECKOUT = Path(__file__).resolve().parents[1]
SOURCE_FILES = ("pyproject.toml", "README.md", "LICENSE")
SOURCE_FOLDERS = ("synatra_bot", "migrations")


def _run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _source_files(folder: str) -> set[str]:
    return {
        path.relative_to(CHECKOUT / folder).as_posix()
        for path in (CHECKOUT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in SOURCE_FILES:
        shutil.copy2(CHECKOUT / name, source / name)
    for name in SOURCE_FOLDERS:
        shutil.copytree(
            CHECKOUT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"),
            *("--no-index", "--wheel-dir", str(dist), str(source)),
        ],
        cwd=source,
    )
    (built,) = dist.glob("synatra_bot-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout holding only the wheel; a .pth line lets it import
    this environment's dependencies (read after its own site-packages, so synatra_bot and its
    metadata come from the wheel)."""
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=venv,
        ).strip()
    )
    dependencies = {*site.getsitepackages(), sysconfig.get_paths()["purelib"]}
    (purelib / "outer_dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python)),
            *("install", "--no-deps", "--no-index", str(wheel)),
        ],
        cwd=venv,
    )
    return venv


def _bot_env(database: Path) -> dict[str, str]:
    kept = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    return {**kept, "DATABASE_URL": f"sqlite+aiosqlite:///{database}"}


def test_wheel_holds_every_module_the_migrations_the_licence_and_py_typed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in _source_files("synatra_bot"):
        assert f"synatra_bot/{path}" in names, f"the wheel lacks synatra_bot/{path}"
    for path in _source_files("migrations"):
        assert f"synatra_bot/migrations/{path}" in names, f"the wheel lacks migrations/{path}"
    assert "synatra_bot/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_installed_wheel_migrates_a_database_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    database = tmp_path / "봇.db"
    env = _bot_env(database)
    bot = str(installed / "bin" / "synatra-bot")
    where = _run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "from synatra_bot.storage.migrate import migrations_dir; print(migrations_dir())",
        ],
        cwd=tmp_path,
        env=env,
    ).strip()
    assert Path(where).is_relative_to(installed), where  # the scripts inside the wheel

    head = head_revision(f"sqlite+aiosqlite:///{database}")
    upgraded = _run([bot, "db", "upgrade"], cwd=tmp_path, env=env)
    assert upgraded.strip() == f"database upgraded from empty to {head}"
    current = _run([bot, "db", "current"], cwd=tmp_path, env=env)
    assert current.strip() == f"{head} (up to date)"


def test_installed_version_is_the_one_in_pyproject(installed: Path, tmp_path: Path) -> None:
    version = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["version"]
    shown = _run(
        [str(installed / "bin" / "synatra-bot"), "--version"],
        cwd=tmp_path,
        env=_bot_env(tmp_path / "unused.db"),
    )
    assert shown.strip() == f"synatra-bot {version}"
