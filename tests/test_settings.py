"""Settings: TOML file plus environment (env wins), and clear refusals."""

from pathlib import Path

import pytest
import structlog

from transcribed.errors import ConfigError
from transcribed.settings import (
    ModelSettings,
    RetrySettings,
    Settings,
    StateSettings,
    check_folders,
    load_settings,
)


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
    assert "inbox is required: set TRANSCRIBED_INBOX" in message
    assert "device: must be auto, cpu, cuda or cuda:N" in message
    assert "(from environment TRANSCRIBED_DEVICE)" in message


@pytest.mark.parametrize("key", ["settle_seconds", "decode_timeout_seconds", "retry_seconds"])
def test_an_infinite_wait_is_refused(folders, tmp_path, key: str) -> None:
    """Found by the adversary: `inf` was taken ("no timeout"), and no wait can be that long
    (Event.wait and Connection.poll raise OverflowError on it)."""
    config = _write_config(tmp_path / "c.toml", folders)
    config.write_text(config.read_text() + f"{key} = inf\n")
    with pytest.raises(ConfigError, match=f"{key}: .*finite"):
        load_settings(config, Settings)


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
    with pytest.raises(ConfigError, match=f"config file {broken} is not valid TOML"):
        load_settings(broken, Settings)
    broken.write_bytes(b'inbox = "\xff"\n')  # TOML is UTF-8
    with pytest.raises(ConfigError, match=f"config file {broken} is not valid TOML"):
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


@pytest.mark.parametrize("role", ["archive_dir", "outbox", "failed_dir"])
def test_an_inbox_inside_another_role_is_refused_at_the_start(folders, tmp_path, role) -> None:
    """An adversary's finding: inbox = "arc/in" with archive_dir = "arc" started, then a
    recording from the inbox's subfolder `in/` waited for ever (its archive copy would go to
    arc/in/, the inbox). The reverse nesting is refused like the other."""
    outer = tmp_path / "outer"
    inbox = outer / "in"
    inbox.mkdir(parents=True)
    roles = {"outbox": folders.outbox, "archive_dir": folders.archive, "failed_dir": folders.failed}
    roles[role] = outer
    settings = Settings(inbox=inbox, state_dir=folders.state, **roles)
    with pytest.raises(ConfigError, match=rf"inbox: .* is inside {role} "):
        check_folders(settings)


def test_model_settings_ignore_daemon_keys_for_one_shot_use(folders, tmp_path) -> None:
    config = _write_config(tmp_path / "c.toml", folders, model="/models/x", language="zh")
    settings = load_settings(config, ModelSettings)
    assert (settings.model, settings.language) == ("/models/x", "zh")


def test_the_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parents[1] / "config" / "transcribed.toml"
    settings = load_settings(example, Settings)
    assert settings.disposal == "move" and settings.watch_mode == "events"


def test_list_settings_take_comma_lists_or_json_from_the_environment(
    folders, tmp_path, monkeypatch
) -> None:
    config = _write_config(tmp_path / "c.toml", folders)
    monkeypatch.setenv("TRANSCRIBED_FORMATS", "txt, srt")
    assert load_settings(config, Settings).formats == ["txt", "srt"]
    monkeypatch.setenv("TRANSCRIBED_FORMATS", '["vtt", "json"]')
    assert load_settings(config, ModelSettings).formats == ["vtt", "json"]
    monkeypatch.setenv("TRANSCRIBED_ON_DONE", "/usr/local/bin/notify,--quiet")
    assert load_settings(config, Settings).on_done == ["/usr/local/bin/notify", "--quiet"]


def test_a_bad_environment_value_is_blamed_on_its_variable_not_the_file(
    folders, tmp_path, monkeypatch
) -> None:
    config = _write_config(tmp_path / "good.toml", folders)
    for value, words in (
        ("txt,mp3", "(from environment TRANSCRIBED_FORMATS)"),
        ('["txt",', "environment variable TRANSCRIBED_FORMATS is not valid JSON"),
    ):
        monkeypatch.setenv("TRANSCRIBED_FORMATS", value)
        with pytest.raises(ConfigError) as caught:
            load_settings(config, Settings)
        assert words in str(caught.value) and str(config) not in str(caught.value)
    monkeypatch.delenv("TRANSCRIBED_FORMATS")
    monkeypatch.setenv("TRANSCRIBED_FOLDERS", "team")
    with pytest.raises(ConfigError, match="TRANSCRIBED_FOLDERS must be a JSON list"):
        load_settings(config, Settings)


def test_a_misspelt_key_names_the_setting_it_probably_meant(folders, tmp_path) -> None:
    config = _write_config(tmp_path / "c.toml", folders, settle_secnds="3")
    for kind in (Settings, ModelSettings, StateSettings):  # every command, not just `run`
        with pytest.raises(ConfigError) as caught:
            load_settings(config, kind)
        assert str(caught.value) == (
            f"invalid configuration: unknown setting settle_secnds in {config}"
            " — did you mean settle_seconds?"
        )
    config.write_text(config.read_text() + '[[folders]]\npath = "team"\nlangauge = "zh"\n')
    config.write_text(config.read_text().replace("settle_secnds", "settle_seconds"))
    with pytest.raises(ConfigError, match=r"unknown key langauge in .* did you mean language"):
        load_settings(config, Settings)


def test_a_misspelt_variable_is_warned_about_and_hook_variables_are_not(
    folders, tmp_path, monkeypatch
) -> None:
    config = _write_config(tmp_path / "c.toml", folders)
    monkeypatch.setenv("TRANSCRIBED_SETTLE_SECNDS", "10")
    monkeypatch.setenv("TRANSCRIBED_JOB", "7")  # what a hook that calls `transcribed` inherits
    with structlog.testing.capture_logs() as logged:
        assert load_settings(config, Settings).settle_seconds == 3
    [warning] = [entry for entry in logged if entry["event"] == "config.unknown_variable"]
    assert warning["variable"] == "TRANSCRIBED_SETTLE_SECNDS"
    assert "did you mean TRANSCRIBED_SETTLE_SECONDS?" in warning["hint"]


def test_status_needs_only_the_state_folder(tmp_path, monkeypatch) -> None:
    for name in ("INBOX", "OUTBOX", "FAILED_DIR", "ARCHIVE_DIR"):
        monkeypatch.delenv(f"TRANSCRIBED_{name}", raising=False)
    monkeypatch.setenv("TRANSCRIBED_STATE_DIR", str(tmp_path))
    assert load_settings(None, StateSettings).database == tmp_path / "jobs.sqlite3"
    with pytest.raises(ConfigError, match="inbox is required"):
        load_settings(None, RetrySettings)


def test_two_roles_in_one_folder_are_refused(folders) -> None:
    for outbox, failed, archive, words in (
        (folders.outbox, folders.outbox, folders.archive, "failed_dir and outbox are the same"),
        (folders.outbox, folders.failed, folders.outbox, "archive_dir and outbox are the same"),
        (folders.outbox, folders.failed, folders.failed, "archive_dir and failed_dir are the same"),
    ):
        settings = Settings(
            inbox=folders.inbox,
            outbox=outbox,
            failed_dir=failed,
            archive_dir=archive,
            state_dir=folders.state,
        )
        with pytest.raises(ConfigError, match=words):
            check_folders(settings)


def test_a_state_folder_that_cannot_be_made_is_one_line(folders, tmp_path) -> None:
    blocker = tmp_path / "a file"
    blocker.write_text("")
    settings = Settings(
        inbox=folders.inbox,
        outbox=folders.outbox,
        failed_dir=folders.failed,
        archive_dir=folders.archive,
        state_dir=blocker / "state",
    )
    with pytest.raises(ConfigError, match=r"^unusable folder: state_dir: cannot create .*state"):
        check_folders(settings)


def test_every_variable_a_hook_receives_is_known_not_to_be_a_setting() -> None:
    from transcribed.service import hook_environment
    from transcribed.settings import _NOT_SETTINGS
    from transcribed.state.queue import Job, JobState

    job = Job(
        id=1,
        state=JobState.FAILED,
        relpath=b"a.wav",
        work_name="x.wav",
        sha256=None,
        size=None,
        attempts=1,
        duplicate_of=None,
        error="no audio",
        outputs=("/out/a.txt", "/out/a.json"),
        disposed_to="/failed/a.wav",
        audio_seconds=2.0,
    )
    assert set(hook_environment(job)) <= _NOT_SETTINGS


# --- values the daemon will need: checked where they are read (issue 21) -------------------


def _refusal(config: Path | None, kind: type = Settings, **overrides: object) -> str:
    with pytest.raises(ConfigError) as refused:
        load_settings(config, kind, **overrides)
    return str(refused.value)


