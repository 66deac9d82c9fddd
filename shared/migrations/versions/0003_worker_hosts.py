"""Worker hosts: what each worker says of its own host (healthy, or sick and out of the queue).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 12:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_hosts",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("consecutive_faults", sa.Integer(), nullable=False),
        sa.Column("sick_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_probe_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_probe_error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_hosts")),
    )


def downgrade() -> None:
    op.drop_table("worker_hosts")
