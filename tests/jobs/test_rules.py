"""Per-folder rules and context files: matching, validation, safe reading."""

import json
import os
from pathlib import Path, PurePosixPath

import pytest
from pydantic import ValidationError

from support.recordings import write_soundfile
from support.running import Daemon
from transcribed.errors import ConfigError
from transcribed.jobs.rules import Rules, read_context
from transcribed.settings import Settings, load_settings
from transcribed.settings.folders import FolderRule


def _rules(inbox: Path, *rules: FolderRule) -> Rules:
    return Rules(list(rules), inbox=inbox, language=None, formats=("txt", "json"), disposal="move")


def test_the_deepest_rule_wins_and_unset_fields_fall_back(tmp_path: Path) -> None:
    rules = _rules(
        tmp_path,
        FolderRule(path="team", formats=["srt"], disposal="delete"),
        FolderRule(path="team/zh", language="zh", output="chinese"),
    )
    plan = rules.plan("team/zh/2026/standup.wav")
    assert (plan.language, plan.formats, plan.disposal) == ("zh", ("txt", "json"), "move")
    assert plan.output_relpath == "chinese/2026/standup.wav"
    team = rules.plan("team/notes.wav")
    assert (team.language, team.formats, team.disposal) == (None, ("srt",), "delete")
    assert team.output_relpath == "team/notes.wav"
    other = rules.plan("teamwork/x.wav")  # a prefix of the name is not the folder
    assert (other.language, other.formats, other.disposal) == (None, ("txt", "json"), "move")


def test_rules_are_validated_at_start(tmp_path: Path) -> None:
    for bad in (
        {"path": "/etc"},
        {"path": "../up"},
        {"path": "a", "output": "../x"},
        {"path": "a", "formats": ["doc"]},
        {"path": "a", "colour": "red"},
    ):
        with pytest.raises(ValidationError):
            FolderRule(**bad)
    folders = {name: tmp_path / name for name in ("in", "out", "failed", "state")}
    for folder in folders.values():
        folder.mkdir()
    config = tmp_path / "config.toml"
    base = (
        f'inbox = "{folders["in"]}"\noutbox = "{folders["out"]}"\n'
        f'failed_dir = "{folders["failed"]}"\nstate_dir = "{folders["state"]}"\n'
        'disposal = "delete"\n'
    )
    config.write_text(base + '[[folders]]\npath = "a"\n[[folders]]\npath = "a"\n')
    with pytest.raises(ConfigError, match="same path"):
        load_settings(config, Settings)
    config.write_text(base + '[[folders]]\npath = "keep"\ndisposal = "move"\n')
    with pytest.raises(ConfigError, match="archive_dir"):
        load_settings(config, Settings)
    config.write_text(base + '[[folders]]\npath = "zh"\nlanguage = "zh"\ncontext = "预算"\n')
    assert load_settings(config, Settings).folders[0].language == "zh"


def test_the_nearest_context_file_is_read_and_symlinks_are_not_followed(tmp_path: Path) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "team" / "deep").mkdir(parents=True)
    outside.mkdir()
    (inbox / ".context.txt").write_text("Acme Corp\n")
    (inbox / "team" / ".context.txt").write_text("Kubernetes, Grafana\n")
    assert read_context(inbox, PurePosixPath("team/deep/a.wav")) == "Kubernetes, Grafana"
    assert read_context(inbox, PurePosixPath("b.wav")) == "Acme Corp"
    (outside / "secret.txt").write_text("do not read")
    (inbox / "team" / ".context.txt").unlink()
    (inbox / "team" / ".context.txt").symlink_to(outside / "secret.txt")
    assert read_context(inbox, PurePosixPath("team/a.wav")) == "Acme Corp"
    (inbox / "linked").symlink_to(outside, target_is_directory=True)
    (outside / ".context.txt").write_text("outside")
    assert read_context(inbox, PurePosixPath("linked/a.wav")) == "Acme Corp"
    (inbox / ".context.txt").write_bytes(b"x" * 10_000)
    assert len(read_context(inbox, PurePosixPath("c.wav")) or "") == 4096
    rules = _rules(inbox, FolderRule(path="team", context="Sprint review"))
    assert rules.context(rules.plan("team/a.wav")) == "Sprint review\n" + "x" * 4096
    assert rules.context(rules.plan("b.wav")) == "x" * 4096


@pytest.mark.slow
def test_a_folder_rule_forces_the_language_formats_output_disposal_and_speakers(
    folders, tiny_model, tiny_diarizer, tmp_path
) -> None:
    (folders.inbox / "zh").mkdir()
    (folders.inbox / "zh" / ".context.txt").write_text("预算 季度 Kubernetes\n")
    for seed, relpath in enumerate(("zh/standup.wav", "plain.wav")):
        name = f".{os.path.basename(relpath)}"
        path = write_soundfile(folders.inbox / name, 3, 16000, "PCM_16", seed=seed)
        path.rename(folders.inbox / relpath)
    rule = {
        "path": "zh",
        "language": "zh",
        "formats": ["json", "srt"],
        "disposal": "delete",
        "output": "chinese",
        "diarize": False,
    }
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.3",
        TRANSCRIBED_FOLDERS=json.dumps([rule]),
        TRANSCRIBED_DIARIZER=str(tiny_diarizer),
    )
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        daemon.wait_for(
            lambda: (
                (folders.outbox / "chinese" / "standup.json").exists()
                and (folders.archive / "plain.wav").exists()
            ),
            60,
        )
    finally:
        assert daemon.stop() == 0
    ruled = json.loads((folders.outbox / "chinese" / "standup.json").read_text())
    assert ruled["language"] == "zh" and ruled["language_forced"] is True
    assert ruled["disposal"]["method"] == "delete"
    assert sorted(p.name for p in (folders.outbox / "chinese").iterdir()) == [
        "standup.json",
        "standup.srt",
    ]
    assert not (folders.archive / "zh").exists(), "deleted by its folder's rule, not archived"
    assert ruled["speakers"] == {} and all(s["speaker"] is None for s in ruled["segments"])
    plain = json.loads((folders.outbox / "plain.json").read_text())
    assert plain["language_forced"] is False and plain["disposal"]["method"] == "move"
    assert plain["speakers"] and all(s["speaker"] for s in plain["segments"] if s["text"])
    assert "预算" not in (tmp_path / "daemon.log").read_text(), "context never logged"
