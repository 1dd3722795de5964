"""No import circles: not between rooms, not between two modules of one room.

A circle makes the order in which modules happen to be imported decide whether a name
exists yet, and ties the modules on it into one unit that can only change together.
Imports inside functions count (they put off a heavy library, they do not break a
circle), and so do `if TYPE_CHECKING:` ones: a type that names a module above it ties the
two as much as a call does (mypy, and any reader, must take them together).
"""

import ast
from pathlib import Path

import transcribed

PACKAGE = Path(transcribed.__file__).parent

# Circles being undone on other branches of issue 22; the lead removes each entry as its
# fix is merged. Any circle not listed here fails the test.
KNOWN_CYCLES: list[set[str]] = []


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(module: str, tree: ast.AST, known: set[str]) -> set[str]:
    """The package's modules `module` imports: `from a.b import c` names a.b.c where c is a
    module, and a.b (its __init__ runs first) either way."""
    package = module if module in known and _is_package(module) else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, package)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known and name != module}


def _is_package(module: str) -> bool:
    return (PACKAGE.parent.joinpath(*module.split(".")) / "__init__.py").exists()


def _absolute(node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
    return f"{base}.{node.module}" if node.module else base


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {
        name: imports_of(name, ast.parse(path.read_text(), str(path)), known)
        for name, path in found.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, without
    recursion: the graph is small, but a deep chain must not hit the recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(group)
    return found


def test_no_module_imports_itself_back() -> None:
    """Every circle in the package is one the lead knows is being undone; a new one fails."""
    found = cycles(graph())
    new = [sorted(group) for group in found if group not in KNOWN_CYCLES]
    assert new == [], f"import circles: {new}"
    gone = [sorted(group) for group in KNOWN_CYCLES if group not in found]
    assert gone == [], f"these circles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_the_check_sees_a_circle_through_a_function_and_a_submodule() -> None:
    """A circle closed by an import inside a function, by `from package import module` or
    under TYPE_CHECKING is still a circle; a chain that comes back nowhere is none."""
    known = {"p", "p.a", "p.b", "p.c"}
    a = ast.parse("from p.b import thing\n")
    b = ast.parse("def later():\n    from p import a\n")
    c = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.a import x\n")
    edges = {
        "p.a": imports_of("p.a", a, known),
        "p.b": imports_of("p.b", b, known),
        "p.c": imports_of("p.c", c, known),
    }
    assert edges["p.b"] == {"p", "p.a"} and edges["p.c"] == {"p.a"}
    assert cycles(edges) == [{"p.a", "p.b"}]
    c_back = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.c import y\n"
    )
    edges["p.a"] |= imports_of("p.a", c_back, known)
    assert cycles(edges) == [{"p.a", "p.b", "p.c"}]
    assert cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []
