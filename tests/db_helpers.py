"""Database checks shared by the SQLite and PostgreSQL tests."""

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from synatra_bot.storage.database import create_engine
from synatra_bot.storage.models import Base


async def schema_diff(database_url: str) -> list:
    """What autogenerate would change between the migrated database and the models."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: compare_metadata(
                    MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()
