"""personal lorebooks: World Info books a player imports and links to their characters by name

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-11 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new table only: every existing row keeps its meaning, and a character whose card
    # already names a World Info book (extensions.world) uses it once its owner imports it.
    op.create_table(
        "personal_lorebooks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("book", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_personal_lorebooks")),
        sa.UniqueConstraint("owner_id", "name", name=op.f("uq_personal_lorebooks_owner_id")),
    )
    op.create_index(
        op.f("ix_personal_lorebooks_owner_id"), "personal_lorebooks", ["owner_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_personal_lorebooks_owner_id"), table_name="personal_lorebooks")
    op.drop_table("personal_lorebooks")
