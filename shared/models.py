"""SQLAlchemy 2.0 models: the record of runs, phases, attempts, keys and telemetry.

Schema changes go through Alembic (`shared/migrations`); nothing here calls `create_all` in a product path.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from shared.states import (
    ApprovalState,
    AttemptOutcome,
    CampaignState,
    FailureKind,
    HostState,
    PairState,
    PhaseState,
    PlanDraftState,
    RunState,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def result_branch(run_id: int) -> str:
    """The branch a run's result is pushed to."""
    return f"autopack/run-{run_id}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on the way in and out, on Postgres and SQLite alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


OWNED_BY_ONE = "(run_id IS NULL) <> (plan_draft_id IS NULL)"
"""A usage row belongs to exactly one of a run and a plan draft (migration 0011)."""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


class ApiKey(Base):
    """A key, by its SHA-256 only. Its runs belong to `owner`; an `admin` key sees every owner's runs."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str] = mapped_column(String(100))
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    repo: Mapped[str] = mapped_column(String(2000))
    base_ref: Mapped[str] = mapped_column(String(255))
    base_sha: Mapped[str] = mapped_column(String(64))
    head_sha: Mapped[str] = mapped_column(String(64))
    # Where the result branch was last seen to point; differs from head_sha only after a crash
    # between recording a phase and moving the branch, which the reconciler then repairs.
    branch_sha: Mapped[str | None] = mapped_column(String(64))
    # When retention deleted the result branch and phase refs (workers/retention.py); NULL: not pruned.
    branch_pruned_at: Mapped[datetime | None]
    spec: Mapped[dict[str, Any]]
    spec_hash: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]]
    state: Mapped[RunState] = mapped_column(String(20), default=RunState.QUEUED, index=True)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    failure_kind: Mapped[FailureKind | None] = mapped_column(String(20))
    """Why a DONE_FAILED run failed: the builder, a cap, or the fleet (see `FailureKind`)."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    campaign_id: Mapped[int | None] = mapped_column(index=True)
    arm: Mapped[str | None] = mapped_column(String(20))
    """A campaign child's arm: "B" (re-run against the recorded source), or "control"/"treatment"."""
    sample: Mapped[int | None]
    """A campaign child's repeat index (0..repeats-1)."""
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    """A campaign child waiting for room under its campaign's `max_parallel_runs`: not dispatched, and
    invisible to the reconciler until released."""
    # The submitting key's owner; NULL when submitted without auth (embedded) or before owners existed.
    owner: Mapped[str | None] = mapped_column(String(100), index=True)
    parent_run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    # The per-run lease: owner + expiry + an epoch bumped on every grant (the fencing token).
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    lease_epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    # Budget ledger: what LLM calls cost, and the worst case of calls in flight (reserved before each call).
    tokens_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    usd_spent: Mapped[Decimal] = mapped_column(Numeric(14, 6), default=Decimal(0))
    usd_reserved: Mapped[Decimal] = mapped_column(Numeric(14, 6), default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    phases: Mapped[list[Phase]] = relationship(
        back_populates="run", order_by="Phase.index", cascade="all, delete-orphan"
    )

    @property
    def result_branch(self) -> str:
        return result_branch(self.id)


class Phase(Base):
    __tablename__ = "phases"
    __table_args__ = (UniqueConstraint("run_id", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[dict[str, Any]]
    state: Mapped[PhaseState] = mapped_column(String(20), default=PhaseState.QUEUED, index=True)
    attempts_used: Mapped[int] = mapped_column(default=0)
    deliveries: Mapped[int] = mapped_column(default=0)
    dispatched_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)

    run: Mapped[Run] = relationship(back_populates="phases")
    attempts: Mapped[list[Attempt]] = relationship(order_by="Attempt.number", cascade="all, delete-orphan")


class Attempt(Base):
    """One try of a phase. Unique per (phase, number) so a redelivered task cannot record it twice."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("phase_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(200))
    lease_epoch: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    outcome: Mapped[AttemptOutcome] = mapped_column(String(30))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    builder_output: Mapped[str | None] = mapped_column(Text)
    patch: Mapped[str | None] = mapped_column(Text)
    changed_paths: Mapped[list[Any]] = mapped_column(default=list)
    validation_output: Mapped[str | None] = mapped_column(Text)
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    # LLM builders: which model and output budget this try used, what context it saw, what recovery said.
    model: Mapped[str | None] = mapped_column(String(100))
    max_tokens: Mapped[int | None]
    prompt_summary: Mapped[str | None] = mapped_column(Text)
    context: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    mitigation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    doctor: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    infra_failures: Mapped[list[Any]] = mapped_column(default=list)


class LlmUsageEvent(Base):
    """One row per LLM call. A figure the provider did not return stays NULL, never estimated.

    Owned by a run (a phase's calls) or by a plan draft (the plan normalizer's LLM pass), never both."""

    __tablename__ = "llm_usage_events"
    __table_args__ = (CheckConstraint(OWNED_BY_ONE, name="one_owner"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    call_key: Mapped[str] = mapped_column(String(200), unique=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    plan_draft_id: Mapped[int | None] = mapped_column(
        ForeignKey("plan_drafts.id", ondelete="CASCADE"), index=True
    )
    phase_id: Mapped[int | None] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"))
    attempt_number: Mapped[int | None]
    provider: Mapped[str] = mapped_column(String(50))
    model: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(30))
    input_tokens: Mapped[int | None]
    output_tokens: Mapped[int | None]
    cache_read_tokens: Mapped[int | None]
    cache_write_tokens: Mapped[int | None]
    latency_ms: Mapped[int | None]
    request_id: Mapped[str | None] = mapped_column(String(200))
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PlanDraft(Base):
    """One `POST /plans/normalize` with `llm: true`: the owner of its model call's usage row and the
    ledger its budget is reserved on, as a run is for a phase's calls (`shared/plans/ledger.py`)."""

    __tablename__ = "plan_drafts"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(100), index=True)
    """The asking key's owner; NULL without auth (embedded)."""
    key_id: Mapped[int | None]
    repo: Mapped[str] = mapped_column(String(2000))
    base_ref: Mapped[str] = mapped_column(String(255))
    base_sha: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(100))
    state: Mapped[PlanDraftState] = mapped_column(String(20), default=PlanDraftState.REFINING)
    token_budget: Mapped[int] = mapped_column(BigInteger)
    """`AUTOPACK_PLAN_LLM_MAX_TOKENS` when it was asked: used + reserved never exceeds it."""
    tokens_reserved: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_used: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    """NULL when the model has no known price or the provider did not report the tokens."""
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class EfficiencyMetric(Base):
    """Per (run, phase, outcome) totals; the unique key makes a racing second insert find the first."""

    __tablename__ = "efficiency_metrics"
    __table_args__ = (UniqueConstraint("run_id", "phase_id", "outcome"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"))
    outcome: Mapped[str] = mapped_column(String(30))
    tokens_spent: Mapped[int | None]
    tokens_avoided_context: Mapped[int | None]
    attempts: Mapped[int] = mapped_column(default=0)
    wall_ms: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PhaseMetric(Base):
    """Failure-hardening and Doctor-avoidance figures of a phase (a counterfactual, kept with its basis)."""

    __tablename__ = "phase_metrics"

    id: Mapped[int] = mapped_column(primary_key=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"), unique=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    failure_hardening_hit: Mapped[bool] = mapped_column(Boolean, default=False)
    doctor_skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    doctor_tokens_avoided: Mapped[int | None]
    estimate_source: Mapped[str | None] = mapped_column(String(30))
    estimate_sample_size: Mapped[int | None]


class EscalationEvent(Base):
    """The one output-budget escalation of a phase: evidence-based base x factor, capped by the model."""

    __tablename__ = "escalation_events"
    __table_args__ = (UniqueConstraint("phase_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"))
    attempt_number: Mapped[int]
    reason: Mapped[str] = mapped_column(String(200))
    selected_budget: Mapped[int]
    enforced_max_tokens: Mapped[int]
    tokens_used: Mapped[int | None]
    base: Mapped[int]
    factor: Mapped[Decimal] = mapped_column(Numeric(6, 3))
    new_max_tokens: Mapped[int]
    model_limit: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Campaign(Base):
    """Source runs re-run with overrides; its children are ordinary runs with `campaign_id` set."""

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    owner: Mapped[str | None] = mapped_column(String(100), index=True)
    spec: Mapped[dict[str, Any]]
    """The campaign as submitted (`shared.campaigns.spec.CampaignSpec`)."""
    mode: Mapped[str] = mapped_column(String(20))
    state: Mapped[CampaignState] = mapped_column(String(20), default=CampaignState.ACTIVE, index=True)
    max_parallel_runs: Mapped[int | None]
    max_tokens: Mapped[int | None] = mapped_column(BigInteger)
    max_usd: Mapped[Decimal | None] = mapped_column(Numeric(14, 6))
    seed: Mapped[int] = mapped_column(BigInteger)
    """Seeds the report's bootstrap, so the same pairs give the same report."""
    skipped: Mapped[list[Any]] = mapped_column(default=list)
    """Source runs left out at creation, with the reason: `[{"run_id": 1, "reason": "..."}]`."""
    cap_reached: Mapped[str | None] = mapped_column(Text)
    """Set when a cap refused a call: held children are then cancelled instead of started."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The last computed report (JSON), persisted so a reader gets the same figures again."""
    report_at: Mapped[datetime | None]


class CampaignPair(Base):
    """One compared task: arm A's run against arm B's run for (source run, sample). Written when the
    campaign is created; judged once both sides have ended."""

    __tablename__ = "campaign_pairs"
    __table_args__ = (UniqueConstraint("campaign_id", "source_run_id", "sample"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    source_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    sample: Mapped[int]
    a_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    b_run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    state: Mapped[PairState] = mapped_column(String(20), default=PairState.PENDING)
    reason: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Both sides' figures (success, attempts, tokens by category, cost, wall time) once judged."""
    judged_at: Mapped[datetime | None]


class WorkerHost(Base):
    """What a worker says of its own host: healthy, or sick (out of the queue) and why. Written by the
    worker's guard on every change and probe; read by `/fleet` and `/metrics`."""

    __tablename__ = "worker_hosts"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    """The Celery node name (`worker@host`)."""
    state: Mapped[HostState] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    consecutive_faults: Mapped[int] = mapped_column(default=0)
    sick_since: Mapped[datetime | None]
    last_probe_at: Mapped[datetime | None]
    last_probe_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ValidationResult(Base):
    """One validation command's result on one tree, reusable as any later baseline of that tree (see
    `shared/validation_cache.py` for the key and why reuse is safe). Written by workers, never by the API."""

    __tablename__ = "validation_results"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    """sha256 of (tree, fingerprint, the commands run before it on that tree, the command)."""
    tree_sha: Mapped[str] = mapped_column(String(64))
    command: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    """sha256 of the sandbox policy and the toolchain the command ran with (workers/validation_cache.py)."""
    result: Mapped[dict[str, Any]]
    """What `compare` needs: exit code, JUnit counts and failing ids, limit, seconds, an output tail."""
    hits: Mapped[int] = mapped_column(default=0)
    """How many baselines this row has served instead of running the command."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FleetDuty(Base):
    """A periodic duty the fleet needs done once per period, whichever worker does it (shared/duties.py)."""

    __tablename__ = "fleet_duties"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    due_at: Mapped[datetime]
    """The next pass may start at this time; a claim moves it one period on."""
    passes: Mapped[int] = mapped_column(BigInteger, default=0)
    """Passes claimed so far, by every worker together."""
    holder: Mapped[str | None] = mapped_column(String(200))
    """Who claimed the last pass (host/pid)."""


class FailureRuleSet(Base):
    """The one row holding the version of the accepted failure rules. Accepting or retiring a rule bumps
    it in the same transaction; workers compare it with the version they hold (one primary-key read)."""

    __tablename__ = "failure_rule_set"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FailureRule(Base):
    """A failure pattern an operator accepted: an RE2 regex (linear time) and the advice it gives.

    Active while `retired_at` is NULL. Its hits are attempts whose `mitigation` names its id."""

    __tablename__ = "failure_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    pattern: Mapped[str] = mapped_column(String(300))
    advice: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(BigInteger)
    """The rule-set version its acceptance made."""
    template: Mapped[str | None] = mapped_column(Text)
    """The mined template it came from, if any."""
    measurement: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Its figures on history when accepted (`shared.patterns.measure`)."""
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None]


class Approval(Base):
    """A governed change waiting for (or given) a person's decision: one per (phase, attempt number).

    The change itself is a commit on a fenced ref (`ref`) in the origin, so any worker can resume it."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("phase_id", "attempt_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    phase_id: Mapped[int] = mapped_column(ForeignKey("phases.id", ondelete="CASCADE"))
    attempt_number: Mapped[int]
    owner: Mapped[str | None] = mapped_column(String(100), index=True)
    """The run's owner: only that owner's keys (and admins) see and decide it."""
    state: Mapped[ApprovalState] = mapped_column(String(20), index=True)
    paths: Mapped[list[Any]] = mapped_column(default=list)
    """Every ruled path: `[{"path", "pattern", "tier", "policy"}]`."""
    patch: Mapped[str | None] = mapped_column(Text)
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    ref: Mapped[str | None] = mapped_column(String(300))
    attempt: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The paused attempt's builder output, prompt summary, model and start: recorded when it ends."""
    requested_by: Mapped[str | None] = mapped_column(String(200))
    """The lease owner (worker) that paused the phase."""
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None]
    timeout_action: Mapped[str] = mapped_column(String(10), default="reject")
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(200))
    """`key <id> (<owner>)`, `timeout` or `auto`."""
    decided_key_id: Mapped[int | None]
    reason: Mapped[str | None] = mapped_column(Text)


class WebhookDelivery(Base):
    """The outbox of approval notifications: written with the approval, sent after commit, retried with
    exponential backoff until delivered or `approval_webhook_attempts` tries were made."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (UniqueConstraint("approval_id", "event"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    approval_id: Mapped[int] = mapped_column(ForeignKey("approvals.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(40))
    body: Mapped[str] = mapped_column(Text)
    """The exact bytes sent (UTF-8 JSON), fixed at creation so every retry signs the same body."""
    tries: Mapped[int] = mapped_column(default=0)
    next_try_at: Mapped[datetime] = mapped_column(default=utcnow)
    """Also a claim: a sender pushes it forward before sending, so two senders never both send."""
    delivered_at: Mapped[datetime | None]
    gave_up_at: Mapped[datetime | None]
    last_status: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


Index("ix_phases_dispatch", Phase.state, Phase.dispatched_at)
Index("ix_runs_campaign_held", Run.campaign_id, Run.held)
# The dashboard's reads (see migration 0006 for the measurements).
Index("ix_runs_created_at", Run.created_at)
Index("ix_llm_usage_events_created_at", LlmUsageEvent.created_at)
Index("ix_phases_deliveries", Phase.deliveries)
Index("ix_llm_usage_events_phase_attempt", LlmUsageEvent.phase_id, LlmUsageEvent.attempt_number)
Index("ix_campaign_pairs_a_run_id", CampaignPair.a_run_id)
Index("ix_campaign_pairs_b_run_id", CampaignPair.b_run_id)
# Retention's batch and the reconciler's lagging branches: partial indexes (migration 0007).
_UNPRUNED = text("branch_pruned_at IS NULL")
_LAGGING = text("head_sha <> base_sha AND (branch_sha IS NULL OR branch_sha <> head_sha)")
Index("ix_runs_unpruned_finished", Run.finished_at, postgresql_where=_UNPRUNED, sqlite_where=_UNPRUNED)
Index("ix_runs_branch_lagging", Run.id, postgresql_where=_LAGGING, sqlite_where=_LAGGING)
# Plan drafts in flight only (migration 0012): the reconciler's scan for abandoned ones, every pass.
_REFINING = text("state = 'refining'")
Index("ix_plan_drafts_refining", PlanDraft.created_at, postgresql_where=_REFINING, sqlite_where=_REFINING)
# Undelivered webhooks only (migration 0010): the sender's scan never reads delivered history.
_UNSENT = text("delivered_at IS NULL AND gave_up_at IS NULL")
Index(
    "ix_webhook_deliveries_due", WebhookDelivery.next_try_at, postgresql_where=_UNSENT, sqlite_where=_UNSENT
)
