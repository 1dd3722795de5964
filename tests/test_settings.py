"""Settings: TOML file plus environment (env wins), and clear refusals."""

from pathlib import Path

import pytest

from transcribed.errors import ConfigError
from transcribed.settings import ModelSettings, Settings, check_folders, load_settings


def _write_config(path: Path, folders: object, **extra: str) -> Path:
    lines = [
        f'{key} = "{value}"'
        for key, value in {
            "inbox": folders.inbox,
            "outbox": folders.outbox,
            "archive_dir": folders.archive,
            "failed_dir": folders.failed,
            "state_dir": folders.state,
            **extra,
        }.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_toml_is_read_and_environment_wins(folders, tmp_path, monkeypatch) -> None:
    config = _write_config(tmp_path / "c.toml", folders, device="cpu", disposal="delete")
    monkeypatch.setenv("TRANSCRIBED_DISPOSAL", "shred")
    monkeypatch.setenv("TRANSCRIBED_OUTPUT_MODE", "0600")
    settings = load_settings(config, Settings)
    assert settings.device == "cpu"
    assert settings.disposal == "shred"
    assert settings.output_mode == 0o600
    check_folders(settings)


def test_missing_and_invalid_values_are_explained_without_a_traceback(
    tmp_path, monkeypatch
) -> None:
    for name in ("INBOX", "OUTBOX", "FAILED_DIR", "ARCHIVE_DIR"):
        monkeypatch.delenv(f"TRANSCRIBED_{name}", raising=False)
    monkeypatch.setenv("TRANSCRIBED_DEVICE", "gpu0")
    with pytest.raises(ConfigError) as caught:
        load_settings(None, Settings)
    message = str(caught.value)
    assert "inbox: is required: set TRANSCRIBED_INBOX" in message
    assert "device: must be auto, cpu, cuda or cuda:N" in message


def test_move_needs_an_archive(folders, tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'inbox = "{folders.inbox}"\noutbox = "{folders.outbox}"\nfailed_dir = "{folders.failed}"\n'
    )
    with pytest.raises(ConfigError, match="archive_dir"):
        load_settings(config, Settings)


def test_unknown_keys_and_a_missing_config_file_are_refused(folders, tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", Settings)
    config = _write_config(tmp_path / "c.toml", folders, inboxx="typo")
    with pytest.raises(ConfigError, match="inboxx"):
        load_settings(config, Settings)
    broken = tmp_path / "broken.toml"
    broken.write_text("inbox = [unclosed\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(broken, Settings)


def test_folders_inside_the_inbox_missing_or_unwritable_are_refused(folders, tmp_path) -> None:
    nested = folders.inbox / "out"
    nested.mkdir()
    settings = Settings(
        inbox=folders.inbox,
        outbox=nested,
        archive_dir=folders.archive,
        failed_dir=tmp_path / "missing",
        state_dir=folders.state,
    )
    with pytest.raises(ConfigError) as caught:
        check_folders(settings)
    assert "failed_dir" in str(caught.value) and "does not exist" in str(caught.value)
    (tmp_path / "missing").mkdir()
    with pytest.raises(ConfigError, match=r"outbox: .* is inside the inbox"):
        check_folders(settings)


def test_model_settings_ignore_daemon_keys_for_one_shot_use(folders, tmp_path) -> None:
    config = _write_config(tmp_path / "c.toml", folders, model="/models/x", language="zh")
    settings = load_settings(config, ModelSettings)
    assert (settings.model, settings.language) == ("/models/x", "zh")


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parents[1] / "config" / "transcribed.toml"
    settings = load_settings(example, Settings)
    assert settings.disposal == "move" and settings.watch_mode == "events"
