"""The context bench's yardsticks: which old lines a change targets, and how recall counts them."""

from __future__ import annotations

from tests.bench.context import changed_lines, recall
from workers.context import ContextSelection
from workers.context.excerpts import PartialFile, Region


def test_changed_lines_are_old_side_lines_and_insertion_anchors() -> None:
    old = "a\nb\nc\nd\n"
    assert changed_lines(old, "a\nB\nc\nd\n") == {2}  # replaced
    assert changed_lines(old, "a\nc\nd\n") == {2}  # deleted
    assert changed_lines(old, "a\nb\nnew\nc\nd\n") == {2}  # inserted after line 2
    assert changed_lines(old, "top\na\nb\nc\nd\n") == {1}  # inserted at the top: anchored on line 1
    assert changed_lines(old, old) == set()


def test_recall_counts_whole_files_fully_and_partial_files_by_their_excerpts() -> None:
    lines = [f"{i}\n" for i in range(1, 101)]
    partial = PartialFile("big.py", 1, lines, 300, None, regions=[Region("big.py", 1, 50, 52, None)])
    selection = ContextSelection(
        files=[("small.py", "x\ny\n")],
        kept=1,
        omitted=0,
        estimated_tokens_kept=0,
        estimated_tokens_omitted=0,
        omitted_paths=[],
        partial=[partial],
    )
    # big.py shows 47-55 (3 context lines each side): 50 and 55 are in, 56 and 10 are not.
    assert recall(selection, {"small.py": {1, 2}, "big.py": {10, 50, 55, 56}, "gone.py": {1}}) == (4, 7)
