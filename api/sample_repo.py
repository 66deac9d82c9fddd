"""A small, real Python repository with its own pytest suite and codemods, for the demo and the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.git import git

FILES = {
    "README.md": "# sample\n\nA tiny calculator that Autopack phases extend.\n",
    "pytest.ini": "[pytest]\npythonpath = src\naddopts = -p no:cacheprovider\n",
    ".gitignore": "__pycache__/\n*.pyc\n",
    "src/calc.py": "def add(a: int, b: int) -> int:\n    return a + b\n",
    "tests/test_calc.py": "from calc import add\n\n\ndef test_add() -> None:\n    assert add(2, 3) == 5\n",
    "tools/add_greeting.py": (
        "import sys\nfrom pathlib import Path\n\nword = sys.argv[1]\n"
        "Path('src/greet.py').write_text(\n"
        '    f\'def greet(name: str) -> str:\\n    return "{word}, " + name + "!"\\n\'\n)\n'
    ),
    "tools/add_greeting_test.py": (
        "import sys\nfrom pathlib import Path\n\nword = sys.argv[1]\n"
        "Path('tests/test_greet.py').write_text(\n"
        "    'from greet import greet\\n\\n\\ndef test_greet() -> None:\\n'\n"
        '    f\'    assert greet("Ada") == "{word}, Ada!"\\n\'\n)\n'
    ),
    "tools/add_function.py": (
        "import sys\nfrom pathlib import Path\n\nname, op = sys.argv[1], sys.argv[2]\n"
        "calc = Path('src/calc.py')\n"
        "body = f'\\n\\ndef {name}(a: int, b: int) -> int:\\n    return a {op} b\\n'\n"
        "calc.write_text(calc.read_text() + body)\n"
        "test = Path(f'tests/test_{name}.py')\n"
        "expected = eval(f'6 {op} 3')\n"
        "test.write_text(f'from calc import {name}\\n\\n\\ndef test_{name}() -> None:\\n'\n"
        "                f'    assert {name}(6, 3) == {expected}\\n')\n"
    ),
}


def make_sample_repo(path: Path, extra_files: dict[str, str] | None = None) -> Path:
    """Create (or recreate) the sample repository at `path` with one commit on `main`."""
    path.mkdir(parents=True, exist_ok=True)
    for rel, text in {**FILES, **(extra_files or {})}.items():
        target = path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    git("init", "--quiet", "--initial-branch=main", cwd=path)
    git("add", "--all", cwd=path)
    author = ["-c", "user.name=Sample", "-c", "user.email=sample@localhost"]
    git(*author, "commit", "--quiet", "-m", "sample", cwd=path)
    return path


GREETINGS = ["Hello", "Bonjour", "Hola", "Ciao", "Hallo", "Ola", "Salut", "Hej"]
FUNCTIONS = [("multiply", "*"), ("subtract", "-"), ("floordiv", "//"), ("power", "**")]


def sample_spec(repo: Path, i: int, python: str = "python") -> dict[str, Any]:
    """Run `i` of the sample campaign: three scripted phases, each validated by the repo's pytest."""
    word = GREETINGS[i % len(GREETINGS)]
    fn, op = FUNCTIONS[i % len(FUNCTIONS)]
    # The sample needs no pytest plugins; autoloading whatever the worker venv has costs ~1.5 s a run.
    check = [f"PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 {python} -m pytest -q"]
    return {
        "repo": str(repo),
        "base_ref": "main",
        "name": f"sample-{i}-{word.lower()}",
        "config": {"builder": "script", "max_attempts": 2},
        "phases": [
            {
                "name": "add-greeting",
                "goal": f"Add greet() answering '{word}, <name>!'",
                "scope": ["src/greet.py"],
                "read_only_context": ["README.md"],
                "deliverables": ["src/greet.py"],
                "command": f"{python} tools/add_greeting.py {word}",
                "validation": check,
            },
            {
                "name": "test-greeting",
                "goal": "Cover greet() with a test",
                "scope": ["tests/"],
                "deliverables": ["tests/test_greet.py"],
                "command": f"{python} tools/add_greeting_test.py {word}",
                "validation": check,
            },
            {
                "name": f"add-{fn}",
                "goal": f"Add {fn}() to calc with a test",
                "scope": ["src/calc.py", "tests/"],
                "protected_paths": ["tests/test_calc.py"],
                "deliverables": [f"tests/test_{fn}.py"],
                "command": f"{python} tools/add_function.py {fn} '{op}'",
                "validation": check,
            },
        ],
    }
