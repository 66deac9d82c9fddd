"""One line per failure: the line that names what went wrong, which the miner groups.

The first line that reads like an error (`SomethingError: …`, pytest's `E   …`, `error: …`, `fatal: …`,
`panic: …`) in the validation output wins; pytest's separator and summary lines (`=== 1 failed in 0.1s ===`,
`FAILED tests/…`) never do, since every failing test run has them. Without such a line, the failure
reason's first line stands for the failure.
"""

from __future__ import annotations

import re

MAX_SCAN_LINES = 2000
MAX_LINE_CHARS = 4096
_ERROR = re.compile(
    r"^\s*(?:E\s+)?[\w.]*(?:Error|Exception|Failure)\b"
    r"|^\s*(?:error|fatal|panic|FATAL|ERROR)\b[\s:\[(]"
    r"|^\s*E\s{2,}\S"
)
_NOISE = re.compile(r"^\s*(?:=+|-+|_+)(?:\s|$)|^\s*(?:FAILED|ERROR) \S+::|^\s*Traceback \(most recent")


def signature(failure_reason: str | None, output: str | None) -> str:
    """The line of this failure to mine (stripped, possibly empty)."""
    lines = (output or "").splitlines()[:MAX_SCAN_LINES]
    for raw in lines:
        line = raw[:MAX_LINE_CHARS]
        if _ERROR.match(line) and not _NOISE.match(line):
            return line.strip()
    reason = (failure_reason or "").strip().splitlines()
    return reason[0][:MAX_LINE_CHARS].strip() if reason else ""
