"""A file's structure - classes, functions, methods, types with their line ranges - from a real parser.

Parser: tree-sitter (`tree-sitter` >= 0.24) with the tree-sitter organisation's own per-language grammar
wheels (`tree-sitter-python`, `-javascript`, `-typescript`, `-go`, `-rust`, `-java`). They are maintained
upstream with the grammars themselves and ship the compiled grammar inside the wheel. The alternatives
were rejected: `tree-sitter-languages` is unmaintained since early 2024 and pinned to an old tree-sitter;
`tree-sitter-language-pack` 1.x downloads each parser from a release server at first use, which a worker
without that network (or a sandboxed CI) cannot do and which would make an outline depend on the network.
Python's own `ast` is the fallback for Python files should the tree-sitter wheels be missing.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

Grammar = Callable[[], Any]


@dataclass(frozen=True)
class Symbol:
    """One definition: `start`/`end` are 1-based inclusive lines; `depth` 0 is top level."""

    kind: str
    name: str
    start: int
    end: int
    depth: int


DEFINITIONS: dict[str, dict[str, str]] = {
    "python": {"function_definition": "def", "class_definition": "class"},
    "javascript": {
        "function_declaration": "function",
        "generator_function_declaration": "function",
        "class_declaration": "class",
        "method_definition": "method",
    },
    "go": {
        "function_declaration": "func",
        "method_declaration": "method",
        "type_spec": "type",
    },
    "rust": {
        "function_item": "fn",
        "impl_item": "impl",
        "struct_item": "struct",
        "enum_item": "enum",
        "trait_item": "trait",
        "mod_item": "mod",
    },
    "java": {
        "class_declaration": "class",
        "interface_declaration": "interface",
        "enum_declaration": "enum",
        "record_declaration": "record",
        "method_declaration": "method",
        "constructor_declaration": "constructor",
    },
}
DEFINITIONS["typescript"] = DEFINITIONS["javascript"] | {
    "interface_declaration": "interface",
    "type_alias_declaration": "type",
    "enum_declaration": "enum",
    "abstract_class_declaration": "class",
}
DEFINITIONS["tsx"] = DEFINITIONS["typescript"]

LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".go": "go",
    ".rs": "rust",
    ".java": "java",
}


def language_of(path: str) -> str | None:
    dot = path.rfind(".")
    return LANGUAGES.get(path[dot:].lower()) if dot >= 0 else None


def outline(path: str, text: str) -> list[Symbol] | None:
    """The file's definitions in line order, or None when no parser knows its language."""
    language = language_of(path)
    if language is None:
        return None
    parser = _parser(language)
    if parser is not None:
        return _tree_sitter_outline(parser, language, text)
    return _ast_outline(text) if language == "python" else None


@cache
def _parser(language: str) -> Any:
    """A tree-sitter parser for `language`, or None if its grammar wheel is not installed."""
    try:
        import tree_sitter
    except ImportError:
        return None
    grammar = _grammar(language)
    return None if grammar is None else tree_sitter.Parser(tree_sitter.Language(grammar()))


def _grammar(language: str) -> Grammar | None:
    try:
        if language == "python":
            import tree_sitter_python as python

            return python.language
        if language == "javascript":
            import tree_sitter_javascript as javascript

            return javascript.language
        if language in ("typescript", "tsx"):
            import tree_sitter_typescript as typescript

            return typescript.language_tsx if language == "tsx" else typescript.language_typescript
        if language == "go":
            import tree_sitter_go as go

            return go.language
        if language == "rust":
            import tree_sitter_rust as rust

            return rust.language
        if language == "java":
            import tree_sitter_java as java

            return java.language
    except ImportError:
        return None
    return None


def _tree_sitter_outline(parser: Any, language: str, text: str) -> list[Symbol]:
    kinds = DEFINITIONS[language]
    tree = parser.parse(text.encode("utf-8"))
    symbols: list[Symbol] = []
    stack: list[tuple[Any, int, Any]] = [(tree.root_node, 0, None)]
    while stack:  # iterative: deeply nested sources must not hit Python's recursion limit
        node, depth, outer = stack.pop()
        kind = kinds.get(node.type)
        child_depth = depth
        if kind is not None:
            # A decorated definition starts at its first decorator: a diff's hunk must include it.
            start_node = outer if outer is not None else node
            name = _name_of(node)
            symbols.append(Symbol(kind, name, start_node.start_point[0] + 1, node.end_point[0] + 1, depth))
            child_depth = depth + 1
        decorated = node if node.type == "decorated_definition" else None
        stack.extend((child, child_depth, decorated) for child in reversed(node.named_children))
    return sorted(symbols, key=lambda s: (s.start, s.depth))


def _name_of(node: Any) -> str:
    for field in ("name", "type"):  # Rust's `impl Foo` names its type, not itself
        child = node.child_by_field_name(field)
        if child is not None and child.text is not None:
            return str(child.text.decode("utf-8", errors="replace"))
    return "?"


def _ast_outline(text: str) -> list[Symbol] | None:
    try:
        module = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    symbols: list[Symbol] = []
    todo: list[tuple[ast.AST, int]] = [(child, 0) for child in ast.iter_child_nodes(module)]
    while todo:
        node, depth = todo.pop()
        child_depth = depth
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            symbols.append(Symbol(kind, node.name, start, node.end_lineno or node.lineno, depth))
            child_depth = depth + 1
        todo.extend((child, child_depth) for child in ast.iter_child_nodes(node))
    return sorted(symbols, key=lambda s: (s.start, s.depth))
