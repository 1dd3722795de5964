"""No function in daemon/ is longer than 90 lines (the developer guide's limit; aim for ~10).

A long function is several jobs in one: the parser that declared every command at once was
275 lines before each verb declared its own arguments (cli/).
"""

import ast
from pathlib import Path

import transcribed

PACKAGE = Path(transcribed.__file__).parent
LONGEST = 90


def lengths(tree: ast.AST) -> list[tuple[int, str, int]]:
    """(lines, name, first line) of every function and method, nested ones included; a
    function's lines are from its `def` to its last statement."""
    return [
        (node.end_lineno - node.lineno + 1, node.name, node.lineno)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno
    ]


def test_no_function_is_longer_than_90_lines() -> None:
    too_long = [
        f"{path.relative_to(PACKAGE.parent)}:{line} {name}: {count} lines"
        for path in sorted(PACKAGE.rglob("*.py"))
        for count, name, line in lengths(ast.parse(path.read_text(), str(path)))
        if count > LONGEST
    ]
    assert too_long == []


def test_the_count_runs_from_def_to_the_last_line() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(LONGEST))
    tree = ast.parse(f"def long():\n{body}\n\nasync def short():\n    pass\n")
    assert sorted(lengths(tree)) == [(2, "short", LONGEST + 3), (LONGEST + 1, "long", 1)]
