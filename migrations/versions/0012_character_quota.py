"""character quota: the bytes one member's characters may take in a server

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-20 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable (NULL: the default quota), so every server keeps its settings. Added in place,
    # not in a batch (a batch would copy guild_settings).
    op.add_column("guild_settings", sa.Column("character_megabytes", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("guild_settings", "character_megabytes")
