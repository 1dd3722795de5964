"""The mistakes of a new user's first hour, against every command of the real CLI: each gets
one clear line on stderr and exit 2 (doctor: its findings and exit 1), never a traceback.

Each (mistake, command) pair is a subprocess; they run a few at a time, and every check
happens before torch is imported, so the whole table takes seconds.
"""

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from recordings import write_soundfile
from running import NO_OVERRIDE, STRANGER_UID
from transcribed.state.queue import JobQueue

CLI = (sys.executable, "-m", "transcribed")
DOCTOR_FAILED = 1  # documented: doctor prints its findings and exits 1 when one fails


@dataclass(frozen=True)
class Mistake:
    """A broken input, the commands that read it, and the words their refusal must contain."""

    words: tuple[str, ...]
    commands: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    config: Path | None = None  # given as `--config PATH` before the command
    not_said: tuple[str, ...] = ()  # e.g. the good config file, when a variable is to blame
    options: tuple[str, ...] = ()  # after the command
    prefix: tuple[str, ...] = ()  # runs the command, e.g. as another user
    doctor_refuses: bool = False  # doctor answers with one line and exit 2, as the others do


ALL = (
    "run",
    "transcribe",
    "status",
    "jobs list",
    "jobs retry",
    "jobs forget",
    "jobs prune",
    "doctor",
    "config",
    "config show",
    "bench",
)
STATE_ONLY = ("status", "jobs list", "jobs retry", "jobs forget", "jobs prune")
SETTINGS = ("run", "doctor", "config", "config show")  # those that read every setting
MODEL = ("run", "transcribe", "doctor", "config", "config show", "bench")  # model settings


def _argv(command: str, recording: Path, mistake: Mistake) -> list[str]:
    before = ["--config", str(mistake.config)] if mistake.config else []
    extra = {
        "transcribe": [str(recording)],
        "jobs retry": ["1"],
        "jobs forget": ["1"],
        "jobs prune": ["--older-than", "90d"],
        "bench": ["--hours", "0.01"],
        "search": ["minutes"],
    }
    return [*before, *command.split(), *mistake.options, *extra.get(command, [])]


def _config(path: Path, folders, model: Path, **extra: str) -> Path:
    values = {
        "inbox": folders.inbox,
        "outbox": folders.outbox,
        "archive_dir": folders.archive,
        "failed_dir": folders.failed,
        "state_dir": folders.state,
        "model": model,
        "device": "cpu",
        **extra,
    }
    path.write_text("".join(f'{key} = "{value}"\n' for key, value in values.items()))
    return path


def _with(good: Path, path: Path, lines: str) -> Path:
    """The good config file and `lines` (TOML) after it."""
    path.write_text(good.read_text() + lines)
    return path


def _stranger(tmp_path: Path, folders, tiny_model: Path) -> tuple[Path, Mistake]:
    """A state folder with a job database that the command's user may not use, and the
    mistake of running a command on it: as root without the override capabilities on a
    folder of nobody's, or (not root) on a folder whose mode shuts its owner out."""
    theirs = tmp_path / "their state"
    theirs.mkdir()
    JobQueue(theirs / "jobs.sqlite3").close()
    config = _config(tmp_path / "theirs.toml", folders, tiny_model, state_dir=str(theirs))
    commands = (*STATE_ONLY, "doctor", "search", "run", "recover", "web")
    if os.geteuid() == 0:
        for path in (theirs, *theirs.iterdir()):
            os.chown(path, STRANGER_UID, STRANGER_UID)
        theirs.chmod(0o700)
        owner = pwd.getpwuid(STRANGER_UID).pw_name
        words: tuple[str, ...] = (
            f"the state folder {theirs} belongs to user {owner}",
            f"run it as that user: sudo -u {owner} transcribed --config",
        )
        prefix = NO_OVERRIDE
    else:
        theirs.chmod(0o000)
        words, prefix = ("its permissions (0000) shut you out", f"chmod u+rwX {theirs}"), ()
    return theirs, Mistake(words, commands, config=config, prefix=prefix, doctor_refuses=True)


@pytest.fixture
def stranger(tmp_path: Path, folders, tiny_model: Path) -> Iterator[Mistake]:
    """The wrong user: one who may not read and write the state folder."""
    theirs, mistake = _stranger(tmp_path, folders, tiny_model)
    yield mistake
    theirs.chmod(0o700)  # so that the temporary folder can be removed


