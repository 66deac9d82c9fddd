"""LLM pipeline: budget ledger on runs, LLM fields on attempts, escalation events.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:48:06.131101
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "escalation_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("phase_id", sa.Integer(), nullable=False),
        sa.Column("attempt_number", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("selected_budget", sa.Integer(), nullable=False),
        sa.Column("enforced_max_tokens", sa.Integer(), nullable=False),
        sa.Column("tokens_used", sa.Integer(), nullable=True),
        sa.Column("base", sa.Integer(), nullable=False),
        sa.Column("factor", sa.Numeric(precision=6, scale=3), nullable=False),
        sa.Column("new_max_tokens", sa.Integer(), nullable=False),
        sa.Column("model_limit", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["phase_id"], ["phases.id"], name=op.f("fk_escalation_events_phase_id_phases"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_escalation_events_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_escalation_events")),
        sa.UniqueConstraint("phase_id", name=op.f("uq_escalation_events_phase_id")),
    )
    with op.batch_alter_table("escalation_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_escalation_events_run_id"), ["run_id"], unique=False)

    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("max_tokens", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("prompt_summary", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("context", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("mitigation", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("doctor", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("infra_failures", sa.JSON(), nullable=False, server_default="[]"))

    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tokens_spent", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("tokens_reserved", sa.BigInteger(), nullable=False, server_default="0"))
        batch_op.add_column(
            sa.Column("usd_spent", sa.Numeric(precision=14, scale=6), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("usd_reserved", sa.Numeric(precision=14, scale=6), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("usd_reserved")
        batch_op.drop_column("usd_spent")
        batch_op.drop_column("tokens_reserved")
        batch_op.drop_column("tokens_spent")

    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("infra_failures")
        batch_op.drop_column("doctor")
        batch_op.drop_column("mitigation")
        batch_op.drop_column("context")
        batch_op.drop_column("prompt_summary")
        batch_op.drop_column("max_tokens")
        batch_op.drop_column("model")

    with op.batch_alter_table("escalation_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_escalation_events_run_id"))

    op.drop_table("escalation_events")
