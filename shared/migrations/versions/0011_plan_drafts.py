"""Plan drafts: the owner of the plan normalizer's LLM usage, which belongs to no run.

- plan_drafts: one per `POST /plans/normalize` with `llm: true`; its token budget, what is reserved and
  used, the cost and the outcome (`refining` / `done` / `failed`).
- llm_usage_events.run_id becomes nullable, plan_draft_id (FK, CASCADE) is added, and a CHECK keeps
  exactly one of the two set: every usage row still has one owner, and run queries (`run_id = ?`, `IN`)
  never see a draft's rows. On SQLite the batch recreates the table (ALTER COLUMN / ADD CONSTRAINT are
  not supported there); its indexes and foreign keys are carried over.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 20:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OWNED_BY_ONE = "(run_id IS NULL) <> (plan_draft_id IS NULL)"


def upgrade() -> None:
    op.create_table(
        "plan_drafts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=True),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("repo", sa.String(length=2000), nullable=False),
        sa.Column("base_ref", sa.String(length=255), nullable=False),
        sa.Column("base_sha", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("token_budget", sa.BigInteger(), nullable=False),
        sa.Column("tokens_reserved", sa.BigInteger(), nullable=False),
        sa.Column("tokens_used", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=14, scale=6), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_drafts")),
    )
    op.create_index(op.f("ix_plan_drafts_owner"), "plan_drafts", ["owner"], unique=False)
    with op.batch_alter_table("llm_usage_events") as batch:
        batch.alter_column("run_id", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("plan_draft_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            op.f("fk_llm_usage_events_plan_draft_id_plan_drafts"),
            "plan_drafts",
            ["plan_draft_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch.create_index(op.f("ix_llm_usage_events_plan_draft_id"), ["plan_draft_id"], unique=False)
        batch.create_check_constraint(op.f("ck_llm_usage_events_one_owner"), sa.text(OWNED_BY_ONE))


def downgrade() -> None:
    # A draft's usage rows have no run to belong to once run_id is NOT NULL again: they go with the table.
    op.execute("DELETE FROM llm_usage_events WHERE run_id IS NULL")
    with op.batch_alter_table("llm_usage_events") as batch:
        batch.drop_constraint(op.f("ck_llm_usage_events_one_owner"), type_="check")
        batch.drop_index(op.f("ix_llm_usage_events_plan_draft_id"))
        batch.drop_constraint(op.f("fk_llm_usage_events_plan_draft_id_plan_drafts"), type_="foreignkey")
        batch.drop_column("plan_draft_id")
        batch.alter_column("run_id", existing_type=sa.Integer(), nullable=False)
    op.drop_index(op.f("ix_plan_drafts_owner"), table_name="plan_drafts")
    op.drop_table("plan_drafts")
