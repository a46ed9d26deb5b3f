"""scene quota: the rows and bytes one member's imported and branched scenes may hold

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-21 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable (NULL: the default quota), so every server keeps its settings. Added in place,
    # not in a batch (a batch would copy the tables).
    op.add_column("guild_settings", sa.Column("scene_rows", sa.Integer(), nullable=True))
    op.add_column("guild_settings", sa.Column("scene_megabytes", sa.Integer(), nullable=True))
    # Scenes stored before this revision count as played here: only new imports and branches
    # are held to the quota.
    op.add_column(
        "roleplay_sessions",
        sa.Column("copied", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("roleplay_sessions", "copied")
    op.drop_column("guild_settings", "scene_megabytes")
    op.drop_column("guild_settings", "scene_rows")
