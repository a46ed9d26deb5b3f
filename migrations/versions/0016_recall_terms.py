"""recall of old turns: each turn's search terms, and the tokens a prompt's recall may take

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 12:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Turns stored before this revision have no terms: the bot indexes them in the background
    # (`roleplay.recall`), so the upgrade itself stays quick on a large database.
    op.create_table(
        "message_terms",
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("terms", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["message_id"], ["messages.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("message_id"),
    )
    # Nullable (NULL: the default budget), so every server keeps its settings.
    op.add_column("guild_settings", sa.Column("recall_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("guild_settings", "recall_tokens")
    op.drop_table("message_terms")
