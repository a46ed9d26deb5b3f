"""initiative: whether a channel's characters speak up on their own, after how long, how often

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 15:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every existing channel keeps quiet characters (off); NULL numbers follow the defaults.
    # Added in place, not in a batch (a batch would copy the table).
    op.add_column(
        "channel_settings",
        sa.Column("initiative", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "channel_settings", sa.Column("initiative_quiet_minutes", sa.Integer(), nullable=True)
    )
    op.add_column("channel_settings", sa.Column("initiative_in_a_row", sa.Integer(), nullable=True))
    op.add_column(
        "channel_settings", sa.Column("initiative_auto_turns", sa.Integer(), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("channel_settings", "initiative_auto_turns")
    op.drop_column("channel_settings", "initiative_in_a_row")
    op.drop_column("channel_settings", "initiative_quiet_minutes")
    op.drop_column("channel_settings", "initiative")
