"""Governed, all-or-nothing apply on real git repositories: every rejection leaves every byte as it was."""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from api.sample_repo import make_sample_repo
from shared.specs import PhaseSpec
from workers import apply as apply_mod
from workers.apply import ApplyResult, FileWrite, apply_writes

Entry = tuple[str, bytes, int]


def phase(**fields: object) -> PhaseSpec:
    base: dict[str, object] = {"name": "p", "scope": ["src", "tests", "README.md"], "command": "true"}
    return PhaseSpec.model_validate({**base, **fields})


def unvalidated_phase(scope: list[str]) -> PhaseSpec:
    """A phase the spec validator would refuse (scope `.git`), to prove apply refuses on its own."""
    return PhaseSpec.model_construct(name="p", scope=scope, protected_paths=[], command="true")


def snapshot(*roots: Path) -> dict[str, Entry]:
    """Every directory, file (bytes and mode) and symlink (target) under the roots, .git included."""
    out: dict[str, Entry] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    out[str(path)] = ("link", os.readlink(path).encode(), 0)
                elif stat.S_ISDIR(st.st_mode):
                    out[str(path)] = ("dir", b"", 0)
                else:
                    out[str(path)] = ("file", path.read_bytes(), stat.S_IMODE(st.st_mode))
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_sample_repo(tmp_path / "repo")


def apply(repo: Path, writes: list[FileWrite], spec: PhaseSpec | None = None, **kw: object) -> ApplyResult:
    max_deletions = kw.get("max_deletions", 5)
    allow_deletions = kw.get("allow_deletions", False)
    assert isinstance(max_deletions, int)
    assert isinstance(allow_deletions, bool)
    return apply_writes(
        repo, writes, spec or phase(), max_deletions=max_deletions, allow_deletions=allow_deletions
    )


def rejected(
    repo: Path, writes: list[FileWrite], spec: PhaseSpec | None = None, *also: Path, **kw: object
) -> str:
    """Apply, expect a rejection, and prove nothing changed on disk (no file, dir or link added)."""
    before = snapshot(repo, *also)
    result = apply(repo, writes, spec, **kw)
    assert not result.ok
    assert result.changed_paths == []
    assert snapshot(repo, *also) == before
    assert result.reason is not None
    return result.reason


def write(path: str, text: str = "X = 1\n") -> FileWrite:
    return FileWrite(path, text.encode())


# ---------------------------------------------------------------------------------------- applying


def test_applies_writes_new_files_with_parents_and_deletions(repo: Path) -> None:
    result = apply(
        repo,
        [
            write("src/calc.py", "A = 1\n"),
            write("src/pkg/deep/new.py"),
            FileWrite("tests/test_calc.py", None),
        ],
    )
    assert result == ApplyResult(True, None, ["src/calc.py", "src/pkg/deep/new.py", "tests/test_calc.py"])
    assert (repo / "src/calc.py").read_text() == "A = 1\n"
    assert (repo / "src/pkg/deep/new.py").read_text() == "X = 1\n"
    assert not (repo / "tests/test_calc.py").exists()
    assert not [p for p in (repo / "src").rglob("*") if ".autopack-" in p.name]


def test_write_with_identical_bytes_is_not_reported_as_changed(repo: Path) -> None:
    same = (repo / "src/calc.py").read_bytes()
    assert apply(repo, [FileWrite("src/calc.py", same)]) == ApplyResult(True, None, [])


def test_write_keeps_the_mode_of_the_file_it_replaces(repo: Path) -> None:
    script = repo / "src/run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert apply(repo, [write("src/run.sh", "#!/bin/sh\necho hi\n")]).ok
    assert stat.S_IMODE(script.stat().st_mode) == 0o755


def test_applied_change_is_what_git_status_sees(repo: Path) -> None:
    from workers.steps import worktree_status

    result = apply(repo, [write("src/calc.py"), write("src/new.py"), FileWrite("README.md", None)])
    assert result.changed_paths == worktree_status(repo).paths


