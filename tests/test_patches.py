"""Parsing Builder answers (diffs, whole-file blocks) and resolving them on real git repositories."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from api.sample_repo import make_sample_repo
from shared.errors import AutopackError
from shared.specs import PhaseSpec
from workers.apply import apply_writes
from workers.change import PatchParseError, parse_change, resolve

EVERYWHERE = PhaseSpec(
    name="all",
    scope=["src", "tests", "docs", "README.md", "pytest.ini", "tools", ".gitignore"],
    command="true",
)
CALC = "def add(a: int, b: int) -> int:\n    return a + b\n"
# Deterministic `git diff` whatever the user's configuration says.
DIFF_CONFIG = [
    "-c",
    "core.quotepath=true",
    "-c",
    "diff.noprefix=false",
    "-c",
    "diff.mnemonicprefix=false",
    "-c",
    "core.autocrlf=false",
]


def sh_git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    return done.stdout.decode("utf-8", "surrogateescape")


def commit_all(repo: Path) -> None:
    sh_git(repo, "add", "--all")
    sh_git(
        repo,
        "-c",
        "user.name=T",
        "-c",
        "user.email=t@localhost",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "setup",
    )


def files(root: Path) -> dict[str, bytes]:
    """Every file's bytes outside .git, keyed by repo-relative path."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            path = Path(dirpath) / name
            out[path.relative_to(root).as_posix()] = path.read_bytes()
    return out


def capture_diff(repo: Path, *diff_args: str) -> str:
    """Stage the working tree's changes, return `git diff --cached`, and put the repo back to HEAD."""
    sh_git(repo, "add", "--all")
    diff = sh_git(repo, *DIFF_CONFIG, "diff", "--cached", "--no-color", "--no-ext-diff", *diff_args)
    sh_git(repo, "reset", "--quiet", "--hard", "HEAD")
    sh_git(repo, "clean", "-fdq")
    return diff


def apply_answer(repo: Path, answer: str) -> list[str]:
    result = apply_writes(
        repo, resolve(parse_change(answer), repo), EVERYWHERE, max_deletions=5, allow_deletions=False
    )
    assert result.ok, result.reason
    return result.changed_paths


def assert_round_trip(repo: Path, *diff_args: str) -> str:
    """The working tree's change, as `git diff` prints it, parsed and applied, gives the same bytes."""
    expected = files(repo)
    diff = capture_diff(repo, *diff_args)
    assert files(repo) != expected
    apply_answer(repo, diff)
    assert files(repo) == expected
    return diff


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_sample_repo(tmp_path / "repo")


def reason_of(answer: str, repo: Path | None = None) -> str:
    with pytest.raises(PatchParseError) as caught:
        change = parse_change(answer)
        if repo is not None:
            resolve(change, repo)
    assert isinstance(caught.value, AutopackError)
    return caught.value.reason


# ------------------------------------------------------------------------------- git diff round trips


def test_git_diff_of_a_modified_file_round_trips(repo: Path) -> None:
    (repo / "src/calc.py").write_text(CALC.replace("a + b", "b + a") + "\n\ndef neg(a: int) -> int:\n")
    diff = assert_round_trip(repo)
    assert "--- a/src/calc.py" in diff


def test_git_diff_of_several_files_round_trips(repo: Path) -> None:
    (repo / "src/calc.py").write_text(CALC + "\n\ndef sub(a: int, b: int) -> int:\n    return a - b\n")
    (repo / "README.md").write_text("# sample\n\nA calculator.\n\nNow with sub().\n")
    (repo / "tests/test_calc.py").write_text("from calc import add\n")
    assert_round_trip(repo)


def test_git_diff_with_several_hunks_in_one_file_round_trips(repo: Path) -> None:
    numbers = "".join(f"N{i} = {i}\n" for i in range(60))
    (repo / "src/numbers.py").write_text(numbers)
    commit_all(repo)
    changed = numbers.replace("N3 = 3\n", "N3 = 'three'\n").replace("N50 = 50\n", "")
    (repo / "src/numbers.py").write_text(changed + "N60 = 60\n")
    diff = assert_round_trip(repo)
    assert diff.count("\n@@ ") == 3


def test_git_diff_creating_a_file_from_dev_null_round_trips(repo: Path) -> None:
    (repo / "src/greet.py").write_text('def greet(name: str) -> str:\n    return "Hi " + name\n')
    (repo / "src/empty.py").write_text("")
    diff = assert_round_trip(repo)
    assert "--- /dev/null" in diff
    assert "new file mode" in diff


def test_git_diff_deleting_a_file_round_trips(repo: Path) -> None:
    (repo / "tests/test_calc.py").unlink()
    diff = assert_round_trip(repo)
    assert "+++ /dev/null" in diff
    assert not (repo / "tests/test_calc.py").exists()


