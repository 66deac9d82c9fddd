"""Count the sandbox's CPU in this process's RUSAGE_CHILDREN.

bwrap (with `--unshare-pid`) exits as soon as its box's command has, with that command's code, and
never waits for its namespace's init: the init is then reparented, with the CPU of every process the
box ran (setpriv, unshare, bash, the command), to the nearest subreaper, else PID 1. A bench that
times a phase by `getrusage(RUSAGE_CHILDREN)` would see none of the box. `adopt_orphans()` makes this
process that subreaper; `reap_orphans()` waits for the adopted bwrap inits (each is SIGKILLed by
`--die-with-parent` the moment its bwrap exits), so their CPU lands here. Only a bench calls these: a
worker runs under a real init (compose's `init: true`), and a `waitpid` of its own would race the
`subprocess` module's.
"""

from __future__ import annotations

import ctypes
import os

import psutil

_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans() -> int:
    """Wait for the bwrap namespace inits this process adopted; how many were reaped. Called between
    phases, when no `subprocess` of the code under test is running."""
    reaped = 0
    for pid in _children():
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() != "bwrap":
                    continue
        except OSError:
            continue  # gone (a zombie keeps its comm: this one was reaped already)
        try:
            os.waitpid(pid, 0)
            reaped += 1
        except ChildProcessError:
            continue
    return reaped


def _children() -> list[int]:
    """This process's child pids from /proc/self/task/*/children: a few small reads, where psutil's
    `children()` reads the stat file of every process on the host (1.2 ms here). The bench calls this
    several times inside every phase it times, so psutil's scan was counted as ~5 ms of the phase's
    CPU and wall."""
    pids: list[int] = []
    try:
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children") as listed:
                pids += [int(pid) for pid in listed.read().split()]
    except FileNotFoundError:  # a kernel without CONFIG_PROC_CHILDREN
        return [child.pid for child in psutil.Process().children()]
    return pids
