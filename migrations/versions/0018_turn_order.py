"""turn order: a channel's group turn order and the muted characters of a scene's cast

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 12:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: the channel keeps the addressed order every channel played by before; every cast
    # member of a stored scene stays unmuted. Added in place, not in a batch (a batch would
    # copy the tables).
    op.add_column("channel_settings", sa.Column("turn_order", sa.String(16), nullable=True))
    op.add_column(
        "session_cast",
        sa.Column("muted", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    op.drop_column("session_cast", "muted")
    op.drop_column("channel_settings", "turn_order")
