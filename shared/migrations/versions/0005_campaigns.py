"""Campaigns: source runs re-run with overrides, their pairs, and why a failed run failed.

Runs gain `failure_kind` (existing DONE_FAILED runs are classified from their recorded reason, so they
can be campaign sources), `arm`, `sample` and `held` (a child waiting under its campaign's
`max_parallel_runs`).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:22:29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


BACKFILL_FAILURE_KIND = """
UPDATE runs SET failure_kind = CASE
    WHEN failure_reason LIKE '%delivered % times without finishing%' THEN 'INFRA'
    WHEN failure_reason LIKE '%refused the credentials%' THEN 'INFRA'
    WHEN failure_reason LIKE '%needs AUTOPACK_ANTHROPIC_API_KEY%' THEN 'INFRA'
    WHEN failure_reason LIKE '%autopack/run-% holds commits%' THEN 'INFRA'
    WHEN failure_reason LIKE '%budget cap reached%' THEN 'BUDGET'
    ELSE 'MODEL' END
WHERE state = 'DONE_FAILED'
"""


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("mode", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("max_parallel_runs", sa.Integer(), nullable=True),
        sa.Column("max_tokens", sa.BigInteger(), nullable=True),
        sa.Column("max_usd", sa.Numeric(precision=14, scale=6), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("cap_reached", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("report_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_campaigns_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_campaigns_state"), ["state"], unique=False)

    op.create_table(
        "campaign_pairs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("source_run_id", sa.Integer(), nullable=False),
        sa.Column("sample", sa.Integer(), nullable=False),
        sa.Column("a_run_id", sa.Integer(), nullable=False),
        sa.Column("b_run_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("judged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["a_run_id"], ["runs.id"], name=op.f("fk_campaign_pairs_a_run_id_runs")),
        sa.ForeignKeyConstraint(["b_run_id"], ["runs.id"], name=op.f("fk_campaign_pairs_b_run_id_runs")),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_pairs_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["source_run_id"], ["runs.id"], name=op.f("fk_campaign_pairs_source_run_id_runs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_pairs")),
        sa.UniqueConstraint(
            "campaign_id",
            "source_run_id",
            "sample",
            name=op.f("uq_campaign_pairs_campaign_id_source_run_id_sample"),
        ),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure_kind", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("arm", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("sample", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("held", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index("ix_runs_campaign_held", ["campaign_id", "held"], unique=False)
    op.execute(BACKFILL_FAILURE_KIND)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_campaign_held")
        batch_op.drop_column("held")
        batch_op.drop_column("sample")
        batch_op.drop_column("arm")
        batch_op.drop_column("failure_kind")

    op.drop_table("campaign_pairs")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_campaigns_state"))
        batch_op.drop_index(batch_op.f("ix_campaigns_owner"))

    op.drop_table("campaigns")
