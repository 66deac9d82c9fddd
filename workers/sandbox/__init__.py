"""The sandbox every repository or builder command runs in (script `command`, validation, baseline,
inferred validation).

Protocol, stated once: `run_command` (workers/commands.py) turns a command into a `BoxRequest` and
hands it to a `Backend` (`Bwrap`, or `NoSandbox` when the operator set `AUTOPACK_SANDBOX=none`),
whose `argv` is started by `run.run_boxed`, which streams the output into a `CappedOutput` (head and
tail kept, the rest counted), stops the command on the wall-time limit, on a drain, on a runaway
output or a fork bomb, kills everything it started, and returns a `BoxResult` whose `limit` names the
limit that ended it. The worker checks at start that a box can be created (`check`), and refuses to
start, naming the package, when it cannot.

What a bwrap box is:

* **Filesystem.** Read-only: /usr, /etc, /opt and the other system directories, the directories of the
  worker's PATH and its Python. Writable: the phase's worktree (and a JUnit report directory the worker
  made), a private size-capped tmpfs /tmp and $HOME. Absent: the workspace (other worktrees, mirrors),
  /root, /home, /var, the worker's project directory and its .env. Paths in `hidden_paths` are
  covered by an empty tmpfs even when a read-only path contains them.
* **Git.** The box gets a throwaway copy of the worktree's git metadata (see `gitview`): git status,
  diff, even add and commit work inside, and nothing written there — config, hooks, filters, remotes,
  credential helpers — reaches the mirror the worker's own git calls use; `.git` itself is read-only.
* **Processes.** Own pid namespace (its /proc shows only the box; bwrap is its init, so when the
  command ends, or the worker dies even by SIGKILL — `--die-with-parent` — everything in it dies),
  own ipc/uts/cgroup namespaces, a new session, no inherited descriptors, and an environment built
  from an allowlist (PATH, LANG, LC_ALL, TZ, a private HOME and TMPDIR, and what the phase declares).
* **Network.** Its own empty network namespace (no loopback to the host's Postgres or Redis, no route
  out) unless the phase asks for `network: true` and the operator set `AUTOPACK_PHASE_NETWORK=allow`.
* **Who.** Never root. A root worker runs bwrap privileged (it must traverse root-owned directories),
  keeps only CAP_SETUID/CAP_SETGID, then drops to `AUTOPACK_SANDBOX_UID` inside a user namespace of
  the command's own (`setpriv` + `unshare --user`) after handing the worktree to that uid; a non-root
  worker (the container image) runs bwrap unprivileged with `--unshare-user`.
* **Limits** (`limits.py`): RLIMIT_AS, RLIMIT_NPROC (per user namespace, so per command), RLIMIT_FSIZE,
  RLIMIT_NOFILE, RLIMIT_CPU, set by the box's shell (`ulimit`) before the command; plus the wall time
  and the output caps.
"""

from workers.sandbox.backends import Bwrap, NoSandbox, backend_for, check
from workers.sandbox.limits import Limits
from workers.sandbox.policy import BoxRequest, SandboxPolicy
from workers.sandbox.run import Backend, BoxResult, run_boxed

__all__ = [
    "Backend",
    "BoxRequest",
    "BoxResult",
    "Bwrap",
    "Limits",
    "NoSandbox",
    "SandboxPolicy",
    "backend_for",
    "check",
    "run_boxed",
]
