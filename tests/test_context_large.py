"""Large files in scope: outline + excerpts from tree-sitter, one budget across files, nothing absent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from api.sample_repo import make_sample_repo
from shared.specs import PhaseSpec
from tests import test_llm_pipeline as pipeline
from tests.support.bigfiles import go_file, python_module, python_tests, typescript_file
from tests.support.simulator import JsonObject, Scripted
from tests.test_llm_pipeline import Harness
from workers.context import ContextSelection, select_context
from workers.context.outline import _ast_outline, outline
from workers.llm.prompts import builder_prompt

TARGET = 1234
llm_settings, harness = pipeline.llm_settings, pipeline.harness  # the pipeline tests' fixtures, by name


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def prompt_of(selection: ContextSelection, spec: PhaseSpec) -> str:
    return builder_prompt(spec, selection, attempt=1, previous_failure=None, advice=None)[1][0]["content"]


def excerpts(prompt: str, path: str) -> dict[tuple[int, int], str]:
    """Excerpt (first, last line) -> its exact text, parsed from the prompt as a model would."""
    pattern = re.compile(
        rf"Excerpt, lines (\d+)-(\d+) of {re.escape(path)} \(exact text\):\n(`{{3,}})\n(.*?)\3", re.S
    )
    return {(int(m[1]), int(m[2])): m[4] for m in pattern.finditer(prompt)}


@pytest.fixture
def big_repo(tmp_path: Path) -> Path:
    write(tmp_path, "src/bigmod.py", python_module(1400))
    write(tmp_path, "tests/test_bigmod.py", python_tests(1400))
    write(tmp_path, "src/util.py", "def helper() -> int:\n    return 1\n")
    return tmp_path


def test_generated_files_are_as_large_as_the_issue_says(big_repo: Path) -> None:
    assert (big_repo / "src/bigmod.py").stat().st_size > 300_000
    assert (big_repo / "tests/test_bigmod.py").stat().st_size > 250_000


def test_a_function_named_deep_inside_a_300kb_module_is_excerpted_with_true_line_numbers(
    big_repo: Path,
) -> None:
    spec = PhaseSpec(
        name="fix", goal=f"Fix compute_{TARGET} so that it rounds to 3 places", scope=["src/", "tests/"]
    )
    selection = select_context(big_repo, spec, 20_000)
    prompt = prompt_of(selection, spec)
    assert [p.path for p in selection.partial] == ["src/bigmod.py", "tests/test_bigmod.py"]
    assert "- src/util.py (34 bytes): left out to fit the context budget" in prompt  # irrelevant, yet named
    assert (
        "### src/bigmod.py (outline + excerpts:" in prompt
        and "### tests/test_bigmod.py (outline + excerpts:" in prompt
    )
    source = (big_repo / "src/bigmod.py").read_text().splitlines(keepends=True)
    line = next(i for i, text in enumerate(source, 1) if f"def compute_{TARGET}(" in text)
    assert "class Group06  L" in prompt  # the outline shows the structure around it
    shown = excerpts(prompt, "src/bigmod.py")
    (span,) = [s for s in shown if s[0] <= line <= s[1]]
    assert shown[span] == "".join(source[span[0] - 1 : span[1]])  # exact text at the stated lines
    assert span[0] <= line - 1 - 3  # the decorator and context lines come with it
    tests_shown = excerpts(prompt, "tests/test_bigmod.py")
    assert any(f"def test_compute_{TARGET}()" in text for text in tests_shown.values())
    assert selection.estimated_tokens_kept <= 20_000
    assert selection.excerpted_bytes > 0 and selection.omitted_bytes > 450_000


def test_a_failing_tests_name_points_at_the_code_it_tests(big_repo: Path) -> None:
    spec = PhaseSpec(name="fix", goal="Make the suite pass", scope=["src/"])
    failure = "FAILED tests/test_bigmod.py::test_compute_0777 - assert 1.5 == 1554.0"
    selection = select_context(big_repo, spec, 8_000, hints=failure)
    (partial,) = selection.partial
    assert any(r.symbol == "compute_0777" for r in partial.regions)


@pytest.mark.parametrize(
    ("path", "text", "name", "kind"),
    [
        ("pkg/header.go", go_file(1500), "ParseHeader1234", "func"),
        ("web/widgets.ts", typescript_file(1500), "renderWidget1234", "function"),
    ],
)
def test_go_and_typescript_files_are_outlined_by_tree_sitter(
    tmp_path: Path, path: str, text: str, name: str, kind: str
) -> None:
    write(tmp_path, path, text)
    spec = PhaseSpec(name="fix", goal=f"{name} must trim spaces", scope=[path])
    selection = select_context(tmp_path, spec, 8_000)
    prompt = prompt_of(selection, spec)
    line = text[: text.index(f"{kind} {name}(")].count("\n") + 1
    assert re.search(rf"{kind} {name}  L{line}-{line + 3}\n", prompt) or re.search(
        rf"{kind} {name}  L{line - 1}-", prompt
    ), "the outline names the definition with its line range"
    assert any(s <= line <= e and f"{name}(" in t for (s, e), t in excerpts(prompt, path).items())


def test_python_outline_from_tree_sitter_matches_the_ast_fallback() -> None:
    text = python_module(30)
    assert outline("m.py", text) == _ast_outline(text)


def test_one_budget_across_three_large_files_the_most_relevant_regions_win(tmp_path: Path) -> None:
    write(tmp_path, "src/a.py", python_module(400))
    write(tmp_path, "src/b.go", go_file(600))
    write(tmp_path, "src/c.ts", typescript_file(600))
    write(tmp_path, "src/notes.bin", "\x00binary")
    spec = PhaseSpec(
        name="fix", goal="renderWidget0321 and ParseHeader0555 must agree on depth", scope=["src/"]
    )
    selection = select_context(tmp_path, spec, 6_000)
    prompt = prompt_of(selection, spec)
    by_path = {p.path: p for p in selection.partial}
    assert set(by_path) == {"src/a.py", "src/b.go", "src/c.ts"}
    assert {r.symbol for r in by_path["src/c.ts"].regions} >= {"renderWidget0321"}
    assert {r.symbol for r in by_path["src/b.go"].regions} >= {"ParseHeader0555"}
    named = [
        r for p in selection.partial for r in p.regions if r.symbol in {"renderWidget0321", "ParseHeader0555"}
    ]
    assert len(named) == 2
    for path in ("src/a.py", "src/b.go", "src/c.ts", "src/notes.bin"):
        assert path in prompt  # every file is named, whatever its form
    assert "- src/notes.bin (7 bytes): binary" in prompt
    assert selection.estimated_tokens_kept <= 6_000


# ------------------------------------------------------------------- end to end: a diff from the excerpt

CHECK = (
    "python -c \"import sys; sys.path.insert(0, 'src'); import bigmod; "
    f"assert bigmod.Group06.compute_{TARGET}(2.0) == {2 * TARGET + 1}.0, 'not changed'\""
)


def diff_from_prompt(body: JsonObject) -> Scripted:
    """A model that sees only the prompt: it writes a hunk against the excerpt's text and line numbers."""
    prompt = body["messages"][0]["content"]
    for (start, _), text in excerpts(prompt, "src/bigmod.py").items():
        lines = text.splitlines()
        if not any(f"def compute_{TARGET}(" in line for line in lines):
            continue
        at = next(i for i, line in enumerate(lines) if f"def compute_{TARGET}(" in line)
        j = next(i for i in range(at, len(lines)) if "return round(" in lines[i])
        before, after = lines[j - 3 : j], lines[j + 1 : j + 4]
        hunk = [f" {line}" for line in before] + [f"-{lines[j]}", f"+{lines[j]} + 1"]
        hunk += [f" {line}" for line in after]
        first = start + j - 3
        header = f"@@ -{first},{len(before) + 1 + len(after)} +{first},{len(before) + 1 + len(after)} @@"
        diff = "\n".join(["--- a/src/bigmod.py", "+++ b/src/bigmod.py", header, *hunk])
        return Scripted(text=f"```diff\n{diff}\n```\n")
    return Scripted(text="the function was not in the prompt")


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    """The harness's repository, with the two generated large files in it."""
    extra = {"src/bigmod.py": python_module(1400), "tests/test_bigmod.py": python_tests(1400)}
    return make_sample_repo(tmp_path / "origin", extra)


@pytest.mark.parametrize("harness", [diff_from_prompt], indirect=True)
def test_a_diff_written_from_the_excerpt_applies_and_validates(harness: Harness) -> None:
    goal = f"compute_{TARGET} must return one more than it does"
    run = harness.run({"goal": goal, "scope": ["src/", "tests/"], "validation": [CHECK]}, doctor=False)
    assert run["state"] == "DONE_SUCCESS", run["phases"][0]["attempt_log"]
    (attempt,) = run["phases"][0]["attempt_log"]
    assert attempt["changed_paths"] == ["src/bigmod.py"]
    (row,) = harness.rows("SELECT tokens_avoided_context FROM efficiency_metrics")
    assert row.tokens_avoided_context > 100_000  # most of 550 KB stayed out of the prompt
