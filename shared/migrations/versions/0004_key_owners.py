"""Key owners: runs belong to the owner of the key that submitted them; admin keys see all; keys revoke.

Existing keys become their own owner (owner = name) and are not admin. Existing runs get no owner:
only an admin key sees them (`autopack keys create NAME --admin`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("admin", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.execute("UPDATE api_keys SET owner = name")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column("owner", existing_type=sa.String(length=100), nullable=False)

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=100), nullable=True))
        batch_op.create_index(batch_op.f("ix_runs_owner"), ["owner"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_runs_owner"))
        batch_op.drop_column("owner")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("admin")
        batch_op.drop_column("owner")
