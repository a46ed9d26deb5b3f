"""scene casts, the speaker of each assistant turn, user settings, cast and reply settings

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_cast",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("character_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["character_id"],
            ["characters.id"],
            name=op.f("fk_session_cast_character_id_characters"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["roleplay_sessions.id"],
            name=op.f("fk_session_cast_session_id_roleplay_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_cast")),
        sa.UniqueConstraint(
            "session_id", "character_id", name=op.f("uq_session_cast_session_id")
        ),
    )
    with op.batch_alter_table("session_cast", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_session_cast_session_id"), ["session_id"], unique=False
        )

    op.create_table(
        "user_settings",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("nsfw_in_dms", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_settings")),
    )

    # A nullable column (NULL: the default cast size) is added in place.
    with op.batch_alter_table("guild_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cast_limit", sa.Integer(), nullable=True))

    # Not nullable: the server default (the model has the same) fills the existing channels.
    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "answer_every_addressed",
                sa.Boolean(),
                server_default=sa.false(),
                nullable=False,
            )
        )

    # On SQLite the foreign key makes this a copy of the table; its rows are kept.
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("character_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_messages_character_id"), ["character_id"], unique=False
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_messages_character_id_characters"),
            "characters",
            ["character_id"],
            ["id"],
            ondelete="SET NULL",
        )

    # Every scene so far had one character: it becomes the cast, and the speaker of every
    # assistant turn. A character id that no longer exists (possible where foreign keys were
    # once off on SQLite) is left out rather than failing the upgrade.
    op.execute(
        sa.text(
            "INSERT INTO session_cast (session_id, character_id, position, joined_at)"
            " SELECT roleplay_sessions.id, roleplay_sessions.character_id, 0,"
            " roleplay_sessions.started_at"
            " FROM roleplay_sessions"
            " JOIN characters ON characters.id = roleplay_sessions.character_id"
        )
    )
    op.execute(
        sa.text(
            "UPDATE messages SET character_id = ("
            " SELECT roleplay_sessions.character_id FROM roleplay_sessions"
            " WHERE roleplay_sessions.id = messages.session_id)"
            " WHERE messages.role = 'assistant' AND messages.session_id IN ("
            " SELECT roleplay_sessions.id FROM roleplay_sessions"
            " JOIN characters ON characters.id = roleplay_sessions.character_id)"
        )
    )


def downgrade() -> None:
    # Casts, speakers and user settings go; roleplay_sessions.character_id still names the
    # character each scene started with, and every session and message stays.
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_messages_character_id_characters"), type_="foreignkey"
        )
        batch_op.drop_index(batch_op.f("ix_messages_character_id"))
        batch_op.drop_column("character_id")

    with op.batch_alter_table("channel_settings", schema=None) as batch_op:
        batch_op.drop_column("answer_every_addressed")

    with op.batch_alter_table("guild_settings", schema=None) as batch_op:
        batch_op.drop_column("cast_limit")

    op.drop_table("user_settings")
    with op.batch_alter_table("session_cast", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_session_cast_session_id"))

    op.drop_table("session_cast")
