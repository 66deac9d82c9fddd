"""Imports that cannot be resolved: a Python module that is not installed (or a name its module does not
define) and a Node package or local module that cannot be found. Builders reach for third-party packages
the validation environment does not have, or import a repository module the wrong way; the advice names
the module and points at the standard library, Node's built-ins or the repository's own code instead,
since nothing gets installed between attempts.
"""

from __future__ import annotations

import re
from pathlib import Path

from workers.hardening.scan import Failure, FailurePattern, Mitigation, first_line

# --- missing Python dependency ---------------------------------------------------------------------

_NO_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?([\w.]+)'?")
_CANNOT_IMPORT = re.compile(r"ImportError: cannot import name '?(\w+)'? from '?([\w.]+)'?")
_STDLIB_INSTEAD = {
    "requests": "urllib.request",
    "httpx": "urllib.request",
    "yaml": "json (or configparser/tomllib for config files)",
    "toml": "tomllib (read-only)",
    "dateutil": "datetime",
    "pytz": "zoneinfo",
    "simplejson": "json",
    "ujson": "json",
    "attr": "dataclasses",
    "attrs": "dataclasses",
    "click": "argparse",
    "numpy": "math/statistics",
    "pandas": "csv",
    "six": "plain Python 3",
}


def _repo_module(top: str, worktree: Path | None) -> str | None:
    """Where the repository itself holds the top-level module `top`, if it does."""
    if worktree is None:
        return None
    for rel in (top, f"{top}.py", f"src/{top}", f"src/{top}.py"):
        if (worktree / rel).exists():
            return rel
    return None


def _missing_module_advice(top: str, worktree: Path | None) -> str:
    local = _repo_module(top, worktree)
    if local is not None:
        return (
            f"'{top}' is part of this repository (at '{local}') but is not importable where validation runs "
            "(the repository root): import it the way existing code and tests do — check the package "
            "__init__.py files, the src/ layout and any conftest.py path setup — instead of installing it."
        )
    instead = _STDLIB_INSTEAD.get(top, "the standard library")
    return (
        f"The module '{top}' is not installed in the validation environment; do not import it and do "
        f"not expect it to be installed — use {instead} or a module that exists in the repository. "
        f"If '{top}' is meant to be part of this repository, create it inside the phase scope."
    )


def missing_python_dependency(failure: Failure) -> Mitigation | None:
    found = first_line(failure.lines, _NO_MODULE)
    if found:
        top = found[1].group(1).split(".")[0]
        return Mitigation(
            FailurePattern.MISSING_PYTHON_DEPENDENCY, _missing_module_advice(top, failure.worktree), found[0]
        )
    found = first_line(failure.lines, _CANNOT_IMPORT)
    if found:
        line, match = found
        name, module = match.group(1), match.group(2)
        advice = (
            f"'{module}' does not define '{name}'. Import only names that '{module}' actually defines "
            f"(read its source), or add '{name}' to {module.replace('.', '/')}.py if that file is in scope."
        )
        if "circular import" in line:
            advice += " The message also points at a circular import: move the import inside the function."
        return Mitigation(FailurePattern.MISSING_PYTHON_DEPENDENCY, advice, line)
    return None


# --- missing Node module ---------------------------------------------------------------------------

_NODE_MODULE = re.compile(r"Cannot find (?:module|package) '([^']+)'")
_ESM_NOT_FOUND = re.compile(r"ERR_MODULE_NOT_FOUND")


def _node_advice(name: str | None) -> str:
    if name is None:
        return (
            "An ES module import could not be resolved (ERR_MODULE_NOT_FOUND): use only packages already in "
            "node_modules, and write relative imports with the full file extension (./utils.js)."
        )
    if name.startswith((".", "/")):
        return (
            f"The local module '{name}' does not exist at that path: check the path relative to the "
            f"importing file and, for ES modules, include the file extension (e.g. '{name}.js'); create "
            "it if it is in scope."
        )
    return (
        f"The package '{name}' is not installed (absent from node_modules); do not import it and do not "
        "add it to package.json expecting an install — use Node's built-in modules (node:fs, node:path, "
        "node:url, ...) or code that already exists in the repository."
    )


def missing_node_module(failure: Failure) -> Mitigation | None:
    found = first_line(failure.lines, _NODE_MODULE)
    if found:
        return Mitigation(FailurePattern.MISSING_NODE_MODULE, _node_advice(found[1].group(1)), found[0])
    found = first_line(failure.lines, _ESM_NOT_FOUND)
    if found:
        return Mitigation(FailurePattern.MISSING_NODE_MODULE, _node_advice(None), found[0])
    return None
