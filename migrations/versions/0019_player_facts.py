"""player facts: what a character knows about each player, and the switches for them

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new table, and nullable columns added in place (NULL: the default budget, facts on),
    # so every stored server, channel and scene stays as it was.
    op.create_table(
        "player_facts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("character_id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["character_id"],
            ["characters.id"],
            name=op.f("fk_player_facts_character_id_characters"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_player_facts_message_id_messages"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_player_facts")),
    )
    op.create_index(
        "ix_player_facts_owner", "player_facts", ["user_id", "guild_id", "character_id"]
    )
    op.add_column("guild_settings", sa.Column("fact_tokens", sa.Integer(), nullable=True))
    op.add_column("channel_settings", sa.Column("player_facts", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("channel_settings", "player_facts")
    op.drop_column("guild_settings", "fact_tokens")
    op.drop_index("ix_player_facts_owner", table_name="player_facts")
    op.drop_table("player_facts")
