"""card scripts: whether characters' card scripts run, per server and per channel

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-30 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("guild_settings", "channel_settings")


def upgrade() -> None:
    # Nullable (NULL: inherit, then on), so every existing row keeps its meaning. Added in
    # place, not in a batch (a batch would copy channel_settings and cut its foreign keys).
    for table in TABLES:
        op.add_column(table, sa.Column("card_scripts", sa.Boolean(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        op.drop_column(table, "card_scripts")
