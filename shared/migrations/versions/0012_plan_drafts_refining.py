"""A partial index for the reconciler's scan of plan drafts still `refining`.

Every reconciler pass (every `AUTOPACK_RECONCILE_INTERVAL_SECONDS`, on every worker) closes the drafts
whose API process died mid-call: `UPDATE plan_drafts ... WHERE state = 'refining' AND created_at < ?`.
Without an index that read every draft ever made; with this one it reads the few in flight.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 05:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

REFINING = "state = 'refining'"


def upgrade() -> None:
    where = sa.text(REFINING)
    op.create_index(
        "ix_plan_drafts_refining", "plan_drafts", ["created_at"], postgresql_where=where, sqlite_where=where
    )


def downgrade() -> None:
    op.drop_index("ix_plan_drafts_refining", table_name="plan_drafts")
