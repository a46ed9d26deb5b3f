"""roleplay samplers: min-p, DRY and XTC per server and per channel

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-12 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("guild_settings", "channel_settings")
COLUMNS = (
    ("min_p", sa.Float),
    ("dry_multiplier", sa.Float),
    ("dry_base", sa.Float),
    ("dry_allowed_length", sa.Integer),
    ("xtc_threshold", sa.Float),
    ("xtc_probability", sa.Float),
)


def upgrade() -> None:
    # Nullable (NULL: inherit, then the engine's default, which is off), so every existing row
    # samples as before. Added in place, not in a batch (a batch would copy channel_settings
    # and cut the foreign keys that point at it).
    for table in TABLES:
        for name, kind in COLUMNS:
            op.add_column(table, sa.Column(name, kind(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        for name, _ in reversed(COLUMNS):
            op.drop_column(table, name)
