"""Access denied: a Python `PermissionError`, Node's `EACCES` or a shell's `Permission denied`. Either a
script in the checkout lacks the executable bit (run it through its interpreter) or the code touches a
path outside the worktree that validation may not write (use the worktree or a temporary directory).
The advice steers away from changing file modes, which the builder cannot rely on.
"""

from __future__ import annotations

import re
from pathlib import Path

from workers.hardening.scan import Failure, FailurePattern, Mitigation, first_line, relative_path

_PERMISSION = re.compile(r"PermissionError|EACCES|Permission denied", re.IGNORECASE)
_DENIED_PATH = (
    re.compile(r"permission denied[:,]? (?:\w+ )?'([^']+)'", re.IGNORECASE),  # Python, Node
    re.compile(r"'([^']+)': Permission denied"),  # mkdir: cannot create directory '/x': Permission denied
)
_NOT_EXECUTABLE = re.compile(r"(?:^|: )([^\s'\"]+): Permission denied")  # bash: ./run.sh: Permission denied


def _permission_advice(line: str, worktree: Path | None) -> str:
    script = _NOT_EXECUTABLE.search(line)
    rel = relative_path(script.group(1), worktree) if script else None
    if rel is not None:
        return (
            f"'{rel}' could not be executed: files in the validation checkout may lack the executable bit. "
            f"Invoke it through its interpreter (bash {rel}, python {rel}) instead of running it directly."
        )
    quoted = next((m for regex in _DENIED_PATH if (m := regex.search(line))), None)
    target = f"'{quoted.group(1)}'" if quoted else "a path"
    return (
        f"Validation has no permission to access {target}. Read and write only inside the repository "
        "worktree; use tempfile.mkdtemp() (os.tmpdir() in Node) for scratch files, never system or home "
        "directories, and do not rely on changing file modes."
    )


def permission_error(failure: Failure) -> Mitigation | None:
    found = first_line(failure.lines, _PERMISSION)
    if found is None:
        return None
    line = found[0]
    return Mitigation(FailurePattern.PERMISSION_ERROR, _permission_advice(line, failure.worktree), line)
