"""A Markdown plan as phase items: headings or numbered items, their text, and the code spans they mention.

Which blocks are phases (the first rule that finds any wins):
1. headings that carry a number (`## 1. …`, `## Phase 2: …`, `### Step 3 - …`): every heading at that level;
2. the items of top-level numbered lists (`1.` / `1)`); nested lists stay inside their item;
3. the headings at the shallowest level below a lone `#` title.
Everything outside the phases is context: its code spans are reported, never used.

CommonMark parsing (markdown-it-py, already installed with rich) keeps what a line-based reader gets
wrong: `# lines` inside code fences are not headings, lazy continuation lines and nested lists belong to
their item, and code spans may span lines or use double backticks.
"""

from __future__ import annotations

import re
import textwrap
from bisect import bisect_right
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token

_NUMBERED_TITLE = re.compile(
    r"^\s*(?:(?:phase|step|part|stage|milestone)\s*)?\d+\s*[:.)\-\u2013\u2014]\s*"  # `1. x`, `Phase 2: x`
    r"|^\s*(?:phase|step|part|stage|milestone)\s+\d+\s*$",  # `Step 3`
    re.IGNORECASE,
)
_LIST_MARKER = re.compile(r"^\s*\d{1,9}[.)]\s?")
_NEWLINE = re.compile(r"\r\n?|\n")
_CONTEXT = 300
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


class PlanError(ValueError):
    """The plan has no phase; `line` (1-based) is where the reader looked."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class Mention:
    """A code span (`like/this.py`) with its 1-based line and the sentence around it."""

    text: str
    line: int
    sentence: str


@dataclass(frozen=True)
class PlanItem:
    """One phase of the plan: its title, where it starts, its full text, and what it mentions."""

    title: str
    line: int
    text: str
    mentions: tuple[Mention, ...]


@dataclass(frozen=True)
class Plan:
    title: str | None
    title_line: int | None
    items: tuple[PlanItem, ...]
    context_mentions: tuple[Mention, ...]
    """Code spans outside every phase (the introduction, a `## Context` section)."""


@dataclass(frozen=True)
class _Block:
    title: str
    start: int  # 0-based first line
    end: int  # 0-based line after the last
    head_end: int  # 0-based line after the title (a setext heading's title takes two)


def parse_plan(text: str) -> Plan:
    """The plan's phases by the rules above; `PlanError` naming a line when it has none."""
    text = text.replace("\x00", "\ufffd")  # as CommonMark does; a NUL never reaches a goal
    tokens = MarkdownIt("commonmark").parse(text)
    lines = _NEWLINE.split(text)  # as markdown-it counts lines (not str.splitlines, which splits more)
    headings = _headings(tokens)
    title = headings[0] if headings and headings[0].level == 1 and _count(headings, 1) == 1 else None
    rest = [h for h in headings if h is not title]
    blocks = _numbered_heading_blocks(rest, len(lines)) or _list_blocks(tokens)
    blocks = blocks or _heading_blocks(rest, len(lines))
    if not blocks:
        raise _no_phases(tokens, lines)
    mentions = _mentions(tokens)
    lines_of = [m.line for m in mentions]  # document order, so sorted
    items = tuple(_item(b, lines, mentions, lines_of) for b in blocks)
    inside = {m for item in items for m in item.mentions}
    return Plan(
        title=title.text if title else None,
        title_line=title.line + 1 if title else None,
        items=items,
        context_mentions=tuple(m for m in mentions if m not in inside),
    )


def clean_title(title: str) -> str:
    """The title without its numbering (`Phase 2: Add x` -> `Add x`)."""
    return _NUMBERED_TITLE.sub("", title).strip() or title.strip()


# --- phases ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Heading:
    level: int
    line: int  # 0-based
    end: int  # 0-based line after it
    text: str


def _headings(tokens: list[Token]) -> list[_Heading]:
    """Every top-level heading (not those inside lists or quotes)."""
    out = []
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.level == 0 and tok.map:
            out.append(_Heading(int(tok.tag[1]), tok.map[0], tok.map[1], tokens[i + 1].content.strip()))
    return out


def _count(headings: list[_Heading], level: int) -> int:
    return sum(1 for h in headings if h.level == level)


def _sections(headings: list[_Heading], level: int, n_lines: int) -> list[_Block]:
    """The sections of the headings at `level`: each ends at the next heading at that level or above."""
    blocks = []
    for i, head in enumerate(headings):
        if head.level != level:
            continue
        later = (headings[j] for j in range(i + 1, len(headings)))
        end = next((h.line for h in later if h.level <= level), n_lines)
        blocks.append(_Block(head.text, head.line, end, head.end))
    return blocks


