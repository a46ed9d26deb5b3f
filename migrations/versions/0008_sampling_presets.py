"""sampling presets: a server's own named sets of sampling settings

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A new table only; the presets every server has are in the code, not in rows.
    op.create_table(
        "sampling_presets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("preset_values", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sampling_presets")),
        sa.UniqueConstraint("guild_id", "name", name=op.f("uq_sampling_presets_guild_id")),
    )
    op.create_index(
        op.f("ix_sampling_presets_guild_id"), "sampling_presets", ["guild_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sampling_presets_guild_id"), table_name="sampling_presets")
    op.drop_table("sampling_presets")
