"""The origin's share of a phase's CPU, when the origin is a local path.

A push to a local origin runs the origin's `git-receive-pack` (and its `unpack-objects`, connectivity
`rev-list`, `gc --auto`) as children of the worker's own `git push`, so the worker's child CPU holds
the git server's work too. In a fleet the origin is a remote and that work runs on its server. The
meter names a wrapper as the push's receive-pack (the `--receive-pack` the worker always passes,
`shared/git.py`), which runs git's own and logs the CPU it and its children used (bash's `times`,
milliseconds; not in a pipeline, whose subshell would report its own zero), so the bench can report
the worker's CPU without the server's beside the total.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared import git as git_mod

_WRAPPER = """#!/usr/bin/env bash
git-receive-pack "$@"
rc=$?
times >> {log}
exit $rc
"""
_TIME = re.compile(r"(\d+)m([\d.]+)s")


class OriginMeter:
    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "origin-cpu.log"
        self.wrapper = workdir / "receive-pack-timed"
        self.wrapper.write_text(_WRAPPER.format(log=self.log))
        self.wrapper.chmod(0o755)
        self.log.touch()

    @contextmanager
    def installed(self) -> Iterator[OriginMeter]:
        saved = git_mod._TRANSFER_PROGRAM["push"]
        git_mod._TRANSFER_PROGRAM["push"] = f"--receive-pack={self.wrapper}"
        try:
            yield self
        finally:
            git_mod._TRANSFER_PROGRAM["push"] = saved

    def seconds(self) -> float:
        """CPU every receive-pack so far used, its children included."""
        total = 0.0
        for line in self.log.read_text().splitlines():
            total += sum(int(m) * 60 + float(s) for m, s in _TIME.findall(line))
        return total
