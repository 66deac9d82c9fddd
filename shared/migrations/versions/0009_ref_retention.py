"""Ref retention, and the reconciler's queries without a scan of every run.

- runs.branch_pruned_at: when retention deleted the run's result branch and phase refs (NULL: not).
- ix_runs_unpruned_finished: runs(finished_at) of runs not yet pruned; retention's batch is the oldest
  of these, `finished_at < cutoff ORDER BY finished_at LIMIT n` (an index range, however many runs).
- ix_runs_branch_lagging: runs whose result branch is behind their recorded head (a handful at most);
  `lagging_branches` ran on every reconciler pass as a scan of every run.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 15:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UNPRUNED = "branch_pruned_at IS NULL"
LAGGING = "head_sha <> base_sha AND (branch_sha IS NULL OR branch_sha <> head_sha)"


def upgrade() -> None:
    op.add_column("runs", sa.Column("branch_pruned_at", sa.DateTime(timezone=True), nullable=True))
    where = sa.text(UNPRUNED)
    op.create_index(
        "ix_runs_unpruned_finished", "runs", ["finished_at"], postgresql_where=where, sqlite_where=where
    )
    lagging = sa.text(LAGGING)
    op.create_index("ix_runs_branch_lagging", "runs", ["id"], postgresql_where=lagging, sqlite_where=lagging)


def downgrade() -> None:
    op.drop_index("ix_runs_branch_lagging", table_name="runs")
    op.drop_index("ix_runs_unpruned_finished", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("branch_pruned_at")