def test_git_diff_of_a_rename_with_changes_round_trips(repo: Path) -> None:
    (repo / "src/calc.py").rename(repo / "src/arith.py")
    (repo / "src/arith.py").write_text(CALC + "\n\nZERO = 0\n")
    diff = assert_round_trip(repo, "-M")
    assert "rename from src/calc.py" in diff


def test_git_diff_of_a_crlf_file_round_trips(repo: Path) -> None:
    (repo / "src/win.py").write_bytes(b"A = 1\r\nB = 2\r\nC = 3\r\n")
    commit_all(repo)
    (repo / "src/win.py").write_bytes(b"A = 1\r\nB = 'two'\r\nC = 3\r\nD = 4\r\n")
    assert_round_trip(repo)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("A = 1\nB = 2", "A = 1\nB = 3"),
        ("A = 1\nB = 2", "A = 1\nB = 2\n"),
        ("A = 1\nB = 2\n", "A = 1\nB = 2"),
        ("A = 1\nB = 2", "A = 1\nB = 2\nC = 3"),
    ],
    ids=["change-last-line", "add-final-newline", "drop-final-newline", "append-without-newline"],
)
def test_git_diff_with_no_newline_at_end_of_file_round_trips(repo: Path, before: str, after: str) -> None:
    (repo / "src/tail.py").write_text(before)
    commit_all(repo)
    (repo / "src/tail.py").write_text(after)
    diff = assert_round_trip(repo)
    assert "\\ No newline at end of file" in diff


def test_git_diff_of_quoted_non_ascii_and_spaced_paths_round_trips(repo: Path) -> None:
    (repo / "docs").mkdir()
    (repo / "docs/café.md").write_text("# café\n")
    (repo / "docs/my notes.md").write_text("notes\n")
    commit_all(repo)
    (repo / "docs/café.md").write_text("# café au lait\n")
    (repo / "docs/my notes.md").write_text("more notes\n")
    diff = assert_round_trip(repo)
    assert '"a/docs/caf\\303\\251.md"' in diff


def random_edit(rng: random.Random, lines: list[str]) -> list[str]:
    out = list(lines)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(out))
        what = rng.choice(["insert", "delete", "replace"])
        if what == "insert" or not out[at:]:
            out[at:at] = [f"new {rng.randint(0, 9)}" for _ in range(rng.randint(1, 3))]
        elif what == "delete":
            del out[at : at + rng.randint(1, 3)]
        else:
            out[at] = f"changed {rng.randint(0, 9)}"
    return out


@pytest.mark.parametrize("context", ["-U0", "-U1", "-U3"])
def test_git_diff_of_random_edits_to_repetitive_files_round_trips(repo: Path, context: str) -> None:
    rng = random.Random(f"seed-{context}")
    target = repo / "src/data.txt"
    for _ in range(15):
        eol = rng.choice(["\n", "\r\n"])
        lines = [rng.choice(["same", "pass", "", "x = 1", "}"]) for _ in range(rng.randint(0, 30))]
        final = eol if rng.random() < 0.8 else ""
        target.write_text(eol.join(lines) + (final if lines else ""), newline="")
        commit_all(repo)
        edited = random_edit(rng, lines)
        final = eol if rng.random() < 0.8 else ""
        target.write_text(eol.join(edited) + (final if edited else ""), newline="")
        if sh_git(repo, "status", "--porcelain"):
            assert_round_trip(repo, context)


# ------------------------------------------------------------------------------------ answer shapes


def test_fenced_diff_with_prose_around_it_applies(repo: Path) -> None:
    answer = (
        "Here is the change you asked for:\n\n"
        "```diff\n"
        "--- a/src/calc.py\n"
        "+++ b/src/calc.py\n"
        "@@ -1,2 +1,2 @@\n"
        " def add(a: int, b: int) -> int:\n"
        "-    return a + b\n"
        "+    return b + a\n"
        "```\n\n"
        "This swaps the operands.\n"
    )
    assert apply_answer(repo, answer) == ["src/calc.py"]
    assert (repo / "src/calc.py").read_text() == CALC.replace("a + b", "b + a")


def test_hand_written_diff_without_git_header_and_with_blank_context_line_applies(repo: Path) -> None:
    (repo / "src/calc.py").write_text(CALC + "\n\nX = 1\n")
    commit_all(repo)
    answer = "--- a/src/calc.py\n+++ b/src/calc.py\n@@ -2,4 +2,4 @@\n     return a + b\n\n\n-X = 1\n+X = 2\n"
    apply_answer(repo, answer)
    assert (repo / "src/calc.py").read_text() == CALC + "\n\nX = 2\n"


