"""The diarizer on the tiny random checkpoint: streamed with its speaker cache, batched across
recordings, refused clearly at start when unusable, and speakers end to end in every format.

Its labels are random: these tests assert structure (streaming equals the whole-recording
pass, labels numbered by first appearance, formats that parse), never who spoke.
"""

import io
import itertools
import json
import re
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import srt
import webvtt

from support.recordings import write_soundfile
from support.running import cli, transcribe_once
from transcribed.errors import ConfigError, ModelError
from transcribed.model.diarizer import Diarizer
from transcribed.service import load_diarizer
from transcribed.settings import Settings, load_settings

RATE = 16000
LABEL = re.compile(r"S[1-8]")


@pytest.fixture(scope="module")
def diarizer(tiny_diarizer: Path) -> Diarizer:
    return Diarizer.load(str(tiny_diarizer), "cpu", allow_download=False)


def _voices(seconds: float, seed: int = 0) -> np.ndarray:
    """Two 'voices' (pitches) taking turns, with pauses: input the random model reacts to."""
    t = np.arange(int(seconds * RATE)) / RATE
    pitch = np.where(np.sin(2 * np.pi * t / (17 + seed)) > 0, 140.0, 230.0)
    talking = np.sin(2 * np.pi * 0.3 * t) > -0.5
    noise = 0.01 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / RATE) * talking + noise).astype(np.float32)


def _stream_all(diarizer: Diarizer, audio: np.ndarray, block: int = 51_234) -> np.ndarray:
    """Every frame's speaker probabilities; the stream never holds more than one step."""
    stream, parts = diarizer.open(), []
    for start in range(0, len(audio), block):
        parts.append(stream.feed(audio[start : start + block]))
        assert stream.held_samples < diarizer.step_samples
    return np.concatenate([*parts, stream.finish()])


@pytest.mark.parametrize("seconds", [240.37, 7.0])  # several minutes; less than a step
def test_streaming_gives_what_one_pass_over_the_whole_recording_gives(
    diarizer: Diarizer, tiny_diarizer: Path, seconds: float
) -> None:
    """Fed in odd-sized blocks, the speaker cache carries each speaker's slot from step to
    step exactly as the model's own pass over the whole recording does."""
    from transformers import AutoModelForAudioFrameClassification, AutoProcessor

    audio = _voices(seconds)
    streamed = _stream_all(diarizer, audio)
    processor = AutoProcessor.from_pretrained(tiny_diarizer)
    model = AutoModelForAudioFrameClassification.from_pretrained(tiny_diarizer)
    whole = model(**processor(audio, sampling_rate=RATE)).logits.sigmoid()[0].detach().numpy()
    assert streamed.shape == (len(audio) // 160, 8)
    np.testing.assert_allclose(streamed, whole[: len(streamed)], atol=1e-5)


def test_steps_of_recordings_waiting_together_run_as_one_batch(diarizer: Diarizer) -> None:
    recordings = [_voices(70, seed) for seed in range(3)]
    alone = [_stream_all(diarizer, audio) for audio in recordings]
    together: dict[int, np.ndarray] = {}
    merged_before = diarizer.merged_calls

    def run(index: int) -> None:
        together[index] = _stream_all(diarizer, recordings[index])

    # White box: hold the model until every recording's first step waits for it.
    with diarizer._calling:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(recordings))]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(diarizer._waiting) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in threads:
        thread.join(60)
    assert diarizer.merged_calls > merged_before
    for index, expected in enumerate(alone):
        np.testing.assert_allclose(together[index], expected, atol=1e-5)


def _broken(tiny_diarizer: Path, tmp_path: Path) -> Path:
    broken = Path(shutil.copytree(tiny_diarizer, tmp_path / "broken"))
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted download
    return broken


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("missing folder", "diarizer folder /nonexistent/diarizer does not exist"),
        ("not fetched", "hf download nvidia/Nemotron-3-Diarization"),
        ("broken weights", "model.safetensors has an unreadable header"),
        ("the ASR model", "holds a 'qwen3_asr' model, not a speaker diarizer"),
    ],
)
def test_an_unusable_diarizer_is_refused_with_what_to_do(
    which: str, message: str, tiny_diarizer: Path, tiny_model: Path, tmp_path: Path
) -> None:
    if which == "broken weights":
        model = str(_broken(tiny_diarizer, tmp_path))
    else:
        model = {
            "missing folder": "/nonexistent/diarizer",
            "not fetched": "nvidia/Nemotron-3-Diarization",
            "the ASR model": str(tiny_model),
        }[which]
    with pytest.raises(ModelError, match=re.escape(message)):
        Diarizer.load(model, "cpu", allow_download=False)


