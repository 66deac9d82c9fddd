"""What a box may see and do (`SandboxPolicy`, from settings) and the bwrap argv that enforces it."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from workers.sandbox.limits import MIB, Limits

HOME_IN_BOX = "/home/sandbox"
TMP_IN_BOX = "/tmp"  # noqa: S108 - the box's own private tmpfs, not the host's /tmp
# The root filesystem a command gets, read-only: programs, libraries, and /etc (resolv.conf, passwd,
# CA certificates). /etc holds no secret a non-root uid can read; /var, /root, /home, /run, /srv and
# the worker's own directories are not there at all.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
PASSED_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")


class SandboxPolicy(BaseModel):
    """The operator's sandbox settings, in one value a backend can be built from."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["bwrap", "none"] = "bwrap"
    network: Literal["deny", "allow"] = "deny"
    """Whether a phase that asks for `network: true` gets it."""
    limits: Limits = Field(default_factory=Limits)
    tmp_bytes: int = 256 * MIB
    """Size of the private /tmp and of the private $HOME (each)."""
    uid: int = 65534
    """Host uid boxed commands run as when the worker is root (else they keep the worker's uid)."""
    read_only_paths: tuple[Path, ...] = ()
    """Extra host paths shown read-only (toolchains outside /usr and /opt)."""
    hidden_paths: tuple[Path, ...] = ()
    """Paths never shown, even below a read-only path (the workspace, the worker's .env)."""
    output_stop_bytes: int = 1024 * MIB
    """A command that prints more than this is ended ("output limit"): a runaway, not a log."""


