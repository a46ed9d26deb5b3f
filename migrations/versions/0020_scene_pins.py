"""scene pins: lines players pin into a scene's memory, and the tokens they may take

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 15:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new table: every stored scene starts with no pins.
    op.create_table(
        "scene_pins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("author_id", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["roleplay_sessions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_scene_pins_session_id", "scene_pins", ["session_id"])
    # Nullable (NULL: the default budget), so every server keeps its settings.
    op.add_column("guild_settings", sa.Column("pin_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("guild_settings", "pin_tokens")
    op.drop_index("ix_scene_pins_session_id", table_name="scene_pins")
    op.drop_table("scene_pins")