# ------------------------------------------------------------------------------- governed: the path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("src/../../escape.py", "contains '..'"),
        ("../escape.py", "contains '..'"),
        ("/tmp/escape.py", "absolute path"),
        ("C:/escape.py", "absolute path"),
        ("src\\calc.py", "backslash"),
        ("src//calc.py", "not a normalised relative path"),
        ("src/./calc.py", "not a normalised relative path"),
        ("src/calc.py\n", "control character"),
        ("", "empty path"),
    ],
)
def test_rejects_paths_that_are_not_plain_relative_paths(
    repo: Path, tmp_path: Path, path: str, why: str
) -> None:
    reason = rejected(repo, [write(path)], None, tmp_path)
    assert why in reason
    assert not (tmp_path / "escape.py").exists()


@pytest.mark.parametrize(
    "path",
    [".git/config", ".GIT/config", ".Git/config", ".git/hooks/pre-commit", "src/.git/config", ".git./config"],
)
def test_rejects_writes_into_git_metadata_in_any_case(repo: Path, path: str) -> None:
    spec = unvalidated_phase([path.rsplit("/", 1)[0]])
    reason = rejected(repo, [write(path, "[core]\n\thooksPath = /tmp/evil\n")], spec)
    assert f"{path}: inside .git" in reason


@pytest.mark.parametrize("path", ["\uff0egit/config", ".g\u200cit/config", "GIT~1/config"])
def test_rejects_unicode_and_filesystem_aliases_of_git_metadata(repo: Path, path: str) -> None:
    top = path.split("/")[0]
    assert "inside .git" in rejected(repo, [write(path)], phase(scope=[top]))


