"""A `git` in front of the real one, for workers under test: it fails or kills at a named git step.

Put `GitShim.bin` first on a worker's PATH and `GITSHIM_DIR` in its environment. Control files in
that directory steer it, per step (`reset`, `clean`, `worktree-add`, `update-ref`, `push`,
`push-branch` for the atomic push that moves a run branch, `fetch`, …; a push to a local origin is its
`update-ref` there, see the script):
- `fail-<step>` exists: the step fails as a broken host's git would (exit 128), while the file exists;
- `kill-<step>` exists: the first such call claims it, starts the real git, waits the seconds the file
  holds, then SIGKILLs that git (and its children) together with the worker process that ran it, as a
  host crash or an OOM kill of the worker's cgroup would. Only calls made by a prefork child fire, so
  the worker's main process (its reconciler) is never the one killed. The claimed file is renamed
  `fired-<step>.<pid>`: proof, for the test, that the kill happened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

WORKER_STEPS = (
    "clone",
    "fetch",
    "worktree-add",
    "reset",
    "clean",
    "status",
    "add",
    "diff",
    "push",
    "push-branch",
)
"""Every git step a worker runs for a phase (it never runs `checkout`: it moves a slot with `reset
--hard`, and it commits and moves its mirror's refs in-process, shared/git_native.py). `clone` (the
first fetch into a new mirror, see `_SCRIPT`) and `worktree-add` run once per host and slot; `fetch`
when a commit is new to the host."""

FIRST_USE_STEPS = ("clone", "worktree-add")

_SCRIPT = r"""#!/usr/bin/env bash
real=__REAL__
args=("$@"); i=0; step=""
while [ $i -lt ${#args[@]} ]; do
  case "${args[$i]}" in
    --git-dir) gitdir="${args[$((i+1))]}"; i=$((i+2));;
    -c|-C) i=$((i+2));;
    -*) i=$((i+1));;
    worktree) step="worktree-${args[$((i+1))]}"; break;;
    *) step="${args[$i]}"; break;;
  esac
done
if [ "$step" = push ] && [[ " $* " == *" --atomic "* ]]; then step=push-branch; fi
# A push to a local origin copies objects in-process and writes refs with one `update-ref --stdin` in
# the origin (workers/local_push.py): that is the push, and more than one ref makes it the branch's.
if [ "$step" = update-ref ] && [ -n "${gitdir:-}" ] && [[ "$gitdir" != */mirrors/* ]]; then
  input=$(cat)
  if [ "$(grep -c . <<<"$input")" -gt 1 ]; then step=push-branch; else step=push; fi
  exec < <(printf '%s\n' "$input")
fi
# A mirror is made by `init` + `fetch` into `<mirror>.tmp` (workers/workspace/mirror.py): that first
# fetch is the host's clone.
if [ "$step" = fetch ] && [[ "${gitdir:-}" == *.tmp ]]; then step=clone; fi
d="${GITSHIM_DIR:-}"
if [ -n "$d" ] && [ -n "$step" ]; then
  if [ -e "$d/fail-$step" ]; then
    echo "fatal: git $step: simulated host fault (input/output error)" >&2
    exit 128
  fi
  grandparent=$(ps -o ppid= -p "$PPID" | tr -d ' ')
  gp_cmd=$(tr '\0' ' ' < "/proc/$grandparent/cmdline" 2>/dev/null | cut -c1-80)
  echo "$step caller=$PPID grandparent=$grandparent $gp_cmd" >> "$d/calls.log"
  if tr '\0' ' ' < "/proc/$grandparent/cmdline" 2>/dev/null | grep -q "autopack worker" \
     && mv "$d/kill-$step" "$d/fired-$step.$$" 2>/dev/null; then
    "$real" "$@" <&0 &  # an explicit redirect: a background job's stdin is otherwise /dev/null
    g=$!
    sleep "$(cat "$d/fired-$step.$$")"
    pkill -9 -P "$g" 2>/dev/null
    kill -9 "$g" "$PPID" 2>/dev/null
    exit 137
  fi
fi
exec "$real" "$@"
"""


@dataclass
class GitShim:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @classmethod
    def install(cls, root: Path, real: str = "/usr/bin/git") -> GitShim:
        shim = cls(root)
        shim.bin.mkdir(parents=True, exist_ok=True)
        shim.control.mkdir(parents=True, exist_ok=True)
        script = shim.bin / "git"
        script.write_text(_SCRIPT.replace("__REAL__", real))
        script.chmod(0o755)
        return shim

    def env(self) -> dict[str, str]:
        return {"PATH": f"{self.bin}:{os.environ['PATH']}", "GITSHIM_DIR": str(self.control)}

    def fail(self, step: str, on: bool = True) -> None:
        flag = self.control / f"fail-{step}"
        if on:
            flag.write_text("")
        else:
            flag.unlink(missing_ok=True)

    def kill(self, step: str, after_seconds: float) -> None:
        (self.control / f"kill-{step}").write_text(f"{after_seconds:.4f}\n")

    def disarm(self, step: str) -> None:
        (self.control / f"kill-{step}").unlink(missing_ok=True)

    def fired(self) -> list[str]:
        """The steps whose kill happened, in no particular order."""
        return sorted(p.name.split(".")[0].removeprefix("fired-") for p in self.control.glob("fired-*"))

    def calls(self, steps: list[str]) -> str:
        """The shim's own log of the calls it saw for `steps` (step, caller, grandparent and its
        command line): what a test prints when an armed step never fired."""
        log = self.control / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return "\n".join(line for line in lines if line.split(" ", 1)[0] in steps)

    def landing(self) -> set[int]:
        """Pids of shim processes that claimed a kill and have not yet delivered it: the worker process
        that called them is about to die."""
        out = set()
        for path in self.control.glob("fired-*.*"):
            pid = path.name.rsplit(".", 1)[1]
            if pid.isdigit() and Path(f"/proc/{pid}").exists():
                out.add(int(pid))
        return out

    def armed(self) -> list[str]:
        return sorted(p.name.removeprefix("kill-") for p in self.control.glob("kill-*"))