def test_an_unknown_language_is_refused_with_the_closest_codes(folders, tmp_path) -> None:
    """`language = "jp"` used to be accepted and then fail every recording three times."""
    config = _write_config(tmp_path / "c.toml", folders, language="jp")
    assert "'jp' is not a language Qwen3-ASR knows; did you mean ja (Japanese)?" in _refusal(config)
    config = _write_config(tmp_path / "c.toml", folders, language="klingon")
    said = _refusal(config)
    assert "'klingon' is not a language" in said and "zh" in said and "(from file" in said
    assert "Supported" not in said  # not transformers' 700-character list


def test_a_language_is_taken_by_code_or_name_and_kept_as_its_code(folders, tmp_path) -> None:
    """Codes and English names in any case name the same language; one code is kept."""
    for written, code in (("ja", "ja"), ("Japanese", "ja"), ("EN", "en"), ("cantonese", "yue")):
        config = _write_config(tmp_path / "c.toml", folders, language=written)
        assert load_settings(config, Settings).language == code


def test_a_folder_rule_and_an_option_get_the_same_language_check(folders, tmp_path) -> None:
    """[[folders]] rules and `transcribe --language` are checked like the setting."""
    config = _write_config(tmp_path / "c.toml", folders)
    config.write_text(config.read_text() + '[[folders]]\npath = "team"\nlanguage = "cn"\n')
    said = _refusal(config)
    assert "[[folders]] rule 1: language: 'cn' is not a language" in said
    assert "did you mean zh (Chinese)?" in said
    said = _refusal(None, ModelSettings, language="jp")
    assert "did you mean ja (Japanese)?" in said and "(from option --language)" in said


def test_the_language_table_is_transformers_own() -> None:
    """The start-up check and the model agree on which languages exist."""
    from transformers.models.qwen3_asr.processing_qwen3_asr import LANGUAGE_CODE_TO_NAME

    from transcribed.settings.languages import QWEN3_ASR_LANGUAGES

    assert dict(LANGUAGE_CODE_TO_NAME) == QWEN3_ASR_LANGUAGES


@pytest.mark.parametrize("written", ["640", "0o640"])
def test_output_mode_as_a_toml_number_is_refused_with_the_quoted_form(
    folders, tmp_path, written
) -> None:
    """`output_mode = 640` used to become mode 1200 (--w------T)."""
    config = _write_config(tmp_path / "c.toml", folders)
    config.write_text(config.read_text() + f"output_mode = {written}\n")
    said = _refusal(config)
    assert "is a number, which TOML does not read as octal" in said
    assert 'output_mode = "0' in said and "in quotes" in said


def test_output_mode_with_a_leading_zero_gets_the_hint_to_quote_it(folders, tmp_path) -> None:
    """`output_mode = 0640` is not TOML; the error says to write "0640"."""
    config = _write_config(tmp_path / "c.toml", folders)
    config.write_text(config.read_text() + "output_mode = 0640  # as chmod\n")
    said = _refusal(config)
    assert "not valid TOML" in said and 'write output_mode = "0640" in quotes' in said


def test_output_mode_means_the_same_in_the_file_and_the_environment(
    folders, tmp_path, monkeypatch
) -> None:
    """ "640", "0640" and "0o640" are octal wherever they are written."""
    for written in ("640", "0640", "0o640"):
        config = _write_config(tmp_path / "c.toml", folders, output_mode=written)
        assert load_settings(config, Settings).output_mode == 0o640
        monkeypatch.setenv("TRANSCRIBED_OUTPUT_MODE", written)
        assert load_settings(_write_config(tmp_path / "c.toml", folders), Settings).output_mode == (
            0o640
        )
        monkeypatch.delenv("TRANSCRIBED_OUTPUT_MODE")


@pytest.mark.parametrize(
    ("written", "words"),
    [
        ("999", "'999' is not an octal mode"),
        ("1200", "sets setuid, setgid or sticky bits"),
        ("0200", "unreadable by their owner"),
        ("rw-r-----", "is not an octal mode"),
    ],
)
def test_an_unusable_output_mode_says_why(folders, tmp_path, written, words) -> None:
    """No "invalid literal for int() with base 8", and no mode its owner cannot read."""
    config = _write_config(tmp_path / "c.toml", folders, output_mode=written)
    said = _refusal(config)
    assert words in said and "int()" not in said


def test_a_typo_inside_web_gets_a_did_you_mean(folders, tmp_path) -> None:
    """[web] is checked like the top level and [[folders]]."""
    config = _write_config(tmp_path / "c.toml", folders)
    config.write_text(config.read_text() + "[web]\nprot = 8080\n")
    assert "unknown key prot in [web] — did you mean port?" in _refusal(config)


def test_relative_paths_in_the_file_are_read_against_its_folder(
    folders, tmp_path, monkeypatch
) -> None:
    """The same config means the same folders from any working folder (systemd's is /)."""
    home = tmp_path / "etc"
    (home / "models").mkdir(parents=True)
    config = home / "c.toml"
    config.write_text(
        'inbox = "../inbox"\noutbox = "../outbox"\nfailed_dir = "../failed"\n'
        'state_dir = "state"\ndisposal = "delete"\nmodel = "./models"\n'
        'on_done = ["bin/notify", "--quiet"]\non_failed = ["logger", "failed"]\n'
        '[web]\ntoken_file = "token"\n'
    )
    for here in (tmp_path, Path("/")):
        monkeypatch.chdir(here)
        settings = load_settings(config, Settings)
        assert settings.inbox.resolve() == folders.inbox.resolve()
        assert settings.state_dir == home / "state"
        assert settings.model == str(home / "models")
        assert settings.web.token_file == home / "token"
        assert settings.on_done == [str(home / "bin" / "notify"), "--quiet"]
        assert settings.on_failed == ["logger", "failed"]  # a bare name: looked up in PATH


def test_a_tilde_is_expanded_everywhere(folders, tmp_path, monkeypatch) -> None:
    """`"~/rec/inbox"` is the home's rec/inbox, in the file and in the environment."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = tmp_path / "c.toml"
    config.write_text('inbox = "~/inbox"\noutbox = "~/outbox"\nfailed_dir = "~/failed"\n')
    monkeypatch.setenv("TRANSCRIBED_STATE_DIR", "~/state")
    monkeypatch.setenv("TRANSCRIBED_DISPOSAL", "delete")
    settings = load_settings(config, Settings)
    assert (settings.inbox, settings.state_dir) == (folders.inbox, folders.state)
    check_folders(settings)


def test_a_relative_path_in_the_environment_is_refused_with_the_reason(
    folders, tmp_path, monkeypatch
) -> None:
    """There is no file to be relative to, and a service's working folder is /."""
    config = _write_config(tmp_path / "c.toml", folders)
    monkeypatch.setenv("TRANSCRIBED_INBOX", "rec/inbox")
    said = _refusal(config)
    assert "inbox: 'rec/inbox' is a relative path; give an absolute one" in said
    assert "(from environment TRANSCRIBED_INBOX)" in said


def test_an_option_path_is_relative_to_the_working_folder(folders, tmp_path, monkeypatch) -> None:
    """`--state-dir state` means ./state, as in every command."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, StateSettings, state_dir=Path("state"))
    assert settings.state_dir == folders.state


def test_hook_programs_must_exist_and_be_executable(folders, tmp_path) -> None:
    """`on_done = ["/nonexistent/notify"]` used to pass every check."""
    from transcribed.settings import check_programs

    script = tmp_path / "notify"
    script.write_text("#!/bin/sh\n")
    for program, words in (
        ("/nonexistent/notify", "on_done: /nonexistent/notify does not exist"),
        (str(tmp_path), "is not a program"),
        ("no-such-notifier", "'no-such-notifier' is not found in PATH"),
        (str(script), f"{script} is not executable by user"),
    ):
        config = _write_config(tmp_path / "c.toml", folders)
        config.write_text(config.read_text() + f'on_done = ["{program}", "--quiet"]\n')
        with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
            check_programs(load_settings(config, Settings))
    script.chmod(0o755)
    config = _write_config(tmp_path / "c.toml", folders)
    config.write_text(config.read_text() + f'on_done = ["{script}"]\non_failed = ["true"]\n')
    check_programs(load_settings(config, Settings))


def test_a_state_dir_that_is_a_file_is_said_to_be_one(folders, tmp_path) -> None:
    """An adversary's finding: state_dir pointing at a regular file was answered with
    "its permissions (0644) shut you out: chmod u+rwX", advice that cannot help."""
    from transcribed.settings.access import state_access_problem

    state = tmp_path / "stfile"
    state.write_text("not a folder")
    assert state_access_problem(state) is None
    settings = Settings(
        inbox=folders.inbox,
        outbox=folders.outbox,
        archive_dir=folders.archive,
        failed_dir=folders.failed,
        state_dir=state,
    )
    with pytest.raises(ConfigError, match=r"state_dir: .*stfile is not a folder"):
        check_folders(settings)
