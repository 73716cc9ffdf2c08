"""The shape every script and helper keeps (issue 23): no function over MAX_FUNCTION_LINES lines, so each reads as
named steps. ruff's C901 (complexity) and PLR0915 (statements) in pyproject.toml guard the same from another side."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

MAX_FUNCTION_LINES = 60  # a screenful: longer, and a reader loses the data flow
EXEMPT = {"get_args_parser"}  # a list of flags with their help texts is long without being logic


def long_functions(paths: list[Path], root: Path) -> list[str]:
    """'file:line name (N lines)' for every function or method over the limit."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in EXEMPT:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_a_script_utils_or_benchmark_is_over_60_lines():
    paths = [*REPO.glob("*.py"), *(REPO / "utils").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]
    assert len(paths) > 30
    assert long_functions(paths, REPO) == []


def test_a_long_function_is_caught_and_the_parser_is_exempt(tmp_path):
    planted = tmp_path / "planted.py"
    body = "    x = 1\n" * MAX_FUNCTION_LINES
    method_body = "    " + body.replace("\n", "\n    ").rstrip(" ")
    planted.write_text(f"def long():\n{body}\n\nclass A:\n    def get_args_parser(self):\n{method_body}{method_body}")
    assert long_functions([planted], tmp_path) == [f"planted.py:1 long ({MAX_FUNCTION_LINES + 1} lines)"]
