"""The verbs' declarations: every module in cli/ is a verb the parser offers, and none of
them imports the model stack when the command starts."""

import ast
import subprocess
import sys
from pathlib import Path

import transcribed.cli
from transcribed.cli.main import VERBS, build_parser

CLI = Path(transcribed.cli.__file__).parent
NOT_VERBS = {"__init__", "main", "verb", "shared"}  # the loop and what the verbs share


def test_every_verb_module_is_offered_by_the_parser() -> None:
    """A verb module left out of VERBS would be a command nobody can run."""
    modules = {path.stem for path in CLI.glob("*.py")} - NOT_VERBS
    declared = {module for module in modules if "VERB" in _assigned(CLI / f"{module}.py")}
    assert declared == modules
    assert {verb.name.replace("-", "_") for verb in VERBS} == modules
    choices = build_parser()._subparsers._group_actions[0].choices
    assert list(choices) == [verb.name for verb in VERBS]


def _assigned(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        t.id
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }


def test_starting_a_command_imports_no_model_stack() -> None:
    """The parser, every verb's declaration, is built without torch, numpy or transformers:
    a mistake on the command line is reported in about a second."""
    heavy = ("torch", "numpy", "transformers", "soundfile", "httpx")
    code = (
        "import sys; from transcribed.cli.main import build_parser; build_parser(); "
        f"print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""


def test_help_names_the_docs_pages_and_each_exists() -> None:
    """`transcribed --help` ends with where the long answers are; a page renamed or removed
    would send the reader nowhere."""
    shown = build_parser().format_help()
    pages = [
        line.split()[0] for line in shown.splitlines() if line.startswith("  ") and ".md" in line
    ]
    assert "docs/service.md" in pages and "docs/failures.md" in pages
    project = Path(__file__).parents[2]
    assert [page for page in pages if not (project / page).is_file()] == []
