"""Context selection on real files in temp worktrees: ranking, budget, and what is never read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shared.specs import PhaseSpec
from workers.context import HARD_CAP_BYTES, ContextSelection, estimate_tokens, select_context


def write(root: Path, rel: str, content: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def phase(goal: str = "", **fields: list[str]) -> PhaseSpec:
    fields.setdefault("scope", ["src"])
    return PhaseSpec(name="phase-one", goal=goal, **fields)


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    root = tmp_path / "wt"
    root.mkdir()
    return root


def paths(selection: ContextSelection) -> list[str]:
    return [path for path, _ in selection.files]


def test_groups_rank_deliverables_then_scope_then_read_only(worktree: Path) -> None:
    write(worktree, "src/a_helpers.py", "def helper():\n    return 1\n")
    write(worktree, "src/greet.py", "def greet():\n    pass\n")
    write(worktree, "docs/greeting.md", "greeting greet greeting greet: the greeting module\n")
    spec = phase(
        "Implement greeting in greet",
        deliverables=["src/greet.py", "src/missing.py"],
        read_only_context=["docs/greeting.md"],
    )
    selection = select_context(worktree, spec, budget_tokens=10_000)
    assert paths(selection) == ["src/greet.py", "src/a_helpers.py", "docs/greeting.md"]
    assert selection.kept == 3 and selection.omitted == 0


def test_a_file_in_several_groups_is_listed_once_in_its_first_group(worktree: Path) -> None:
    write(worktree, "src/app.py", "x = 1\n")
    write(worktree, "src/zz.py", "y = 2\n")
    spec = phase(scope=["src"], read_only_context=["src/zz.py"], deliverables=["src/zz.py"])
    assert paths(select_context(worktree, spec, 10_000)) == ["src/zz.py", "src/app.py"]


def test_lexical_relevance_orders_files_within_a_group_and_ties_break_by_path(worktree: Path) -> None:
    write(worktree, "src/billing/invoice_total.py", "def invoice_total(lines):\n    return sum(lines)\n")
    write(worktree, "src/billing/tax.py", "RATE = 0.2  # tax applied to an invoice\n")
    write(worktree, "src/zeta.py", "print('hello')\n")
    write(worktree, "src/alpha.py", "print('world')\n")
    spec = phase("Fix the rounding of invoiceTotal", scope=["src"])
    assert paths(select_context(worktree, spec, 10_000)) == [
        "src/billing/invoice_total.py",
        "src/billing/tax.py",
        "src/alpha.py",
        "src/zeta.py",
    ]


def test_phase_name_counts_as_query_too(worktree: Path) -> None:
    write(worktree, "src/aaa.py", "nothing here\n")
    write(worktree, "src/parser.py", "nothing here either\n")
    spec = PhaseSpec(name="fix-parser", goal="", scope=["src"])
    assert paths(select_context(worktree, spec, 10_000))[0] == "src/parser.py"


def test_budget_keeps_best_files_skips_misfits_and_records_omissions(worktree: Path) -> None:
    write(worktree, "src/cache.py", "cache " * 66 + "\n")  # 397 bytes -> 100 tokens
    write(worktree, "src/big_other.py", "x" * 240)  # 60 tokens
    write(worktree, "src/small.py", "y" * 16)  # 4 tokens
    spec = phase("cache", scope=["src"])
    selection = select_context(worktree, spec, budget_tokens=110)
    assert paths(selection) == ["src/cache.py", "src/small.py"]
    assert selection.kept == 2 and selection.omitted == 1
    assert selection.estimated_tokens_kept == 104
    assert selection.estimated_tokens_omitted == 60
    assert selection.omitted_paths == ["src/big_other.py"]
    summary = json.loads(json.dumps(selection.summary()))
    assert summary["omitted_paths"] == ["src/big_other.py"]
    assert summary["kept_paths"] == ["src/cache.py", "src/small.py"]
    assert summary["budget_tokens"] == 110 and summary["estimated_tokens_kept"] == 104
    assert "cache cache" not in json.dumps(summary)  # contents are never part of the summary


def test_budget_zero_keeps_nothing_not_even_empty_files(worktree: Path) -> None:
    write(worktree, "src/a.py", "a = 1\n")
    write(worktree, "src/empty.py", "")
    selection = select_context(worktree, phase(), budget_tokens=0)
    assert selection.files == [] and selection.kept == 0
    assert selection.omitted == 2 and selection.omitted_paths == ["src/a.py", "src/empty.py"]


def test_token_estimate_is_utf8_bytes_over_four_rounded_up() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("é") == 1  # 2 bytes


def test_binary_and_huge_files_are_skipped(worktree: Path) -> None:
    write(worktree, "src/ok.py", "ok = True\n")
    write(worktree, "src/image.png", b"\x89PNG\r\n\x1a\n\x00\x00binary")
    write(worktree, "src/huge.txt", "z" * (HARD_CAP_BYTES + 1))
    write(worktree, "src/latin1.txt", b"caf\xe9\n")  # not UTF-8, but text: kept with a replacement char
    selection = select_context(worktree, phase(), budget_tokens=1_000_000)
    assert paths(selection) == ["src/latin1.txt", "src/ok.py"]
    assert selection.skipped_paths == ["src/huge.txt", "src/image.png"]
    assert selection.omitted == 0


def test_git_directory_is_never_read(worktree: Path) -> None:
    write(worktree, ".git/config", "[core]\n")
    write(worktree, "sub/.git/HEAD", "ref: refs/heads/main\n")
    write(worktree, "sub/mod.py", "m = 1\n")
    selection = select_context(worktree, phase(scope=["."]), budget_tokens=10_000)
    assert paths(selection) == ["sub/mod.py"]


def test_symlinks_out_of_the_worktree_are_not_read(tmp_path: Path, worktree: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret.txt", "TOP SECRET\n")
    write(worktree, "src/real.py", "real = 1\n")
    write(worktree, "inner.txt", "inside the worktree\n")
    os.symlink(outside / "secret.txt", worktree / "src" / "leak.txt")
    os.symlink(outside, worktree / "src" / "leakdir")
    os.symlink(outside, worktree / "linked")
    os.symlink(worktree / "inner.txt", worktree / "src" / "inner_link.txt")
    spec = phase(scope=["src", "src/leak.txt", "linked", "linked/secret.txt"])
    selection = select_context(worktree, spec, budget_tokens=10_000)
    assert all("TOP SECRET" not in text for _, text in selection.files)
    assert paths(selection) == ["src/inner_link.txt", "src/real.py"]
