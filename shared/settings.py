"""The one place that reads the environment: every setting, with its default and why it exists."""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.approvals.rules import PathRule, parse_rule


class Settings(BaseSettings):
    """Autopack Fleet settings, read from `AUTOPACK_*` environment variables (and `.env` if present).

    The defaults are the *embedded* mode: a SQLite file, an in-process broker and in-process workers.
    Point `database_url` at Postgres and `broker_url` at Redis for the *fleet* mode.
    """

    model_config = SettingsConfigDict(
        env_prefix="AUTOPACK_", env_file=".env", extra="ignore", use_attribute_docstrings=True
    )

    database_url: str = "sqlite:///.autopack/autopack.db"
    """SQLAlchemy URL of the record store. `sqlite:///…` = embedded; `postgresql+psycopg://…` = fleet."""

    broker_url: str = "memory://"
    """Celery broker. `memory://` = embedded (in-process workers only); `redis://host:6379/0` = fleet."""

    workspace_dir: Path = Path(".autopack/workspace")
    """Per-host directory for cached bare mirrors and the pooled worktrees. Local disk, never shared."""

    api_url: str = "http://127.0.0.1:8000"
    """Where the CLI finds the API; also the base of the links an approval webhook sends."""

    api_key: SecretStr | None = None
    """Key the CLI sends as `X-API-Key`. Never logged."""

    auth_required: bool | None = None
    """Require `X-API-Key` on every route but /health. Unset = required unless embedded."""

    api_key_cache_seconds: float = Field(default=2.0, ge=0, le=60)
    """How long an API process trusts a key it verified before it looks the key up again, so a revoked
    key is refused within this long (0: looked up on every request). Only the key's SHA-256 is kept."""

    api_host: str = "127.0.0.1"
    """Interface `autopack api` binds to."""

    ui_session_secret: SecretStr | None = None
    """Signs the dashboard's session cookies. Unset: a random secret per API process, so sessions end
    when it restarts and do not cross replicas; set it when running more than one API process."""

    ui_session_hours: float = 12.0
    """How long a dashboard login lasts."""

    flower_url: str | None = None
    """Where operators reach Flower (linked from the dashboard's fleet page), e.g. `http://flower:5555`."""

    api_port: int = 8000
    """Port `autopack api` binds to."""

    api_workers: int = Field(default=1, ge=1, le=64)
    """Processes serving the API (fleet mode; the embedded fleet always serves from one). A request is
    CPU-bound Python, so one process per core the API host can spare (bench (n) measures both)."""

    flower_basic_auth: SecretStr | None = None
    """`user:password` (comma-separated for several users) that `autopack flower` requires; unset =
    `autopack flower` refuses to start. Flower shows task arguments and can revoke tasks. Never logged."""

    flower_sent_events: bool = False
    """Send Celery's `task-sent` event with every phase task, so Flower lists a task while it still waits
    in the queue (Flower's Broker page, `autopack fleet` and the dashboard count queued phases either
    way). Off, as in Celery: the event is a second publish per enqueue, ~0.5 ms of the API's CPU and
    ~1 ms of its time per `POST /runs`."""

    allowed_repos: Annotated[list[str] | None, NoDecode] = None
    """Comma-separated glob patterns a run's `repo` must match: absolute paths (matched after symlinks
    are resolved) and git URLs, e.g. `/srv/repos/**,https://github.com/acme/*`. `*` stays within one
    `/`-separated part, `**` crosses them. Unset = embedded: local paths under the system temp dir and
    `./.autopack/` (where `autopack demo` makes its sample repo); fleet: none at all, so a fleet accepts
    no repository until the operator lists them. The workspace dir and Autopack's own checkout are
    refused whatever the patterns say."""

    max_body_bytes: int = 1_048_576
    """Largest request body the API reads; a bigger one is refused with 413 before it is parsed."""

    max_phases_per_run: int = 100
    """Phases one run may have (422 on `phases` beyond it)."""

    max_campaign_children: int = 10_000
    """Child runs one campaign may create (sources x arms x repeats); 422 on `source` beyond it."""

    max_list_items: int = 200
    """Entries any list of a run spec may have: scope, deliverables, validation, models (422 naming it)."""

    max_string_chars: int = 4000
    """Characters any string of a run spec may have, except a phase's `goal` (422 naming the field)."""

    max_goal_chars: int = 20000
    """Characters a phase's `goal` (the task text an LLM builder is given) may have."""

    queue_name: str = "autopack"
    """Celery queue the API enqueues phases on and workers consume (and the prefix of the Redis lists
    behind it). Two fleets sharing one Redis database need different names; each test session has its
    own."""

    worker_concurrency: int = 2
    """Phases one worker process executes at once (prefork children; threads when embedded)."""

    phase_soft_time_limit: int = 1800
    """Seconds before a phase task is asked to stop (SoftTimeLimitExceeded, prefork pool only)."""

    phase_hard_time_limit: int = 2100
    """Seconds before a phase task's process is killed (prefork pool only)."""

    visibility_timeout: int = 7200
    """Redis redelivery timeout for unacked phase tasks; must exceed `phase_hard_time_limit` (celery#5935)."""

    lease_ttl_seconds: float = 30.0
    """How long a per-run lease lives without a heartbeat; a dead holder's run is free after this."""

    lease_heartbeat_seconds: float = 5.0
    """How often the holder renews its lease. Keep well under `lease_ttl_seconds`."""

    reconcile_interval_seconds: float = 15.0
    """How often the fleet re-dispatches runs whose next phase is QUEUED with no live lease: every worker
    wakes this often, tends its own mirrors, and one of them per interval does the database side."""

    redispatch_after_seconds: float = 60.0
    """A QUEUED phase dispatched longer ago than this, with no live lease, is dispatched again."""

    max_deliveries: int = 5
    """A phase delivered this many times without finishing (its worker kept dying) ends FAILED."""

    drain_seconds: float = 30.0
    """After a worker is told to stop (SIGTERM), its running phases get this long to finish; then their
    commands are stopped and each phase goes back to the queue without spending an attempt."""

    soft_shutdown_seconds: float = 0.0
    """Seconds a stopping worker lets running phases finish before cancelling and requeueing them
    (Celery soft shutdown: SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT). 0 = off."""

    command_timeout_seconds: int = 600
    """Time limit for one builder `command` or one validation command."""

    max_log_bytes: int = 65536
    """Captured output kept per command; the rest is cut, and the cut is said."""

    sandbox: Literal["bwrap", "none"] = "bwrap"
    """Isolation of every command that runs repository or builder code (script commands, validation,
    baselines). `bwrap` = bubblewrap box (workers/sandbox); `none` = unboxed, only for hosts that cannot
    create namespaces: a worker says so at start, and /health and /fleet show it."""

    phase_network: Literal["deny", "allow"] = "deny"
    """Whether a phase that asks for `network: true` gets a network in its box; without it, a box has
    no network at all (not even the host's loopback Postgres and Redis)."""

    sandbox_memory_mb: int = 2048
    """Address space of each boxed process (RLIMIT_AS). Runtimes that reserve large virtual ranges
    (JVM, Go, V8) need more than they use."""

    sandbox_max_processes: int = 256
    """Processes and threads one boxed command may have at once; a fork bomb ends its command."""

    sandbox_max_file_mb: int = 1024
    """Largest file a boxed command may write."""

    sandbox_max_open_files: int = 1024
    """Open file descriptors per boxed process."""

    sandbox_cpu_seconds: int = 1800
    """CPU time per boxed process; `command_timeout_seconds` bounds the wall time separately."""

    sandbox_tmp_mb: int = 512
    """Size of a box's private /tmp and of its private $HOME (each is a tmpfs of this size)."""

    sandbox_uid: int = 65534
    """Host uid boxed commands run as when the worker runs as root (a non-root worker's commands keep
    its uid, in a user namespace of their own)."""

    sandbox_read_only_paths: Annotated[list[Path], NoDecode] = []
    """Extra host paths a box sees read-only (toolchains outside /usr and /opt), comma-separated."""

    sandbox_output_stop_mb: int = 1024
    """A boxed command that prints more than this is ended: a runaway, not a log. 0 = never."""

    validation_cache: bool = True
    """Reuse validation results recorded in the database for a tree already validated with the same
    command, sandbox and toolchain (a phase's baseline is its previous phase's after-validation; a replay
    over the same base commit reuses the first one's; a change whose tree already passed is not validated
    again). Off = every baseline and every change runs its commands again."""

    git_config_global: Path | None = None
    """Git config file for the worker's own git calls (credential helpers, sshCommand, url rewrites).
    Unset = none: the worker's git reads no global or system config, and ignores repository config
    that could run a program."""

    db_application_name: str = "autopack-worker"
    """Postgres `application_name` of a worker's connections; each process appends `/<its pid>`, so
    `pg_stat_activity` (and a statement's own session) tells which worker process holds a connection.
    Give each worker its own name (e.g. its Celery node name) to tell hosts apart."""

    worktrees_per_repo: int = 8
    """Pooled worktrees per repository per host; a phase reuses a free one instead of creating one."""

    min_free_disk_mb: int = 100
    """A worker whose workspace disk has less free space than this starts no attempt, and treats a
    failed attempt as the disk's fault: the phase goes back to the queue for another host."""

    host_fault_threshold: int = 3
    """Host faults in a row (provisioning, mirror fetch, publishing, a full workspace disk) after which
    a worker stops consuming phases and probes its own host until it works again. 0 never stops (the
    embedded fleet always behaves so: it has no other host to leave the work to)."""

    host_probe_seconds: float = 30.0
    """How often a sick host probes itself (a worktree of a small repository of its own); the wait
    doubles after each failed probe, up to ten times this."""

    push_results: bool = True
    """Push each run's result branch `autopack/run-<id>` back to the repository the run came from."""

    result_branch_retention_days: float = Field(default=30.0, ge=0)
    """How long after a run ended its result branch `autopack/run-<id>` and its phase refs are kept, in
    the origin (when `push_results`) and in each host's mirror; 0 keeps them forever. Every `git push`
    reads every ref of the origin, so an origin that keeps every run's branch makes every later phase slower.
    A pruned run says so (`runs.branch_pruned_at`); its commits stay in the origin until its own gc.
    (An origin on the worker's host is written in-process, without reading its refs.)"""

    result_branch_retention_runs: int = Field(default=1_000, ge=0)
    """Keep the result branches and phase refs of at most this many most recently ended runs (older
    ones are pruned as if expired; their head SHA stays in the database); 0: no cap. With
    `result_branch_retention_days` a run's refs go once either rule says so. A busy fleet outruns any
    day count: every `git push` reads every ref of the origin. A no-op phase pushing with `git push`
    cost the worker about 2x its CPU on a fresh origin with 10,000 run branches, about 1.1x once
    retention kept 1,000, and the cost is near linear in the count; an origin on the worker's host,
    written in-process, about 1.15x either way (`python -m tests.bench.run --only history`)."""

    retention_batch: int = Field(default=200, ge=1)
    """Most runs whose refs one reconciler pass prunes (one push per repository per pass)."""

    git_author: str = "Autopack Fleet <autopack@localhost>"
    """Author and committer of phase commits."""

    embedded_poll_interval: float = 0.01
    """Polling interval of the in-process broker (kombu's memory transport polls once a second by default)."""

    anthropic_api_key: SecretStr | None = None
    """Key for the Anthropic Messages API (the `anthropic` builder and the Doctor). Never logged."""

    anthropic_base_url: str | None = None
    """Messages API base URL; unset = the SDK default. Tests and benchmarks point it at a local simulator."""

    llm_timeout_seconds: float = 600.0
    """Time limit for one Messages API request (each retry gets its own)."""

    llm_max_retries: int = 4
    """Retries after the first try for infra failures (429, 529, 5xx, connection errors, timeouts)."""

    llm_backoff_base_seconds: float = 1.0
    """The first retry waits up to this; each further retry doubles the ceiling (full jitter)."""

    llm_backoff_cap_seconds: float = 30.0
    """Largest backoff ceiling between retries."""

    llm_retry_after_cap_seconds: float = 60.0
    """Longest provider `retry-after` the client honours; a longer one is cut to this."""

    plan_llm_max_tokens: int = Field(default=60_000, ge=1, le=10**12)
    """Tokens (input + output) one plan draft's LLM pass (`POST /plans/normalize` with `llm: true`) may
    spend. The call's worst case (estimated prompt + `plan_llm_output_tokens`) is reserved against it
    before the call; one that does not fit is refused (422 naming this setting) and nothing is sent."""

    plan_llm_output_tokens: int = Field(default=4096, ge=256, le=128_000)
    """Output budget (`max_tokens`) of a plan draft's LLM call."""

    plan_llm_timeout_seconds: float = Field(default=120.0, gt=0)
    """Time limit of one try of a plan draft's LLM call. The call runs inside the HTTP request, so it
    is kept well below `llm_timeout_seconds` (a builder call's)."""

    max_deletions: int = 5
    """Files one LLM patch may delete unless the phase sets `allow_deletions`."""

    log_level: str = "INFO"
    """Log level of the API and workers."""

    approval_rules: Annotated[list[str], NoDecode] = []
    """Fleet-wide path rules, comma-separated `pattern=tier:policy` (tier: low, medium, high, critical;
    policy: auto, ask, deny), e.g. `infra/**=high:ask,*.lock=low:auto,secrets/**=critical:deny`. A run's
    `config.approval_rules` come first. `ask` pauses the phase until a person decides; `auto` passes
    only on `low` (a higher tier asks)."""

    approval_timeout_seconds: float = Field(default=86400.0, gt=0)
    """How long an approval waits for a decision before `approval_timeout_action` applies (a run's
    `config.approval_timeout_seconds` overrides it)."""

    approval_timeout_action: Literal["reject", "approve"] = "reject"
    """What an unanswered approval becomes when it times out (a run's config may override it)."""

    approval_webhook_url: str | None = None
    """Where a new approval request is POSTed as JSON (signed when `approval_webhook_secret` is set);
    unset = no notifications."""

    approval_webhook_secret: SecretStr | None = None
    """Key of the webhook's HMAC-SHA256 signature (`X-Autopack-Signature: sha256=<hex>` over
    `<X-Autopack-Timestamp>.<raw body>`). Never logged."""

    approval_webhook_attempts: int = Field(default=6, ge=1, le=50)
    """Tries of one webhook delivery before it is given up (recorded on its row)."""

    approval_webhook_backoff_seconds: float = Field(default=5.0, gt=0)
    """Wait after a webhook's first failed try; it doubles after each further failure."""

    approval_webhook_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time limit of one webhook POST."""

    @field_validator("allowed_repos", mode="before")
    @classmethod
    def _split_patterns(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            return parts or None  # an empty line in .env means unset, as in .env.example
        return value

    @field_validator("approval_rules", mode="before")
    @classmethod
    def _split_rules(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        for rule in value or []:
            parse_rule(rule)  # refuse a malformed rule at start, not at the first change it meets
        return value

    @property
    def path_rules(self) -> list[PathRule]:
        return [parse_rule(rule) for rule in self.approval_rules]

    @field_validator("sandbox_read_only_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):  # every list setting is spelt comma-separated, like AUTOPACK_ALLOWED_REPOS
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @property
    def repo_patterns(self) -> list[str]:
        """The patterns in force: `allowed_repos`, or the default of this mode (see its docstring)."""
        if self.allowed_repos is not None:
            return self.allowed_repos
        if not self.is_embedded:
            return []
        return [f"{Path(tempfile.gettempdir()).resolve()}/**", f"{Path('.autopack').resolve()}/**"]

    @property
    def is_embedded(self) -> bool:
        """True when the broker lives in this process, so workers must too."""
        return self.broker_url.startswith("memory://")

    @property
    def sandbox_summary(self) -> str:
        """What /health and /fleet say about the sandbox (workers report their own on /fleet)."""
        if self.sandbox == "none":
            return "none (AUTOPACK_SANDBOX=none: phase commands run unboxed)"
        return f"bwrap (phase network: {self.phase_network})"

    @property
    def needs_api_key(self) -> bool:
        return self.is_embedded is False if self.auth_required is None else self.auth_required


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


COMPOSE_SECRETS = ("POSTGRES_PASSWORD", "FLOWER_BASIC_AUTH")


def render_env_example() -> str:
    """The text of `.env.example`: every setting, its meaning and its default (a test keeps it true)."""
    lines = [
        "# Every Autopack setting with its default (the embedded mode). Copy to .env and edit.",
        "# Fleet mode, for example:",
        "#   AUTOPACK_DATABASE_URL=postgresql+psycopg://autopack:secret@127.0.0.1:5432/autopack",
        "#   AUTOPACK_BROKER_URL=redis://127.0.0.1:6379/0",
    ]
    for name, default in env_defaults().items():
        doc = Settings.model_fields[name.removeprefix("AUTOPACK_").lower()].description or ""
        lines += ["", *(f"# {line}" for line in doc.splitlines()), f"{name}={default}"]
    lines += ["", "# Required by compose.yaml (no defaults on purpose; FLOWER_BASIC_AUTH is user:password)."]
    lines += [f"{name}=" for name in COMPOSE_SECRETS]
    return "\n".join(lines) + "\n"


def env_value(value: Any) -> str:
    """A setting's value as its `AUTOPACK_*` variable spells it (lists comma-separated)."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def env_defaults() -> dict[str, str]:
    """Every setting as `AUTOPACK_NAME` → default, for `.env.example` and its drift test."""
    out: dict[str, str] = {}
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        out[f"AUTOPACK_{name.upper()}"] = env_value(default)
    return out