def test_diff_applies_at_an_offset_when_the_header_line_numbers_are_off(repo: Path) -> None:
    answer = (
        "--- a/src/calc.py\n+++ b/src/calc.py\n@@ -40,2 +40,3 @@\n"
        " def add(a: int, b: int) -> int:\n     return a + b\n+# end\n"
    )
    apply_answer(repo, answer)
    assert (repo / "src/calc.py").read_text() == CALC + "# end\n"


def test_lf_diff_on_a_crlf_file_keeps_crlf_line_ends(repo: Path) -> None:
    (repo / "src/win.py").write_bytes(b"A = 1\r\nB = 2\r\n")
    commit_all(repo)
    answer = "--- a/src/win.py\n+++ b/src/win.py\n@@ -1,2 +1,3 @@\n A = 1\n-B = 2\n+B = 3\n+C = 4\n"
    apply_answer(repo, answer)
    assert (repo / "src/win.py").read_bytes() == b"A = 1\r\nB = 3\r\nC = 4\r\n"


def test_answer_sent_with_crlf_line_ends_is_read_as_lf(repo: Path) -> None:
    answer = "--- a/src/calc.py\n+++ b/src/calc.py\n@@ -2 +2 @@\n-    return a + b\n+    return a+b\n"
    apply_answer(repo, answer.replace("\n", "\r\n"))
    assert (repo / "src/calc.py").read_bytes() == CALC.replace("a + b", "a+b").encode()


def test_whole_file_blocks_write_new_and_existing_files_and_delete(repo: Path) -> None:
    answer = (
        "I rewrote calc and added greet.\n"
        "<<<FILE src/calc.py\n"
        "def add(a: int, b: int) -> int:\n"
        "    return b + a\n"
        "FILE>>>\n"
        "\n"
        "<<<FILE src/pkg/greet.py\n"
        "GREETING = 'hi'\n"
        "FILE>>>\n"
        "<<<DELETE tests/test_calc.py>>>\n"
    )
    change = parse_change(answer)
    assert [(edit.path, edit.kind) for edit in change] == [
        ("src/calc.py", "write"),
        ("src/pkg/greet.py", "write"),
        ("tests/test_calc.py", "delete"),
    ]
    assert apply_answer(repo, answer) == ["src/calc.py", "src/pkg/greet.py", "tests/test_calc.py"]
    assert (repo / "src/calc.py").read_text() == CALC.replace("a + b", "b + a")
    assert (repo / "src/pkg/greet.py").read_text() == "GREETING = 'hi'\n"
    assert not (repo / "tests/test_calc.py").exists()


def test_whole_file_block_content_is_verbatim_even_when_it_looks_like_a_diff() -> None:
    body = "```python\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n\n  indented\r\n"
    (edit,) = parse_change(f"<<<FILE docs/odd.md\n{body}FILE>>>\n")
    assert edit.content == body


def test_empty_whole_file_block_writes_an_empty_file() -> None:
    (edit,) = parse_change("<<<FILE src/__init__.py\nFILE>>>")
    assert edit.content == ""


def test_diff_and_blocks_can_be_mixed_in_one_answer(repo: Path) -> None:
    answer = (
        "<<<FILE src/new.py\nNEW = 1\nFILE>>>\n"
        "```diff\n--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-# sample\n+# Sample\n```\n"
    )
    assert apply_answer(repo, answer) == ["README.md", "src/new.py"]


# ---------------------------------------------------------------------------------------- failures


def test_prose_only_answer_is_rejected_with_a_reason() -> None:
    reason = reason_of("I think the function is fine as it is.\nNo change needed.")
    assert "no change found" in reason
    assert "'I think the function is fine as it is.'" in reason


def test_empty_answer_is_rejected() -> None:
    assert "empty" in reason_of("  \n\n")


def test_truncated_whole_file_block_is_rejected_as_truncated() -> None:
    reason = reason_of("<<<FILE src/calc.py\ndef add(a: int, b: int) -> int:\n    return")
    assert reason.startswith("whole-file block for src/calc.py (line 1) is truncated")
    assert "FILE>>>" in reason


def test_block_not_closed_before_the_next_block_is_rejected_as_truncated() -> None:
    reason = reason_of("<<<FILE a.py\nA = 1\n<<<FILE b.py\nB = 1\nFILE>>>\n")
    assert "a.py (line 1) is truncated" in reason
    assert "line 3" in reason


def test_block_whose_content_is_wrapped_in_a_code_fence_is_rejected() -> None:
    reason = reason_of("<<<FILE src/x.py\n```python\nX = 1\n```\nFILE>>>\n")
    assert "whole-file block for src/x.py (line 1) wraps its content in a ``` code fence" in reason


