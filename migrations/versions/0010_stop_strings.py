"""stop strings: texts that end a reply, per server and per channel

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-13 11:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("guild_settings", "channel_settings")


def upgrade() -> None:
    # Nullable (NULL: inherit, then none), so every existing reply ends as before. Added in
    # place, not in a batch (a batch would copy channel_settings and cut the foreign keys that
    # point at it).
    for table in TABLES:
        op.add_column(table, sa.Column("stop_strings", sa.JSON(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "stop_strings")
