"""Run a shell command in a worktree, boxed (workers/sandbox): time limit, output capped while it
streams, resource limits, and an environment without the worker's secrets."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from shared.git import scrubbed_env
from shared.settings import Settings, get_settings
from workers import drain
from workers.sandbox import Backend, BoxRequest, Limits, SandboxPolicy, backend_for, check, run_boxed
from workers.sandbox.limits import MIB
from workers.sandbox.run import prune_scratch

log = logging.getLogger(__name__)
_configured: list[Backend] = []


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    output: str
    seconds: float
    timed_out: bool
    limit: str | None = None
    """The limit that ended (or crippled) the command, in words; None when none did."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def summary(self) -> str:
        status = "timed out" if self.timed_out else f"exit {self.exit_code}"
        if self.limit:
            status += f"; {self.limit}"
        return f"$ {self.command}  ({status}, {self.seconds:.2f}s)\n{self.output}"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = scrubbed_env()  # secrets the worker holds never reach code it runs on a user's behalf
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


def cap(text: str, max_bytes: int) -> str:
    data = text.encode(errors="replace")
    if len(data) <= max_bytes:
        return text
    if max_bytes <= 0:
        return f"… [{len(data)} bytes cut] …"
    head = data[: max_bytes // 4].decode(errors="replace")
    tail = data[-(max_bytes - max_bytes // 4) :].decode(errors="replace")
    return f"{head}\n… [{len(data) - max_bytes} bytes cut] …\n{tail}"


def policy_from(settings: Settings) -> SandboxPolicy:
    workspace = settings.workspace_dir.resolve()
    return SandboxPolicy(
        mode=settings.sandbox,
        network=settings.phase_network,
        limits=Limits(
            memory_bytes=settings.sandbox_memory_mb * MIB,
            processes=settings.sandbox_max_processes,
            file_bytes=settings.sandbox_max_file_mb * MIB,
            open_files=settings.sandbox_max_open_files,
            cpu_seconds=settings.sandbox_cpu_seconds,
        ),
        tmp_bytes=settings.sandbox_tmp_mb * MIB,
        uid=settings.sandbox_uid,
        read_only_paths=tuple(p.resolve() for p in settings.sandbox_read_only_paths),
        hidden_paths=(workspace, Path(".env").resolve()),
        output_stop_bytes=settings.sandbox_output_stop_mb * MIB,
    )


@lru_cache(maxsize=1)
def default_backend() -> Backend:
    """The backend this process's settings ask for, unless a worker configured one at start."""
    return _configured[-1] if _configured else backend_for(policy_from(get_settings()))


def configure_sandbox(settings: Settings) -> Backend:
    """At worker start: build the sandbox the settings ask for and prove it starts (`bwrap … true`).
    Raises SandboxUnavailable (naming the package) rather than run repository code unboxed."""
    backend = backend_for(policy_from(settings))
    check(backend)
    prune_scratch()
    if backend.name == "none":
        log.warning(
            "AUTOPACK_SANDBOX=none: phase commands and validation run UNBOXED, as this worker's user, "
            "with its files and network"
        )
    else:
        limits = backend.policy.limits
        log.info(
            "sandbox: bwrap (phase network %s; memory %d MiB, %d processes, files %d MiB)",
            settings.phase_network,
            limits.memory_bytes // MIB,
            limits.processes,
            limits.file_bytes // MIB,
        )
    _configured[:] = [backend]
    default_backend.cache_clear()
    return backend


def run_command(
    command: str,
    cwd: Path,
    *,
    timeout: float,
    max_bytes: int,
    env: Mapping[str, str] | None = None,
    network: bool = False,
    writable: Sequence[Path] = (),
    backend: Backend | None = None,
) -> CommandResult:
    """Run `command` with bash in a box; when it ends (or times out, or breaks a limit) everything it
    started is killed, so nothing can outlive the phase or hold the output pipe open."""
    request = BoxRequest(command, cwd.resolve(), dict(env or {}), network, tuple(writable))
    result = run_boxed(
        backend or default_backend(), request, timeout=timeout, max_bytes=max_bytes, overdue=drain.overdue
    )
    return CommandResult(
        command, result.exit_code, result.output, result.seconds, result.timed_out, result.limit
    )
