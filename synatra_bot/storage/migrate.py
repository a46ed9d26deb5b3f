"""Apply and inspect Alembic migrations.

A checkout keeps the scripts in its top-level `migrations/`; a wheel carries the same folder as
the package `synatra_bot.migrations` (pyproject.toml maps one onto the other).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from synatra_bot.errors import StorageError
from synatra_bot.storage.database import create_engine, prepare_sqlite_file


def migrations_dir() -> Path:
    """The checkout's `migrations/` beside this package when there is one (a source tree or an
    editable install), else the copy installed inside the package."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    try:
        installed = importlib.resources.files("synatra_bot.migrations")
    except ModuleNotFoundError:
        installed = None
    if isinstance(installed, Path) and (installed / "env.py").is_file():
        return installed
    raise StorageError(
        f"the migration scripts are missing: neither {checkout} nor the installed package "
        "synatra_bot.migrations has them (reinstall synatra-bot)"
    )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["database_url"] = database_url
    return config


def head_revision(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


@contextlib.contextmanager
def reaching(database_url: str) -> Iterator[None]:
    """Turn "the database cannot be reached or opened" into one StorageError line naming
    DATABASE_URL (password hidden), instead of a driver's traceback."""
    try:
        yield
    except (OSError, TimeoutError, sa_exc.OperationalError, sa_exc.InterfaceError) as error:
        shown = make_url(database_url).render_as_string(hide_password=True)
        reason = getattr(error, "orig", None) or error
        raise StorageError(f"DATABASE_URL {shown}: cannot open the database: {reason}") from None
    except ModuleNotFoundError as error:
        raise StorageError(
            f"DATABASE_URL needs the {error.name} package "
            "(PostgreSQL: pip install -e '.[postgres]')"
        ) from None


async def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    prepare_sqlite_file(database_url)
    with reaching(database_url):
        return await _read_revision(database_url)


async def _read_revision(database_url: str) -> str | None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision()
            )
    finally:
        await engine.dispose()


async def check_schema_known(database_url: str) -> str | None:
    """Refuse a database written by a newer synatra-bot: its revision is not in our scripts."""
    revision = await current_revision(database_url)
    if revision is None:
        return None
    scripts = ScriptDirectory.from_config(alembic_config(database_url))
    try:
        known = scripts.get_revision(revision)
    except CommandError:
        known = None
    if known is None:
        raise StorageError(
            f"database schema {revision} is newer than this synatra-bot knows "
            f"(latest {scripts.get_current_head()}): upgrade synatra-bot before starting it"
        )
    return revision


async def upgrade_database(database_url: str) -> tuple[str | None, str | None]:
    """Apply pending migrations; returns (revision before, revision after).

    Alembic's async env.py calls asyncio.run, so the upgrade runs in a worker thread.
    """
    before = await check_schema_known(database_url)
    with reaching(database_url):
        await asyncio.to_thread(command.upgrade, alembic_config(database_url), "head")
        after = await _read_revision(database_url)  # the file was checked before the upgrade
    return before, after
