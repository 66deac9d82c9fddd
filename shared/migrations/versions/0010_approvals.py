"""Governed changes that ask for approval: the approvals and the webhook deliveries that announce them.

- approvals: one per (phase, attempt number); the paused change is a commit on a fenced ref.
- webhook_deliveries: the notification outbox; ix_webhook_deliveries_due covers undelivered rows only.
- phases.state gains the value AWAITING_APPROVAL (a String(20) column without a CHECK: no DDL needed).

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 18:10:00
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

UNSENT = "delivered_at IS NULL AND gave_up_at IS NULL"


def _when(name: str, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("phase_id", sa.Integer(), nullable=False),
        sa.Column("attempt_number", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("paths", sa.JSON(), nullable=False),
        sa.Column("patch", sa.Text(), nullable=True),
        sa.Column("commit_sha", sa.String(length=64), nullable=True),
        sa.Column("ref", sa.String(length=300), nullable=True),
        sa.Column("attempt", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=True),
        _when("requested_at", nullable=False),
        _when("expires_at"),
        sa.Column("timeout_action", sa.String(length=10), nullable=False),
        _when("decided_at"),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decided_key_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_approvals_run_id_runs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["phase_id"], ["phases.id"], name=op.f("fk_approvals_phase_id_phases"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approvals")),
        sa.UniqueConstraint("phase_id", "attempt_number", name=op.f("uq_approvals_phase_id_attempt_number")),
    )
    with op.batch_alter_table("approvals") as batch:
        batch.create_index(batch.f("ix_approvals_run_id"), ["run_id"], unique=False)
        batch.create_index(batch.f("ix_approvals_owner"), ["owner"], unique=False)
        batch.create_index(batch.f("ix_approvals_state"), ["state"], unique=False)
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("approval_id", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        _when("next_try_at", nullable=False),
        _when("delivered_at"),
        _when("gave_up_at"),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        _when("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["approvals.id"],
            name=op.f("fk_webhook_deliveries_approval_id_approvals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint("approval_id", "event", name=op.f("uq_webhook_deliveries_approval_id_event")),
    )
    where = sa.text(UNSENT)
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_try_at"],
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("approvals")
