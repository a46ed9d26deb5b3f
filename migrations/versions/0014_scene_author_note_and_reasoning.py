"""scene author's note and reasoning: a scene's own author's note (from an imported chat) and
each message's reasoning text

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-28 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable (NULL: the scene follows its channel's author's note; a message without
    # reasoning), so every stored scene and message stays as it was. Added in place, not in a
    # batch (a batch would copy the tables).
    op.add_column("roleplay_sessions", sa.Column("author_note", sa.Text(), nullable=True))
    op.add_column("roleplay_sessions", sa.Column("author_note_depth", sa.Integer(), nullable=True))
    op.add_column(
        "roleplay_sessions", sa.Column("author_note_interval", sa.Integer(), nullable=True)
    )
    op.add_column("messages", sa.Column("reasoning", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "reasoning")
    op.drop_column("roleplay_sessions", "author_note_interval")
    op.drop_column("roleplay_sessions", "author_note_depth")
    op.drop_column("roleplay_sessions", "author_note")
