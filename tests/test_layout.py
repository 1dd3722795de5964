"""The package's rooms and the one direction its imports point (issue 14).

A module may import from its own room and from rooms below it in LAYERS, never from a room
above: the flow reads top to bottom, and no stage reaches up into a command, the service or
the CLI. Imports inside functions count too (they are how a heavy library is put off, not a
way around the layout).
"""

import ast
from pathlib import Path

import transcribed

PACKAGE = Path(transcribed.__file__).parent

# Lowest first. Rooms on one line share a rank and never import each other.
LAYERS: list[set[str]] = [
    {"__init__", "errors", "logs", "faults", "backoff"},
    {"loops"},
    {"settings"},
    {"files"},
    {"output"},
    {"audio"},
    {"model"},
    {"servers"},
    {"engines"},
    {"state"},
    {"intake"},
    {"disposal"},
    {"host"},
    {"jobs"},
    {"service"},
    {"commands"},
    {"web"},
    {"cli"},
    {"__main__"},
]
RANK = {room: rank for rank, rooms in enumerate(LAYERS) for room in rooms}
TOP_LEVEL_MODULES = {
    "__init__",
    "__main__",
    "service",
    "engines",
    "errors",
    "logs",
    "faults",
    "backoff",
}


def room_of(module: str) -> str:
    """transcribed.intake.claim -> intake; transcribed.cli -> cli; transcribed -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST) -> set[str]:
    """Every transcribed module a file imports, `from transcribed import faults` included."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "transcribed"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "transcribed":
                found |= {f"transcribed.{a.name}" for a in node.names if a.name != "__version__"}
                found |= (
                    {"transcribed"} if any(a.name == "__version__" for a in node.names) else set()
                )
            elif node.module.split(".")[0] == "transcribed":
                found.add(node.module)
    return found


def _module_or_package(name: str) -> str:
    """`from transcribed import faults` imports a module; `... import __version__`, the package."""
    return "transcribed" if name.startswith("__") else f"transcribed.{name}"


def edges() -> list[tuple[str, str]]:
    return [
        (module_name(path), target)
        for path in sorted(PACKAGE.rglob("*.py"))
        for target in sorted(imported(ast.parse(path.read_text(), str(path))))
    ]


def wrong_way(edge_list: list[tuple[str, str]]) -> list[str]:
    """The imports that point up, or sideways between two rooms of one rank."""
    wrong = []
    for source, target in edge_list:
        here, there = room_of(source), room_of(target)
        if here != there and RANK[there] >= RANK[here]:
            wrong.append(f"{source} imports {target} ({here} may not reach {there})")
    return wrong


def test_every_room_is_placed_and_no_import_points_up() -> None:
    rooms = {room_of(module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert rooms <= set(RANK), f"rooms with no place in LAYERS: {rooms - set(RANK)}"
    assert wrong_way(edges()) == []


def test_the_check_sees_an_upward_and_a_sideways_import() -> None:
    """The rule itself: a stage reaching up to a command, a room importing its peer."""
    assert wrong_way([("transcribed.jobs.worker", "transcribed.commands.bench")])
    assert wrong_way([("transcribed.errors", "transcribed.faults")])
    assert wrong_way([("transcribed.audio.decoder", "transcribed.model.engine")])
    assert not wrong_way([("transcribed.model.engine", "transcribed.audio.formats")])
    assert not wrong_way([("transcribed.model.diarizer", "transcribed.model.model_files")])


def test_an_import_inside_a_function_is_seen() -> None:
    tree = ast.parse("def f():\n    from transcribed.cli import main\n")
    assert imported(tree) == {"transcribed.cli"}


def test_the_top_level_holds_few_modules_and_every_room_says_what_it_does() -> None:
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL_MODULES and len(top) <= 8
    for init in PACKAGE.glob("*/__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"
