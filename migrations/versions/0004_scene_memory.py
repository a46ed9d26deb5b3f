"""scene memory: what the summary covers, automatic folding and staleness; summary and archive
settings

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Not nullable: the server defaults (the model has the same) fill the existing scenes, whose
    # summaries were all written by hand: automatic memory is on, nothing is stale, and they
    # cover no message yet (folding continues from them). Added in place, not in a batch: on
    # SQLite a batch would copy the table for these defaults, and dropping the old copy would
    # take the scenes' turns and casts with it (foreign keys are on) and end every scene.
    op.add_column("roleplay_sessions", sa.Column("summary_until_id", sa.Integer(), nullable=True))
    op.add_column(
        "roleplay_sessions",
        sa.Column("summary_auto", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.add_column(
        "roleplay_sessions",
        sa.Column("summary_stale", sa.Boolean(), server_default=sa.false(), nullable=False),
    )

    # Nullable columns (NULL: the default summary size; keep archived scenes for ever) are
    # added in place.
    with op.batch_alter_table("guild_settings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("summary_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("archive_keep_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    # The settings and the memory's bookkeeping go; every scene keeps its summary text.
    with op.batch_alter_table("guild_settings", schema=None) as batch_op:
        batch_op.drop_column("archive_keep_days")
        batch_op.drop_column("summary_tokens")

    # The scenes' columns go in place, as they came (see upgrade); SQLite drops a plain column
    # itself since 3.35.
    for column in ("summary_stale", "summary_auto", "summary_until_id"):
        op.drop_column("roleplay_sessions", column)
