"""The two backends: `Bwrap` (the default) and `NoSandbox` (AUTOPACK_SANDBOX=none), and the start check."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from shared.errors import SandboxFailed, SandboxUnavailable
from shared.git import scrubbed_env
from workers.sandbox import gitview
from workers.sandbox.policy import BoxRequest, SandboxPolicy, bwrap_argv
from workers.sandbox.run import Backend, run_boxed

PACKAGE = "bubblewrap"


class NoSandbox:
    """`AUTOPACK_SANDBOX=none`: a bash in its own session with the worker's environment minus its
    secrets. Only the wall time and the output cap apply. For hosts that cannot create namespaces."""

    name = "none"

    def __init__(self, policy: SandboxPolicy) -> None:
        self.policy = policy

    def argv(self, request: BoxRequest, scratch: Path) -> list[str]:
        return ["bash", "-c", request.command]

    def process_env(self, request: BoxRequest) -> dict[str, str]:
        env = scrubbed_env()
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(request.env)
        return env


class Bwrap:
    """bubblewrap: see `workers/sandbox/__init__.py` for what the box is."""

    name = "bwrap"

    def __init__(self, policy: SandboxPolicy) -> None:
        self.policy = policy
        self.as_root = os.geteuid() == 0

    def argv(self, request: BoxRequest, scratch: Path) -> list[str]:
        binds: list[str] = []
        layout = gitview.find_layout(request.cwd)
        if layout is not None:
            view = gitview.build_view(layout, scratch / "git")
            binds = gitview.bind_args(layout, view)
        if self.as_root:
            for path in (request.cwd, *request.writable, scratch):
                hand_over(path, self.policy.uid)
        return bwrap_argv(self.policy, request, git_binds=binds, as_root=self.as_root)

    def process_env(self, request: BoxRequest) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}


def hand_over(root: Path, uid: int) -> None:
    """Give `root` (a worktree, a report dir) to the box's uid so it can write there. The worker, as
    root, still reads and deletes everything; its git calls pass `safe.directory` for this. One lstat
    per entry, and a chown only for what is not the uid's yet (after a reset, the files git wrote):
    with scandir, not os.walk plus a path join and lstat per name, it takes 3.9 ms, not 6.8, on a
    2,100-file worktree already handed over, and it runs before every box."""
    top = os.fspath(root)
    with contextlib.suppress(FileNotFoundError):
        if os.lstat(top).st_uid != uid:
            os.lchown(top, uid, uid)
    pending = [top]
    while pending:
        directory = pending.pop()
        try:
            entries = os.scandir(directory)
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if directory is top and entry.name == ".git":
                    continue  # its git dir is never the box's
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        os.lchown(entry.path, uid, uid)
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)


def backend_for(policy: SandboxPolicy) -> Backend:
    return Bwrap(policy) if policy.mode == "bwrap" else NoSandbox(policy)


def check(backend: Backend, timeout: float = 20) -> None:
    """Run `true` in a box once; SandboxUnavailable says what to install or allow when it cannot."""
    if backend.name == "none":
        return
    if shutil.which("bwrap") is None:
        raise SandboxUnavailable(
            f"bwrap is not installed: install the `{PACKAGE}` package (apt-get install {PACKAGE}), "
            "or set AUTOPACK_SANDBOX=none to run phase commands unboxed"
        )
    with tempfile.TemporaryDirectory(prefix="autopack-sandbox-check-") as tmp:
        try:
            result = run_boxed(backend, BoxRequest("true", Path(tmp)), timeout=timeout, max_bytes=4000)
            said = result.output if result.exit_code != 0 or result.timed_out else None
        except SandboxFailed as exc:
            said = exc.detail
    if said is not None:
        raise SandboxUnavailable(
            f"bwrap cannot start a box here: {said.strip()[:500]} — "
            "the worker needs user namespaces (container: seccomp/apparmor unconfined, see compose.yaml) "
            f"and the `{PACKAGE}` package, or AUTOPACK_SANDBOX=none"
        )
