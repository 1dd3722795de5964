"""A SIGHUP applies the settings whose declaration says so (`Doc(reload=True)` on the field,
settings/reload.py), and names the others as waiting for a restart."""

from pathlib import Path

from transcribed.settings import Settings
from transcribed.settings.declared import doc_of
from transcribed.settings.reload import RELOADABLE, reload


def test_reloadable_settings_are_those_declared_so() -> None:
    assert {n for n, f in Settings.model_fields.items() if doc_of(f).reload} == RELOADABLE
    assert {"formats", "folders", "outbox", "on_done", "web"} <= RELOADABLE
    assert not {"inbox", "model", "device", "jobs_at_once", "state_dir"} & RELOADABLE


def test_a_reload_applies_what_the_declarations_allow_and_names_the_rest(tmp_path: Path) -> None:
    """The SIGHUP's split comes from the fields: a reloadable change is applied, another kept
    as it runs and named as needing a restart."""
    folders = {name: tmp_path / name for name in ("inbox", "outbox", "failed", "archive")}
    running = Settings(
        inbox=folders["inbox"],
        outbox=folders["outbox"],
        failed_dir=folders["failed"],
        archive_dir=folders["archive"],
    )
    new = running.model_copy(update={"formats": ["srt", "json"], "jobs_at_once": 9})
    change = reload(running, new)
    assert (change.applied, change.needs_restart) == (["formats"], ["jobs_at_once"])
    assert change.settings.formats == ["srt", "json"] and change.settings.jobs_at_once == 4