def _mistakes(tmp_path: Path, folders, tiny_model: Path) -> dict[str, Mistake]:
    good = _config(tmp_path / "good.toml", folders, tiny_model)
    misspelt = tmp_path / "misspelt.toml"
    misspelt.write_text(good.read_text() + "settle_secnds = 3\n")
    invalid = tmp_path / "invalid.toml"
    invalid.write_text('inbox = "/srv/rec\n')
    broken_model = tmp_path / "half-downloaded model"
    shutil.copytree(tiny_model, broken_model)
    weights = broken_model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    a_file = tmp_path / "a file"
    a_file.write_text("")
    empty_state = tmp_path / "empty state"
    empty_state.mkdir()
    only_state = tmp_path / "only-state.toml"
    only_state.write_text(f'state_dir = "{folders.state}"\n')
    mistakes = {
        "missing config file": Mistake(
            (f"config file {tmp_path / 'nope.toml'} does not exist",),
            ALL,
            config=tmp_path / "nope.toml",
        ),
        "invalid TOML": Mistake((f"config file {invalid} is not valid TOML",), ALL, config=invalid),
        "misspelt key": Mistake(
            ("unknown setting settle_secnds", "did you mean settle_seconds?"), ALL, config=misspelt
        ),
        "bad environment value": Mistake(
            ("formats", "(from environment TRANSCRIBED_FORMATS)"),
            ("run", "transcribe", "doctor", "config", "config show", "bench"),
            env={"TRANSCRIBED_FORMATS": "txt,mp3"},
            config=good,
            not_said=(str(good),),
        ),
        "missing folders": Mistake(
            ("does not exist",),
            ("run", "doctor", "jobs retry"),
            env={"TRANSCRIBED_INBOX": str(tmp_path / "no inbox")},
            config=good,
        ),
        "an outbox for transcribe that is a file": Mistake(
            ("--outbox", "exists and is not a folder"),
            ("transcribe",),
            config=good,
            options=("--outbox", str(a_file)),
        ),
        "state folder that cannot be made": Mistake(
            (f"{a_file / 'state'}",),
            ("run", "doctor", *STATE_ONLY),
            env={"TRANSCRIBED_STATE_DIR": str(a_file / "state")},
            config=good,
        ),
        "broken model folder": Mistake(
            ("model.safetensors is cut short", str(broken_model)),
            ("run", "transcribe", "doctor", "bench"),
            env={"TRANSCRIBED_MODEL": str(broken_model)},
            config=good,
        ),
        "no database": Mistake(
            ("no job database",),
            STATE_ONLY,
            env={"TRANSCRIBED_STATE_DIR": str(empty_state)},
            config=good,
        ),
        "retry without the inbox": Mistake(
            ("inbox is required",), ("jobs retry",), config=only_state
        ),
        "unknown language": Mistake(
            ("language: 'jp' is not a language", "did you mean ja (Japanese)?"),
            MODEL,
            env={"TRANSCRIBED_LANGUAGE": "jp"},
            config=good,
            not_said=(str(good),),
        ),
        "unknown language for transcribe": Mistake(
            ("did you mean zh (Chinese)?", "(from option --language)"),
            ("transcribe",),
            config=good,
            options=("--language", "cn"),
        ),
        "unknown language in a folder rule": Mistake(
            ("[[folders]] rule 1: language", "'klingon' is not a language Qwen3-ASR knows"),
            SETTINGS,
            config=_with(
                good, tmp_path / "klingon.toml", '[[folders]]\npath = "k"\nlanguage = "klingon"\n'
            ),
        ),
        "output_mode as a TOML integer": Mistake(
            ("output_mode = 640 is a number", 'output_mode = "0640"'),
            ALL,
            config=_with(good, tmp_path / "int-mode.toml", "output_mode = 640\n"),
        ),
        "output_mode with a leading zero": Mistake(
            ("not valid TOML", 'write output_mode = "0640" in quotes'),
            ALL,
            config=_with(good, tmp_path / "zero-mode.toml", "output_mode = 0640\n"),
        ),
        "output_mode that is not octal": Mistake(
            ("output_mode: '999' is not an octal mode", "TRANSCRIBED_OUTPUT_MODE"),
            MODEL,
            env={"TRANSCRIBED_OUTPUT_MODE": "999"},
            config=good,
        ),
        "a typo inside [web]": Mistake(
            ("unknown key pasword_hash in [web]", "did you mean password_hash?"),
            SETTINGS,
            config=_with(good, tmp_path / "web.toml", '[web]\npasword_hash = "x"\n'),
        ),
        "the original model layout": Mistake(
            ("Qwen/Qwen3-ASR-0.6B-hf", "`hf download Qwen/Qwen3-ASR-0.6B-hf`"),
            ("run", "transcribe", "doctor", "bench"),
            env={"TRANSCRIBED_MODEL": "Qwen/Qwen3-ASR-0.6B"},
            config=good,
            not_said=("`hf download Qwen/Qwen3-ASR-0.6B`",),
        ),
        "a model without its organisation": Mistake(
            ("names no organisation", "model = 'Qwen/Qwen3-ASR-1.7B-hf'"),
            ("run", "transcribe", "doctor", "bench"),
            env={"TRANSCRIBED_MODEL": "Qwen3-ASR-1.7B-hf"},
            config=good,
        ),
        "a relative path in the environment": Mistake(
            ("state_dir: 'state' is a relative path", "TRANSCRIBED_STATE_DIR"),
            (*SETTINGS, *STATE_ONLY),
            env={"TRANSCRIBED_STATE_DIR": "state"},
            config=good,
        ),
        "a hook program that does not exist": Mistake(
            ("on_done: /nonexistent/notify does not exist",),
            ("run", "doctor"),
            env={"TRANSCRIBED_ON_DONE": "/nonexistent/notify"},
            config=good,
        ),
    }
    if torch.version.cuda is None:  # on a CUDA build the words differ (tested in test_engine)
        mistakes["device cuda with a CPU-only torch"] = Mistake(
            ("CPU-only build", "pytorch.org"),
            ("run",),
            env={"TRANSCRIBED_DEVICE": "cuda"},
            config=good,
        )
    return mistakes


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
    return env | {"HF_HUB_OFFLINE": "1", "HOME": env.get("HOME", "/root")}


