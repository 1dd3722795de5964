"""Random-weight checkpoints for benchmarks: built once, and never trusted half-built."""

import json
from pathlib import Path
from typing import Any

import pytest

from transcribed.model import synthetic
from transcribed.model.synthetic import build_full_size_checkpoint, build_synthetic


class _Network:
    """Stands in for the 2-billion-parameter model: saves a config, then its weights, or
    dies between the two as a killed or disk-full build does."""

    fail = False

    def __init__(self, config: Any) -> None:
        self.config = config

    def save_pretrained(self, folder: Path) -> None:
        Path(folder, "config.json").write_text(json.dumps({"model_type": "qwen3_asr"}))
        if _Network.fail:
            raise OSError(28, "No space left on device")
        Path(folder, "model.safetensors").write_bytes(b"weights")


def test_a_build_cut_short_is_built_again_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights are saved after the config: a build that dies between the two must not
    leave a folder that the next run takes for finished."""
    monkeypatch.setattr(synthetic, "_network_class", lambda: _Network)
    folder = tmp_path / "synthetic-1.7b"
    monkeypatch.setattr(_Network, "fail", True)
    with pytest.raises(OSError, match="No space left"):
        build_full_size_checkpoint(folder, "1.7b")
    monkeypatch.setattr(_Network, "fail", False)
    built = build_full_size_checkpoint(folder, "1.7b")
    assert (built / "model.safetensors").is_file() and (built / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-1.7b"]  # no partial left


def test_a_half_built_folder_from_an_older_run_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(synthetic, "_network_class", lambda: _Network)
    folder = tmp_path / "synthetic-0.6b"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # what a killed older build left
    (tmp_path / ".synthetic-0.6b.partial-12345").mkdir()  # a killed run's scratch
    assert (build_full_size_checkpoint(folder, "0.6b") / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-0.6b"]


def test_the_tiny_size_is_the_tests_checkpoint_built_once(tmp_path: Path) -> None:
    folder = build_synthetic(tmp_path / "tiny", "tiny")
    assert (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert build_synthetic(folder, "tiny") == folder
    assert (folder / "config.json").stat().st_mtime_ns == stamp  # not built again


def test_the_weights_are_as_readable_as_the_configuration(tmp_path: Path) -> None:
    """Found on main: model.safetensors was written 0600 while the rest followed the umask,
    so a daemon running as the systemd unit's own user could not read a model built by hand."""
    folder = build_synthetic(tmp_path / "tiny", "tiny")
    modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir()}
    assert set(modes.values()) == {modes["config.json"]}, modes
