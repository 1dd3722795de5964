"""A setting is declared once: the configuration reference and the example config come from
its field (settings/declared.py, settings/reference.py)."""

import re
import shutil
from pathlib import Path

import pytest
from pydantic import Field

from transcribed.settings import Settings, load_settings, reference
from transcribed.settings.folders import FolderRule
from transcribed.settings.web import WebSettings

ROOT = Path(__file__).parents[1]


def test_the_reference_and_the_example_config_are_what_the_declarations_make() -> None:
    """Fails when a setting changed and `python -m transcribed.settings.reference --write`
    was not run (datasette's `cog --check`)."""
    assert reference.stale(ROOT) == []


def test_the_check_finds_either_file_stale_and_writing_keeps_the_prose(tmp_path: Path) -> None:
    for relative in (reference.REFERENCE, reference.EXAMPLE):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / relative, tmp_path / relative)
    page, example = tmp_path / reference.REFERENCE, tmp_path / reference.EXAMPLE
    page.write_text(
        page.read_text().replace("### `inbox`", "### `inbox`\n\nOld words.") + "Mine.\n"
    )
    example.write_text(example.read_text().replace("# settle_seconds = 3.0", ""))
    assert reference.stale(tmp_path) == [page, example]
    assert reference.main(["--check", "--root", str(tmp_path)]) == 1
    assert reference.main(["--write", "--root", str(tmp_path)]) == 0
    assert reference.stale(tmp_path) == []
    assert page.read_text().endswith("Mine.\n") and "Old words." not in page.read_text()


def test_every_setting_is_in_the_reference_and_the_example() -> None:
    page = (ROOT / reference.REFERENCE).read_text()
    example = (ROOT / reference.EXAMPLE).read_text()
    tables = {"": Settings, "folders": FolderRule, "web": WebSettings}
    for table, model in tables.items():
        for name in model.model_fields:
            heading = f"### `{name}`" if not table else f"` {name}\n"
            assert heading in page, (table, name)
            line = {"folders": r"\[\[folders\]\]", "web": r"\[web\]"}.get(name, f"{name} = ")
            assert re.search(rf"^(# )?{line}", example, re.M), (table, name)
    assert "### `stalled_seconds`" in page and "### `vllm_servers`" in page


def test_a_setting_declared_without_a_section_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new setting cannot slip into neither file: the generator names it."""

    class WithStray(Settings):
        stray: int = Field(default=1, description="Declared without Doc.")

    monkeypatch.setattr(reference, "Settings", WithStray)
    with pytest.raises(ValueError, match="stray"):
        reference.reference()


def test_every_example_value_is_one_the_settings_accept(tmp_path: Path) -> None:
    """Every commented line of the example, set, still loads: the examples are real values."""
    lines = (ROOT / reference.EXAMPLE).read_text().splitlines()
    # A setting's line is the last of its block; the lines above it are its description.
    ends = [i for i, line in enumerate(lines) if i + 1 == len(lines) or not lines[i + 1]]
    for i in ends:
        if re.match(r"# (\w+ = |\[)", lines[i]):
            lines[i] = lines[i].removeprefix("# ")
    text = "\n".join(line for line in lines if "…" not in line)  # password_hash: a hash
    config = tmp_path / "all.toml"
    config.write_text(text)
    settings = load_settings(config, Settings)
    assert settings.folders[0].path == "team-china" and settings.web.trusted_proxies
    assert settings.output_mode == 0o640 and settings.language == "en"
