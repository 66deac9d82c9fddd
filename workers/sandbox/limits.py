"""Resource limits of one boxed command, and how to tell which of them ended it.

Limits are applied *inside* the box by the box's shell (`ulimit`, before it runs anything else), so they
bind the command and its children but never bwrap or the worker. (util-linux `prlimit` did the same as
one more program started per command.) RLIMIT_NPROC counts processes per
(user namespace, uid) since Linux 5.14: every command gets a user namespace of its own, so a fork bomb
exhausts its own budget, not the budget of another phase running as the same uid on this host.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MIB = 2**20

# Words the kernel, libc, bash or a runtime print when a limit refused something. They are looked for
# in the whole stream (also the part the output cap drops), so a limit is named even when its message
# scrolled away.
PROCESS_MARKERS = (
    b"fork: retry: Resource temporarily unavailable",
    b"fork: Resource temporarily unavailable",
    b"Cannot fork",
    b"can't start new thread",
)
MEMORY_MARKERS = (
    b"MemoryError",
    b"Cannot allocate memory",
    b"std::bad_alloc",
    b"out of memory",
    b"Out of memory",
)
FILE_SIZE_MARKERS = (b"File size limit exceeded",)
CPU_MARKERS = (b"CPU time limit exceeded",)
OPEN_FILES_MARKERS = (b"Too many open files",)

_SIGXCPU, _SIGXFSZ = 24, 25


class Limits(BaseModel):
    """Per-command ceilings; 0 means "no limit" for that resource."""

    model_config = ConfigDict(frozen=True)

    memory_bytes: int = Field(default=2048 * MIB, ge=0)
    """Address space (RLIMIT_AS), or memory.max when a delegated cgroup is configured."""
    processes: int = Field(default=256, ge=0)
    """Processes and threads of the command's own user namespace (RLIMIT_NPROC)."""
    file_bytes: int = Field(default=1024 * MIB, ge=0)
    """Largest file the command may write (RLIMIT_FSIZE)."""
    open_files: int = Field(default=1024, ge=0)
    """Open file descriptors per process (RLIMIT_NOFILE)."""
    cpu_seconds: int = Field(default=1800, ge=0)
    """CPU time per process (RLIMIT_CPU); the wall-time limit is separate."""

    def shell_prefix(self) -> str:
        """`ulimit -v KiB -u N -f KiB -n N -t S || exit 125; `: the box's bash sets each limit, soft and
        hard equal (bash sets both when given neither -S nor -H), so the command cannot raise them back.
        A limit that cannot be set ends the shell before the command, as the box failing to start."""
        args = []
        for flag, value in (
            ("v", self.memory_bytes // 1024 or 1 if self.memory_bytes else 0),
            ("u", self.processes),
            ("f", self.file_bytes // 1024 or 1 if self.file_bytes else 0),
            ("n", self.open_files),
            ("t", self.cpu_seconds),
        ):
            if value:
                args.append(f"-{flag} {value}")
        return f"ulimit {' '.join(args)} || exit 125; " if args else ""

    def describe_memory(self) -> str:
        return f"memory limit {self.memory_bytes // MIB} MiB"


def _seen(markers: set[bytes], group: tuple[bytes, ...]) -> bool:
    return any(m in markers for m in group)


def all_markers() -> tuple[bytes, ...]:
    return PROCESS_MARKERS + MEMORY_MARKERS + FILE_SIZE_MARKERS + CPU_MARKERS + OPEN_FILES_MARKERS


def explain(limits: Limits, exit_code: int, markers: set[bytes], *, oom_killed: bool = False) -> str | None:
    """Which limit ended (or crippled) the command, in words for the attempt's failure reason; None if
    nothing points at a limit. The exit status wins over words in the output, which code can fake."""
    if oom_killed:
        return f"killed: {limits.describe_memory()}"
    if exit_code == 128 + _SIGXFSZ:
        return f"killed: file size limit {limits.file_bytes // MIB} MiB"
    if exit_code == 128 + _SIGXCPU:
        return f"killed: CPU time limit {limits.cpu_seconds} s"
    if _seen(markers, PROCESS_MARKERS):
        return f"process limit {limits.processes} reached"
    if _seen(markers, MEMORY_MARKERS) and exit_code != 0:
        return f"{limits.describe_memory()}: an allocation was refused"
    if _seen(markers, FILE_SIZE_MARKERS):
        return f"file size limit {limits.file_bytes // MIB} MiB"
    if _seen(markers, CPU_MARKERS):
        return f"CPU time limit {limits.cpu_seconds} s"
    if _seen(markers, OPEN_FILES_MARKERS) and exit_code != 0:
        return f"open files limit {limits.open_files}"
    return None