def _numbered_heading_blocks(headings: list[_Heading], n_lines: int) -> list[_Block]:
    numbered = [h for h in headings if _NUMBERED_TITLE.match(h.text)]
    if not numbered:
        return []
    return _sections(headings, min(h.level for h in numbered), n_lines)


def _heading_blocks(headings: list[_Heading], n_lines: int) -> list[_Block]:
    if not headings:
        return []
    return _sections(headings, min(h.level for h in headings), n_lines)


def _list_blocks(tokens: list[Token]) -> list[_Block]:
    """The items of top-level numbered lists, titled by their first line."""
    blocks = []
    in_ordered = False
    for i, tok in enumerate(tokens):
        if tok.level == 0 and tok.type in ("ordered_list_open", "ordered_list_close"):
            in_ordered = tok.type == "ordered_list_open"
        elif in_ordered and tok.type == "list_item_open" and tok.level == 1 and tok.map:
            first = next((tokens[j] for j in range(i + 1, len(tokens)) if tokens[j].type == "inline"), None)
            title = first.content.split("\n", 1)[0].strip() if first else ""
            blocks.append(_Block(title, tok.map[0], tok.map[1], tok.map[0] + 1))
    return blocks


def _no_phases(tokens: list[Token], lines: list[str]) -> PlanError:
    """Where a reader should look: the first bulleted list, else the first line with text."""
    bullets = next((t for t in tokens if t.type == "bullet_list_open" and t.level == 0 and t.map), None)
    if bullets is not None and bullets.map:
        return PlanError(
            bullets.map[0] + 1,
            "no phases: a bulleted list is not a phase list; number its items (1. 2. ...) "
            "or make each phase a `##` heading",
        )
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        return PlanError(1, "no phases: the plan is empty")
    return PlanError(
        first + 1,
        "no phases: expected numbered items (1. 2. ...) or headings (## ...) below the title, one per phase",
    )


def _item(block: _Block, lines: list[str], mentions: list[Mention], lines_of: list[int]) -> PlanItem:
    """The item's text (its title line without the list marker or `#`s, then the rest, dedented) and the
    mentions on its lines (`lines_of`: each mention's line, sorted)."""
    first = lines[block.start] if block.start < len(lines) else ""
    head = _LIST_MARKER.sub("", first, count=1).strip().strip("#").strip()
    if block.head_end > block.start + 1:  # a setext heading: its text, not its underline
        head = block.title
    rest = textwrap.dedent("\n".join(lines[block.head_end : block.end])).strip()
    text = f"{head}\n\n{rest}" if rest else head
    inside = tuple(mentions[bisect_right(lines_of, block.start) : bisect_right(lines_of, block.end)])
    return PlanItem(title=block.title, line=block.start + 1, text=text, mentions=inside)


# --- code spans ------------------------------------------------------------------------------------


def _mentions(tokens: list[Token]) -> list[Mention]:
    """Every code span outside code blocks, in document order."""
    out: list[Mention] = []
    for tok in tokens:
        if tok.type == "inline" and tok.map and tok.children:
            out.extend(_inline_mentions(tok.children, tok.map[0]))
    return out


def _inline_mentions(children: list[Token], first_line: int) -> list[Mention]:
    text, spans = _flatten(children, first_line)
    if not spans:
        return []
    cuts = [(m.start(), m.end()) for m in _SENTENCE_END.finditer(text)]
    starts = [start for start, _ in cuts]
    return [Mention(content, line, _sentence_at(text, at, cuts, starts)) for at, content, line in spans]


def _flatten(children: list[Token], first_line: int) -> tuple[str, list[tuple[int, str, int]]]:
    """The paragraph's text (code spans kept in backticks) and each span's (offset, content, 1-based line)."""
    parts: list[str] = []
    spans = []
    line = first_line + 1
    size = 0
    for child in children:
        piece = ""
        if child.type == "code_inline":
            spans.append((size, child.content, line))
            piece = f"`{child.content}`"
        elif child.type in ("softbreak", "hardbreak"):
            line += 1
            piece = "\n"
        elif child.type == "text":
            piece = child.content
        parts.append(piece)
        size += len(piece)
    return "".join(parts), spans


def _sentence_at(text: str, offset: int, cuts: list[tuple[int, int]], starts: list[int]) -> str:
    """The sentence around `offset` (at most `_CONTEXT` characters either side), on one line."""
    k = bisect_right(starts, offset)
    begin = max(cuts[k - 1][1] if k else 0, offset - _CONTEXT)
    end = min(cuts[k][0] if k < len(cuts) else len(text), offset + _CONTEXT)
    return text[begin:end].replace("\n", " ").strip()
