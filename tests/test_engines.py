"""The engine kinds are named in one table (transcribed.engines) and the settings' field only."""

import ast
import typing
from pathlib import Path

import transcribed
from transcribed.engines import ENGINES, engine_kind
from transcribed.settings import ModelSettings

PACKAGE = Path(transcribed.__file__).parent
# The table, and the settings that declare which names a config may give.
NAMING = {PACKAGE / "engines.py", PACKAGE / "settings" / "__init__.py"}


def test_the_table_has_a_kind_for_each_name_the_settings_admit() -> None:
    """A name the config accepts always finds its kind, and the table has no name it refuses."""
    names = typing.get_args(ModelSettings.model_fields["engine"].annotation)
    assert set(names) == set(ENGINES)
    for name in names:
        assert engine_kind(ModelSettings.model_construct(engine=name)).name == name


def test_no_module_outside_the_table_compares_an_engine_name() -> None:
    """No `settings.engine == "vllm"` (or any comparison with a kind's name) outside the table."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in NAMING:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Compare):
                for part in (node.left, *node.comparators):
                    if isinstance(part, ast.Constant) and part.value in ENGINES:
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert found == []