@dataclass(frozen=True)
class BoxRequest:
    """One command to run in one box."""

    command: str
    cwd: Path
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables the phase declares, on top of the allowlist."""
    network: bool = False
    writable: Sequence[Path] = ()
    """Directories besides `cwd` the command may write (a JUnit report's, made by the worker)."""


def interpreter_paths() -> list[Path]:
    """The worker's own Python (its venv and base install): validation commonly runs it."""
    return [Path(p) for p in {sys.prefix, sys.base_prefix}]


def path_dirs(path_value: str) -> list[Path]:
    """Directories of PATH that exist, each with its venv root when it is a venv's bin/, and with its
    tool root when it is a version manager's shims/ (pyenv, rbenv, asdf: a shim runs the manager)."""
    out: list[Path] = []
    for entry in path_value.split(os.pathsep):
        directory = Path(entry)
        if not entry or not directory.is_absolute() or not directory.is_dir():
            continue
        out.append(directory)
        if (directory.parent / "pyvenv.cfg").is_file() or directory.name == "shims":
            out.append(directory.parent)
    return out


def _covered(path: Path, by: Sequence[Path]) -> bool:
    """`path` is one of `by` or inside one (as strings: `p in path.parents` built a Path per ancestor,
    a tenth of a boxed command's Python CPU)."""
    name = str(path)
    return any(name == str(p) or name.startswith(str(p).rstrip("/") + "/") for p in by)


def visible_paths(policy: SandboxPolicy, path_value: str) -> list[Path]:
    """Host paths bound read-only, outermost first, without ones a system path already covers."""
    wanted = [Path(p) for p in SYSTEM_PATHS]
    wanted += [*path_dirs(path_value), *interpreter_paths(), *policy.read_only_paths]
    # A symlinked venv python (pyenv, uv) must find its real install too.
    wanted += [Path(os.path.realpath(p)) for p in list(wanted) if p.is_symlink() or p.is_dir()]
    out: list[Path] = []
    for path in sorted({p for p in wanted if os.path.lexists(p)}, key=lambda p: len(p.parts)):
        if not _covered(path, out) or path.is_symlink():
            out.append(path)
    return out


def mount_args(paths: Sequence[Path], hidden: Sequence[Path]) -> list[str]:
    args: list[str] = []
    for path in paths:
        if path.is_symlink() and path.parent == Path("/"):  # /bin -> usr/bin on merged-/usr systems
            args += ["--symlink", os.readlink(path), str(path)]
        elif not path.is_symlink():
            args += ["--ro-bind", str(path), str(path)]
    for path in hidden:
        if _covered(path, paths) and path.exists():
            args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    return args


def parent_dirs(targets: Sequence[str], read_only: Sequence[Path]) -> list[str]:
    """`--dir` (mode 0755) for every missing ancestor of a mount target. bwrap would copy the host
    directory's mode, and a 0700 /root or pytest's 0700 temp dir would lock the box's uid out of the
    very paths it was given."""
    made: list[str] = []
    for target in targets:
        for parent in reversed(Path(target).parents):
            name = str(parent)
            if parent == Path("/") or name in made or _covered(parent, read_only):
                continue
            if name in ("/proc", "/dev", TMP_IN_BOX, HOME_IN_BOX):
                continue
            made.append(name)
    made.sort(key=lambda n: len(Path(n).parts))
    return [arg for name in made for arg in ("--perms", "0755", "--dir", name)]


@lru_cache(maxsize=8)
def _read_only_args(policy: SandboxPolicy, path_value: str) -> tuple[list[str], tuple[Path, ...]]:
    """The read-only part of the box, the same for every command of a worker: computed once."""
    visible = visible_paths(policy, path_value)
    args = parent_dirs([str(p) for p in visible], visible) + mount_args(visible, policy.hidden_paths)
    return args, tuple(visible)


def box_env(request: BoxRequest, path_value: str) -> dict[str, str]:
    """The allowlist: PATH, LANG and friends from the worker, a private HOME and TMPDIR, then the
    phase's own variables. Nothing else of the worker's environment (its secrets) gets in."""
    env = {k: os.environ[k] for k in PASSED_VARIABLES if k in os.environ}
    env["PATH"] = path_value
    env.setdefault("LANG", "C.UTF-8")
    env.update({"HOME": HOME_IN_BOX, "TMPDIR": TMP_IN_BOX, "PYTHONDONTWRITEBYTECODE": "1"})
    env.update(request.env)
    return env


def bwrap_argv(
    policy: SandboxPolicy,
    request: BoxRequest,
    *,
    git_binds: Sequence[str] = (),
    as_root: bool,
) -> list[str]:
    """The full argv: bwrap, its mounts and namespaces, then (as root) the drop to `policy.uid` in a
    user namespace of its own, then `bash -c command`, the command after the limits' `ulimit`."""
    path_value = os.environ.get("PATH", "/usr/bin:/bin")
    cwd = str(request.cwd)
    size = str(policy.tmp_bytes)
    argv = [
        "bwrap",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",  # bwrap's child gets SIGKILL when the worker dies, even by SIGKILL
        "--new-session",  # no TIOCSTI into a terminal the worker may have
        "--hostname",
        "sandbox",
    ]
    if not (request.network and policy.network == "allow"):
        argv.append("--unshare-net")
    if as_root:
        # Privileged bwrap mounts what it must (it can traverse root's directories), keeps only the
        # two capabilities the drop below needs, and the command never runs as root.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        argv += ["--cap-add", "CAP_DAC_READ_SEARCH"]  # to chdir into the worktree, handed to the uid
    else:
        argv.append("--unshare-user")
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", size, "--tmpfs", TMP_IN_BOX]
    # As root, bwrap's tmpfs belongs to root; the command's uid must still own its HOME.
    argv += ["--perms", "1777" if as_root else "0700", "--size", size, "--tmpfs", HOME_IN_BOX]
    static, visible = _read_only_args(policy, path_value)
    argv += static
    writable = [cwd, *(str(p) for p in request.writable)]
    argv += parent_dirs([*writable, *git_binds[2::3]], visible)
    for path in writable:
        argv += ["--bind", path, path]
    argv += [*git_binds, "--chdir", cwd, "--clearenv"]
    for key, value in box_env(request, path_value).items():
        argv += ["--setenv", key, value]
    argv.append("--")
    if as_root:
        uid = str(policy.uid)
        argv += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        argv += ["unshare", "--user", f"--map-user={uid}", f"--map-group={uid}", "--"]
    argv += ["bash", "-c", policy.limits.shell_prefix() + request.command]
    return argv