def _without_torch(tmp_path: Path) -> dict[str, str]:
    """An environment in which importing torch or transformers fails loudly: a mistake must
    be answered before the model stack loads (seconds, not a traceback)."""
    shadow = tmp_path / "no-model-stack"
    shadow.mkdir(exist_ok=True)
    for name in ("torch", "transformers"):
        (shadow / f"{name}.py").write_text(f"raise ImportError('{name} imported too early')\n")
    return {"PYTHONPATH": str(shadow)}


def _run(
    argv: Sequence[str], env: dict[str, str], prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    command = [*prefix, *CLI, *argv]
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:  # e.g. a daemon or page that started: one problem more
        return subprocess.CompletedProcess(command, -9, "", "still running after 120 s\n")


def test_every_command_answers_every_first_hour_mistake_in_one_line(
    tmp_path, folders, tiny_model, stranger
) -> None:
    recording = write_soundfile(tmp_path / "memo.wav", 1, 16000, "PCM_16")
    runs = []
    mistakes = _mistakes(tmp_path, folders, tiny_model) | {"the wrong user": stranger}
    for name, mistake in mistakes.items():
        for command in mistake.commands:
            # doctor checks the GPU with torch; only a device check needs it before refusing
            needs_torch = command == "doctor" or "cuda" in name
            env = _base_env() | mistake.env | ({} if needs_torch else _without_torch(tmp_path))
            runs.append((name, command, mistake, _argv(command, recording, mistake), env))
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda run: _run(run[3], run[4], run[2].prefix), runs))

    problems = []
    for (name, command, mistake, *_), done in zip(runs, results, strict=True):
        findings = command == "doctor" and not mistake.doctor_refuses
        said = done.stdout if findings else done.stderr
        expected_code = DOCTOR_FAILED if findings else 2
        wrong = []
        if done.returncode != expected_code:
            wrong.append(f"exit {done.returncode}")
        if "Traceback" in done.stdout + done.stderr:
            wrong.append("a traceback")
        if not findings and (len(done.stderr.splitlines()) != 1 or done.stdout):
            wrong.append("not exactly one line on stderr")
        if findings and done.stderr:
            wrong.append("doctor wrote to stderr")
        wrong += [f"no {w!r}" for w in mistake.words if w not in said]
        wrong += [f"blames {w!r}" for w in mistake.not_said if w in said]
        if wrong:
            problems.append(f"{name} / {command}: {', '.join(wrong)}:\n{said[-800:]}")
    assert not problems, "\n\n".join(problems)
    assert len(runs) >= 130


def test_output_to_a_reader_that_went_away_ends_quietly(tmp_path) -> None:
    jobs = JobQueue(tmp_path / "jobs.sqlite3")
    for number in range(3):
        jobs.begin_claim(f"{number}.wav".encode(), f"{number}.work")
    env = _base_env() | {"TRANSCRIBED_STATE_DIR": str(tmp_path)}
    for argv in (["status"], ["jobs", "list"], ["jobs", "list", "--json"], ["run", "--help"]):
        reader, writer = os.pipe()
        os.close(reader)  # `| head -1` that has already read its line
        try:
            done = subprocess.run(
                [*CLI, *argv], env=env, stdout=writer, stderr=subprocess.PIPE, timeout=60
            )
        finally:
            os.close(writer)
        # 141 as if killed by SIGPIPE, like `yes | head -1`; argparse's own --help ends 0.
        expected = (0, 141) if "--help" in argv else (141,)
        assert done.returncode in expected and done.stderr == b"", (argv, done.stderr[-500:])


def test_options_go_before_or_after_the_command_and_config_alone_shows_it(tmp_path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'state_dir = "{tmp_path}"\n')
    JobQueue(tmp_path / "jobs.sqlite3")
    env = _base_env() | {"TRANSCRIBED_INBOX": "/i", "TRANSCRIBED_OUTBOX": "/o"}
    env |= {"TRANSCRIBED_FAILED_DIR": "/f", "TRANSCRIBED_DISPOSAL": "delete"}
    for argv in (["--config", str(config), "status"], ["status", "--config", str(config)]):
        done = _run(argv, env)
        assert done.returncode == 0 and "0 queued" in done.stdout, done.stderr
    shown = _run(["--config", str(config), "config"], env)
    assert shown.returncode == 0 and "state_dir" in shown.stdout and str(config) in shown.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "transcribed.model.synthetic", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0 and helped.stdout.startswith("usage:")
    assert not (tmp_path / "--help").exists()
