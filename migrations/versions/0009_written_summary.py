"""written summary: the summary last written by hand, kept as the base of a rewrite

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-13 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable (NULL: never written by hand), so every existing scene keeps its memory as it
    # was. Added in place, not in a batch (a batch would copy the table and cut the foreign
    # keys that point at it).
    op.add_column("roleplay_sessions", sa.Column("summary_written", sa.Text(), nullable=True))
    op.add_column(
        "roleplay_sessions", sa.Column("summary_written_until_id", sa.Integer(), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("roleplay_sessions", "summary_written_until_id")
    op.drop_column("roleplay_sessions", "summary_written")
