"""One row per fleet-wide periodic duty (`shared/duties.py`): the reconciler's database work ran on every
worker every period, so a fleet of N workers scanned the same runs, approvals and drafts N times per
period; claiming the period's pass through this row makes it once.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 07:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fleet_duties",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("passes", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(200), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_fleet_duties"),
    )


def downgrade() -> None:
    op.drop_table("fleet_duties")
