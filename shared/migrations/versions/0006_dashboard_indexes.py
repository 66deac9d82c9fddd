"""Dashboard indexes: the queries of the `/ui` pages and of `GET /runs/{id}/metrics` that scanned whole
tables, measured on 100,000 runs and 1,000,000 usage events (`python -m tests.bench.run --only dashboard`).

- runs(created_at): the overview's runs by state "today" (77 ms -> 0.8 ms).
- llm_usage_events(created_at): the overview's spend "today" (107 ms -> 2.6 ms, with runs(created_at);
  without it the planner may still scan every event).
- phases(deliveries): the fleet view's redelivered phases, `deliveries > 1` (44 ms -> 0.05 ms).
- llm_usage_events(phase_id, attempt_number): an attempt's calls (66 ms -> 0.05 ms); also what
  deleting a phase (ON DELETE CASCADE) looks up.
- campaign_pairs(a_run_id), campaign_pairs(b_run_id): a run's A/B deltas (`a_run_id = x OR b_run_id = x`,
  a scan of every pair: 0.9 ms at 5,000 pairs -> 0.04 ms, and it grows with every campaign).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 15:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = (
    ("ix_runs_created_at", "runs", ["created_at"]),
    ("ix_llm_usage_events_created_at", "llm_usage_events", ["created_at"]),
    ("ix_phases_deliveries", "phases", ["deliveries"]),
    ("ix_llm_usage_events_phase_attempt", "llm_usage_events", ["phase_id", "attempt_number"]),
    ("ix_campaign_pairs_a_run_id", "campaign_pairs", ["a_run_id"]),
    ("ix_campaign_pairs_b_run_id", "campaign_pairs", ["b_run_id"]),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