def test_a_transformers_without_the_streaming_api_is_named(tiny_diarizer, monkeypatch) -> None:
    import transformers

    monkeypatch.setattr(transformers, "Nemotron3DiarizationProcessor", None)
    with pytest.raises(ModelError, match=r"need a newer transformers than .*pip install -U"):
        Diarizer.load(str(tiny_diarizer), "cpu", allow_download=False)


@pytest.mark.slow
def test_the_daemon_refuses_to_start_with_a_broken_diarizer(
    folders, tiny_model, tiny_diarizer, tmp_path
) -> None:
    """At start, in one line, exit 2: not a failed job, and the waiting recording untouched."""
    waiting = write_soundfile(folders.inbox / "meeting.wav", 3, RATE, "PCM_16")
    env = folders.env(tiny_model, TRANSCRIBED_DIARIZER=str(_broken(tiny_diarizer, tmp_path)))
    done = cli("run", env=env)
    assert done.returncode == 2, done.stderr
    problem = [line for line in done.stderr.splitlines() if line.startswith("transcribed:")]
    assert len(problem) == 1 and "diarizer folder" in problem[0]
    assert "model.safetensors has an unreadable header" in problem[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert waiting.is_file() and not any(folders.failed.iterdir())
    assert not any(folders.outbox.iterdir())


def test_every_format_names_the_speakers_and_still_parses(
    tiny_model, tiny_diarizer, tmp_path
) -> None:
    """A recording of several diarizer steps through the real one-shot CLI, diarizer on."""
    audio = tmp_path / "meeting.wav"
    soundfile.write(audio, _voices(65), RATE, subtype="PCM_16")
    transcribe_once(
        audio, tiny_model, diarizer=str(tiny_diarizer), formats='["txt", "srt", "vtt", "tsv"]'
    )
    data = json.loads((tmp_path / "meeting.json").read_text())
    segments, spoken = data["segments"], [s for s in data["segments"] if s["text"]]
    assert spoken and all(LABEL.fullmatch(s["speaker"]) for s in spoken)
    assert all(s["speaker"] is None and s["overlap"] == [] for s in segments if not s["text"])
    assert segments[0]["start"] == 0 and segments[-1]["end"] == 65
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(segments))
    seen = list(dict.fromkeys(label for s in spoken for label in [s["speaker"], *s["overlap"]]))
    assert seen == [f"S{n}" for n in range(1, len(seen) + 1)], "numbered by first appearance"
    assert list(data["speakers"]) == seen
    assert sum(entry["share"] for entry in data["speakers"].values()) == pytest.approx(1, abs=0.02)

    turns = [label for label, _ in itertools.groupby(s["speaker"] for s in spoken)]
    paragraphs = (tmp_path / "meeting.txt").read_text().split("\n\n")
    labels = [m.group(1) for p in paragraphs if (m := re.match(r"(S\d+): \S", p))]
    assert paragraphs[0].startswith("S1: ") and labels == turns, "a label at every change"

    cues = list(srt.parse((tmp_path / "meeting.srt").read_text()))
    assert cues and all(re.match(r"S\d+: \S", cue.content) for cue in cues)
    captions = webvtt.from_buffer(io.StringIO((tmp_path / "meeting.vtt").read_text()))
    assert len(captions) == len(cues) and all(LABEL.fullmatch(c.voice) for c in captions)
    assert [c.content.split(": ", 1)[1] for c in cues] == [c.text for c in captions]
    rows = (tmp_path / "meeting.tsv").read_text().splitlines()
    assert rows[0] == "start\tend\tlanguage\tspeaker\toverlap\ttext"
    assert [row.split("\t")[3] for row in rows[1:]] == [s["speaker"] or "" for s in segments]


def test_labels_asked_for_without_a_diarizer_or_beyond_it_are_refused_at_start(
    folders, tmp_path, monkeypatch
) -> None:
    config = tmp_path / "config.toml"
    base = (
        f'inbox = "{folders.inbox}"\noutbox = "{folders.outbox}"\n'
        f'failed_dir = "{folders.failed}"\nstate_dir = "{folders.state}"\ndisposal = "delete"\n'
    )
    config.write_text(base + '[[folders]]\npath = "calls"\ndiarize = true\n')
    with pytest.raises(ConfigError, match="'calls' sets diarize = true, but no diarizer"):
        load_settings(config, Settings)
    config.write_text(base + "max_speakers = 9\n")
    with pytest.raises(ConfigError, match="max_speakers"):
        load_settings(config, Settings)
    # A checkpoint that tells fewer speakers apart than a folder's cap.
    config.write_text(
        base + 'diarizer = "/models/four"\n[[folders]]\npath = "panel"\nmax_speakers = 6\n'
    )
    settings = load_settings(config, Settings)
    monkeypatch.setattr(Diarizer, "load", lambda *args, **kwargs: SimpleNamespace(speakers=4))
    with pytest.raises(ConfigError, match="max_speakers = 6, but the diarizer tells at most 4"):
        load_diarizer(settings)
