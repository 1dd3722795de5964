"""`transcribed transcribe` (one-shot) as a user meets it: the real CLI, the tiny model."""

import os
import pty
import subprocess
from pathlib import Path

from support.recordings import write_soundfile
from support.running import CLI


def _env(tiny_model: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSCRIBED_")}
    return env | {
        "TRANSCRIBED_MODEL": str(tiny_model),
        "TRANSCRIBED_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def _transcribe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--log-level", "ERROR", "transcribe", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_outputs_are_all_named_made_where_asked_and_never_silently_redone(
    tiny_model, tmp_path
) -> None:
    """A missing --outbox is made; every file written is named; a second run leaves the
    first's (perhaps edited) transcript alone unless --overwrite."""
    talk = write_soundfile(tmp_path / "talk.wav", 2, 16000, "PCM_16")
    outbox = tmp_path / "not yet" / "transcripts"
    env = _env(tiny_model, TRANSCRIBED_FORMATS="txt,srt,vtt")
    first = _transcribe(env, "--outbox", str(outbox), str(talk))
    assert first.returncode == 0, first.stderr
    assert f"made the folder {outbox}" in first.stderr
    assert "talk.wav -> talk.txt, talk.srt, talk.vtt, talk.json (in " in first.stderr
    assert {p.name for p in outbox.iterdir()} == {"talk.txt", "talk.srt", "talk.vtt", "talk.json"}

    (outbox / "talk.txt").write_text("corrected by hand\n")
    again = _transcribe(env, "--outbox", str(outbox), str(talk))
    assert again.returncode == 0, again.stderr
    assert "talk.wav: already transcribed" in again.stderr and "--overwrite" in again.stderr
    assert (outbox / "talk.txt").read_text() == "corrected by hand\n"

    forced = _transcribe(env, "--outbox", str(outbox), "--overwrite", str(talk))
    assert forced.returncode == 0, forced.stderr
    assert "talk.wav -> talk.txt" in forced.stderr
    assert (outbox / "talk.txt").read_text() != "corrected by hand\n"

    # Found by the adversary: a link the user named failed with a bare ELOOP error.
    (tmp_path / "shortcut.wav").symlink_to(talk)
    linked = _transcribe(env, "--outbox", str(tmp_path / "linked"), str(tmp_path / "shortcut.wav"))
    assert linked.returncode == 0, linked.stderr
    assert (tmp_path / "linked" / "talk.txt").exists()


def test_the_progress_bar_counts_audio_not_files(tiny_model, tmp_path) -> None:
    """At a terminal the bar shows the audio done of the file's length (a 25-minute file
    used to sit at 0/1 until it was finished)."""
    talk = write_soundfile(tmp_path / "talk.wav", 3, 16000, "PCM_16")
    env = _env(tiny_model, COLUMNS="120")
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(
            [*CLI, "--log-level", "ERROR", "transcribe", str(talk)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=follower,
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(300) == 0, shown[-2000:]
    finally:
        os.close(leader)
    text = shown.decode(errors="replace")
    assert "of 0:03 audio" in text, text[-2000:]
    assert "0/1" not in text