def test_rejects_write_through_a_symlinked_directory_pointing_outside(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.py").write_text("KEEP = 1\n")
    (repo / "src/link").symlink_to(outside, target_is_directory=True)
    reason = rejected(repo, [write("src/link/keep.py"), write("src/link/new.py")], None, outside)
    assert "src/link/keep.py: src/link is a symbolic link" in reason
    assert "src/link/new.py: src/link is a symbolic link" in reason


def test_rejects_write_to_a_symlinked_file(repo: Path) -> None:
    (repo / "src/readme.md").symlink_to("../README.md")
    reason = rejected(repo, [write("src/readme.md", "pwned\n")])
    assert "src/readme.md: src/readme.md is a symbolic link" in reason


def test_rejects_delete_of_a_symlink(repo: Path) -> None:
    (repo / "src/readme.md").symlink_to("../README.md")
    assert "symbolic link" in rejected(repo, [FileWrite("src/readme.md", None)])


def test_rejects_write_under_a_file_or_onto_a_directory(repo: Path) -> None:
    reason = rejected(repo, [write("src/calc.py/inner.py"), write("tests")], phase(scope=["src", "tests"]))
    assert "src/calc.py/inner.py: src/calc.py is not a directory" in reason
    assert "tests: tests exists and is not a regular file" in reason


# ------------------------------------------------------------------------------ governed: the phase


def test_rejects_path_outside_scope(repo: Path) -> None:
    reason = rejected(repo, [write("src/ok.py"), write("tools/evil.py")], phase(scope=["src"]))
    assert reason == "change rejected, nothing was written: tools/evil.py: outside scope ['src']"


def test_rejects_protected_path(repo: Path) -> None:
    spec = phase(scope=["src", "tests"], protected_paths=["tests/test_calc.py"])
    reason = rejected(repo, [write("src/ok.py"), write("tests/test_calc.py", "")], spec)
    assert "tests/test_calc.py: protected path (tests/test_calc.py)" in reason


def test_rejects_case_alias_of_a_protected_path(repo: Path) -> None:
    spec = phase(scope=["SRC", "src"], protected_paths=["src/calc.py"])
    reason = rejected(repo, [write("SRC/calc.py")], spec)
    assert "SRC/calc.py: aliases protected path src/calc.py" in reason


def test_rejects_nfkc_fullwidth_alias_of_a_protected_path(repo: Path) -> None:
    alias = "\uff53\uff52\uff43/calc.py"  # fullwidth "src"
    spec = phase(scope=["\uff53\uff52\uff43", "src"], protected_paths=["src/calc.py"])
    reason = rejected(repo, [write(alias)], spec)
    assert f"{alias}: aliases protected path src/calc.py" in reason


def test_rejects_decomposed_unicode_alias_of_a_protected_path(repo: Path) -> None:
    composed = unicodedata.normalize("NFC", "src/café.py")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    spec = phase(scope=["src"], protected_paths=[composed])
    assert "aliases protected path" in rejected(repo, [write(decomposed)], spec)


def test_rejects_new_file_differing_from_an_existing_one_only_by_case(repo: Path) -> None:
    reason = rejected(repo, [write("src/Calc.py")])
    assert "src/Calc.py: would alias existing src/calc.py" in reason


def test_rejects_two_writes_differing_only_by_case(repo: Path) -> None:
    assert "differ only by case" in rejected(repo, [write("src/a.py"), write("src/A.py")])


def test_rejects_deletions_over_the_limit(repo: Path) -> None:
    for i in range(3):
        (repo / f"src/m{i}.py").write_text("M = 1\n")
    deletions = [FileWrite(f"src/m{i}.py", None) for i in range(3)]
    reason = rejected(repo, deletions, None, max_deletions=2)
    assert "deletes 3 files, more than the limit of 2" in reason


def test_allows_deletions_over_the_limit_when_the_phase_allows_them(repo: Path) -> None:
    for i in range(3):
        (repo / f"src/m{i}.py").write_text("M = 1\n")
    deletions = [FileWrite(f"src/m{i}.py", None) for i in range(3)]
    result = apply(repo, deletions, max_deletions=2, allow_deletions=True)
    assert result.ok
    assert not list((repo / "src").glob("m*.py"))


def test_rejects_deleting_a_file_that_does_not_exist(repo: Path) -> None:
    assert "src/nope.py: does not exist" in rejected(repo, [FileWrite("src/nope.py", None)])


def test_one_bad_path_rejects_the_whole_change_and_lists_every_reason(repo: Path) -> None:
    writes = [write("src/calc.py", "A = 2\n"), write("src/new.py"), write(".git/config"), write("../x")]
    reason = rejected(repo, writes)
    assert ".git/config: inside .git" in reason
    assert "../x: contains '..'" in reason


# ---------------------------------------------------------------------------------------- rollback


def failing_fill(fail_on_call: int) -> Callable[[int, bytes], None]:
    """`_fill` that writes half the bytes then fails with ENOSPC on its n-th call, and works otherwise."""
    calls = {"n": 0}
    original = apply_mod._fill

    def fill(fd: int, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == fail_on_call:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(fd, data)

    return fill


def test_failed_write_restores_every_file_already_written(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apply_mod, "_fill", failing_fill(3))
    writes = [
        write("README.md", "changed\n"),
        write("src/pkg/new.py"),
        FileWrite("tests/test_calc.py", None),
        write("src/calc.py", "A = 3\n" * 100),
    ]
    before = snapshot(repo)
    result = apply(repo, writes)
    assert not result.ok
    assert result.reason is not None
    assert result.reason.startswith("writing src/calc.py failed: ENOSPC: No space left on device")
    assert "restored" in result.reason
    assert snapshot(repo) == before  # README back, new file and its dirs gone, deleted test back


def test_failed_write_keeps_the_restored_file_mode(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = repo / "src/run.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(apply_mod, "_fill", failing_fill(2))
    before = snapshot(repo)
    result = apply(repo, [write("src/run.sh", "#!/bin/sh\nexit 1\n"), write("src/calc.py", "")])
    assert not result.ok
    assert snapshot(repo) == before
