"""Alembic scripts; installed as the package synatra_bot.migrations (see pyproject.toml)."""
