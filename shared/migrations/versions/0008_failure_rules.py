"""Failure rules: patterns an operator accepted from mined failures, and the version of the set.

`failure_rule_set` holds one row (id 1, version 0); accepting or retiring a rule bumps its version, which
workers compare with the one they hold.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "failure_rule_set",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failure_rule_set")),
    )
    op.create_table(
        "failure_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("pattern", sa.String(length=300), nullable=False),
        sa.Column("advice", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("template", sa.Text(), nullable=True),
        sa.Column("measurement", sa.JSON(), nullable=True),
        sa.Column("created_by", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_failure_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_failure_rules_name")),
    )
    op.execute("INSERT INTO failure_rule_set (id, version, updated_at) VALUES (1, 0, CURRENT_TIMESTAMP)")


def downgrade() -> None:
    op.drop_table("failure_rules")
    op.drop_table("failure_rule_set")
