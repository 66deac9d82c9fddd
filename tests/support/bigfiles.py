"""Generated large source files for context tests: many small definitions, one of them the target."""

from __future__ import annotations


def python_module(functions: int) -> str:
    """`compute_NNNN(x)` functions (~215 bytes each) inside a few classes and at top level."""
    parts = ['"""A generated module."""\n\nimport math\n']
    for i in range(functions):
        if i % 200 == 0:
            parts.append(f'\n\nclass Group{i // 200:02d}:\n    """Functions {i} and on."""\n')
        parts.append(
            f"\n    @staticmethod\n    def compute_{i:04d}(x: float) -> float:\n"
            f'        """Scale x by {i} and shift it."""\n'
            f"        scaled = x * {i}\n        shifted = scaled + math.sqrt({i})\n"
            f"        return round(shifted - math.sqrt({i}), 6)\n"
        )
    return "".join(parts)


def python_tests(functions: int) -> str:
    parts = ["from bigmod import *  # noqa: F403\n"]
    for i in range(functions):
        group = f"Group{i // 200:02d}"
        parts.append(
            f'\n\ndef test_compute_{i:04d}() -> None:\n    """compute_{i:04d} scales by {i}."""\n'
            f"    value = {group}.compute_{i:04d}(2.0)\n"
            f"    assert value == round(2.0 * {i}, 6), value\n    assert isinstance(value, float)\n"
        )
    return "".join(parts)


def go_file(functions: int) -> str:
    parts = ['package header\n\nimport "strings"\n\ntype Header struct {\n\tName string\n}\n']
    for i in range(functions):
        parts.append(
            f"\n// ParseHeader{i:04d} parses variant {i}.\nfunc ParseHeader{i:04d}(s string) Header {{\n"
            f'\tparts := strings.SplitN(s, ":", {i % 7 + 2})\n\treturn Header{{Name: parts[0]}}\n}}\n'
        )
    return "".join(parts)


def typescript_file(functions: int) -> str:
    parts = ["export interface Options {\n  depth: number;\n}\n"]
    for i in range(functions):
        parts.append(
            f"\nexport function renderWidget{i:04d}(opts: Options): string {{\n"
            f"  const depth = opts.depth + {i};\n  return `widget-{i}-${{depth}}`;\n}}\n"
        )
    return "".join(parts)