def test_block_opened_with_closing_brackets_is_rejected() -> None:
    assert "must not end with '>>>'" in reason_of("<<<FILE src/x.py>>>\nX = 1\nFILE>>>\n")


def test_hunk_that_does_not_apply_names_file_hunk_line_and_both_texts(repo: Path) -> None:
    answer = (
        "--- a/src/calc.py\n+++ b/src/calc.py\n"
        "@@ -1,1 +1,2 @@\n def add(a: int, b: int) -> int:\n+    '''Add.'''\n"
        "@@ -2,1 +3,1 @@\n-    return a - b\n+    return b - a\n"
    )
    before = files(repo)
    reason = reason_of(answer, repo)
    assert reason.startswith("hunk 2 of src/calc.py does not apply at line 2:")
    assert "expected '    return a - b', found '    return a + b'" in reason
    assert files(repo) == before


def test_hunk_whose_body_is_shorter_than_its_header_counts_is_rejected() -> None:
    answer = "```diff\n--- a/src/calc.py\n+++ b/src/calc.py\n@@ -1,3 +1,3 @@\n-x\n+y\n```\n"
    reason = reason_of(answer)
    assert "hunk 1 of src/calc.py does not match its header '@@ -1,3 +1,3 @@'" in reason
    assert "2 old and 2 new lines were still due at line 7 '```'" in reason


def test_truncated_diff_is_rejected() -> None:
    reason = reason_of("--- a/src/calc.py\n+++ b/src/calc.py\n@@ -1,3 +1,3 @@\n def add(\n")
    assert "still due at the end of the answer" in reason


def test_hunk_with_more_lines_than_its_header_counts_is_rejected() -> None:
    reason = reason_of("--- a/src/calc.py\n+++ b/src/calc.py\n@@ -1 +1 @@\n-x\n+y\n+z\n")
    assert "hunk 1 of src/calc.py has more lines than its header says (line 6 '+z'" in reason


def test_hunk_header_without_line_numbers_is_rejected() -> None:
    reason = reason_of("--- a/src/calc.py\n+++ b/src/calc.py\n@@\n-x\n+y\n")
    assert "hunk 1 of src/calc.py has a malformed header '@@'" in reason


def test_hunk_without_file_header_is_rejected() -> None:
    assert "has no '--- a/path' and '+++ b/path'" in reason_of("@@ -1 +1 @@\n-x\n+y\n")


def test_diff_of_a_missing_file_is_rejected(repo: Path) -> None:
    reason = reason_of("--- a/src/nope.py\n+++ b/src/nope.py\n@@ -1 +1 @@\n-x\n+y\n", repo)
    assert reason.startswith("src/nope.py does not exist")


def test_diff_creating_a_file_that_exists_is_rejected(repo: Path) -> None:
    reason = reason_of("--- /dev/null\n+++ b/src/calc.py\n@@ -0,0 +1 @@\n+X = 1\n", repo)
    assert reason.startswith("src/calc.py already exists")


def test_deletion_diff_that_does_not_remove_the_whole_file_is_rejected(repo: Path) -> None:
    answer = "--- a/src/calc.py\n+++ /dev/null\n@@ -1,1 +0,0 @@\n-def add(a: int, b: int) -> int:\n"
    assert "1 lines would remain" in reason_of(answer, repo)


def test_same_file_changed_twice_is_rejected() -> None:
    answer = "<<<FILE src/a.py\nA = 1\nFILE>>>\n<<<DELETE src/a.py>>>\n"
    assert reason_of(answer) == (
        "src/a.py is changed twice (at lines 1 and 4 of the answer); give each file one diff or one block"
    )


def test_binary_diff_is_rejected() -> None:
    answer = (
        "diff --git a/logo.png b/logo.png\nindex 1..2 100644\nBinary files a/logo.png and b/logo.png differ\n"
    )
    assert "binary diffs are not supported" in reason_of(answer)


def test_diff_naming_two_files_without_rename_lines_is_rejected() -> None:
    reason = reason_of("--- a/src/a.py\n+++ b/src/b.py\n@@ -1 +1 @@\n-x\n+y\n")
    assert "names two files (src/a.py and src/b.py)" in reason


def test_resolve_never_reads_through_a_symlink(repo: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOKEN=hunter2\n")
    (repo / "src/leak.py").symlink_to(secret)
    reason = reason_of("--- a/src/leak.py\n+++ b/src/leak.py\n@@ -1 +1 @@\n-x\n+y\n", repo)
    assert "symbolic link" in reason
    assert "hunter2" not in reason


def test_resolve_refuses_paths_leaving_the_worktree(repo: Path) -> None:
    reason = reason_of("--- a/../outside.py\n+++ b/../outside.py\n@@ -1 +1 @@\n-x\n+y\n", repo)
    assert reason.startswith("../outside.py: contains '..'")
