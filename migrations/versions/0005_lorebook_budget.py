"""lorebook budget: the tokens lorebooks may take in a prompt, per server and per channel

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("guild_settings", "channel_settings")


def upgrade() -> None:
    # Nullable (NULL: inherit, then a quarter of the prompt), so every existing row keeps its
    # meaning. Added in place, not in a batch: on SQLite a batch would copy channel_settings,
    # and dropping the old copy would cut the foreign keys that point at it.
    for table in TABLES:
        op.add_column(table, sa.Column("lorebook_budget", sa.Integer(), nullable=True))


def downgrade() -> None:
    # Only the budgets go; SQLite drops a plain column itself since 3.35.
    for table in TABLES:
        op.drop_column(table, "lorebook_budget")
