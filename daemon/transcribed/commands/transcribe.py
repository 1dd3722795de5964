"""`transcribed transcribe FILE…`: the daemon's pipeline for a few files, with a progress bar.

Same decoder child, model and outbox writers as the daemon; no queue, no disposal. The bar
moves with the audio transcribed (a 25-minute file is not "0 of 1" for 25 minutes), and a
file whose transcript is already there is not transcribed again unless asked: the first
run's files may have been edited since.
"""

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from transcribed.audio.memory import pin_mmap_threshold
from transcribed.engines import engine_kind
from transcribed.errors import TranscribedError
from transcribed.files.content import hash_file
from transcribed.files.names import display_name
from transcribed.logs import get_logger
from transcribed.model.pipeline import StreamProgress, transcribe_stream
from transcribed.output.outbox import Outbox
from transcribed.output.search_index import clock
from transcribed.output.transcript import SourceInfo
from transcribed.servers.vllm_engine import RemoteEngine
from transcribed.service import (
    load_aligner,
    load_diarizer,
    make_decoder,
    make_outbox,
)
from transcribed.settings import ModelSettings

if TYPE_CHECKING:
    from transcribed.audio.decoder import ChildDecoder
    from transcribed.model.aligner import Aligner
    from transcribed.model.diarizer import Diarizer
    from transcribed.model.engine import Engine

log = get_logger(__name__)


@dataclass
class _Tools:
    """What every file is run through, loaded once."""

    settings: ModelSettings
    engine: "Engine | RemoteEngine"
    decoder: "ChildDecoder"
    diarizer: "Diarizer | None"
    aligner: "Aligner | None"
    console: Console
    overwrite: bool


def transcribe_files(
    files: list[Path], settings: ModelSettings, outbox_dir: Path | None, overwrite: bool = False
) -> int:
    """Transcribe each file; return how many failed. Outputs go beside each file by default;
    a file already transcribed there (same content and name) is skipped unless `overwrite`."""
    pin_mmap_threshold()
    diarizer = load_diarizer(settings)
    engine = _recognizer(settings)
    tools = _Tools(
        settings,
        engine,
        make_decoder(settings),
        diarizer,
        load_aligner(settings),
        Console(stderr=True, soft_wrap=True),
        overwrite,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[audio]}"),
        TimeRemainingColumn(),
    )
    try:
        # The bar is for a person at a terminal; a log or a pipe gets the result lines only.
        shown = tools.console.is_terminal
        with Progress(
            *columns, console=tools.console, transient=True, disable=not shown
        ) as progress:
            failures = 0
            for number, path in enumerate(files, 1):
                label = f"[{number}/{len(files)}] {display_name(path.name)}"
                task = progress.add_task(label, total=None, audio="")
                # A link the user names is followed (their own command; the daemon never does).
                source = Path(os.path.realpath(path)) if path.is_symlink() else path
                failures += not _one_file(tools, source, outbox_dir or path.parent, progress, task)
                progress.remove_task(task)
    finally:
        tools.decoder.close()
        if isinstance(engine, RemoteEngine):
            engine.pool.close()
    return failures


def _one_file(tools: _Tools, path: Path, folder: Path, progress: Progress, task: TaskID) -> bool:
    """Transcribe and publish one file, saying what was written; False when it failed."""
    shown = display_name(str(path))
    try:
        source = _source(path)
        outbox = make_outbox(folder, tools.settings)
        if not tools.overwrite and (earlier := _published(outbox, path, source)) is not None:
            tools.console.print(
                f"{shown}: already transcribed ({display_name(str(earlier))}); "
                "--overwrite transcribes it again"
            )
            return True
        transcript = transcribe_stream(
            _measured(tools.decoder.stream(path, path.name), tools.decoder, progress, task),
            source,
            tools.engine,
            chunk_seconds=tools.settings.chunk_seconds,
            language=tools.settings.language,
            aligner=tools.aligner,
            speakers=tools.diarizer.open() if tools.diarizer is not None else None,
            max_speakers=tools.settings.max_speakers,
            on_progress=_moved(tools.decoder, progress, task),
            started=time.monotonic(),
        )
        written = outbox.publish(transcript, path.name)
    except (TranscribedError, OSError) as error:
        tools.console.print(f"[red]{shown}: {error}[/red]", highlight=False)
        log.warning("transcribe.failed", file=shown, error=str(error))
        return False
    tools.console.print(f"{shown} -> {_written(written, path.parent)}", highlight=False)
    return True


def _published(outbox: Outbox, path: Path, source: SourceInfo) -> Path | None:
    return outbox.published(path.name, source.sha256, source.name)


def _written(paths: list[Path], beside: Path) -> str:
    """Every file written, text and subtitles first and the JSON last; the folder once when
    it is not the recording's own."""
    ordered = [*paths[1:], *paths[:1]]  # the outbox writes (and lists) the JSON first
    names = ", ".join(display_name(path.name) for path in ordered)
    folder = paths[0].parent
    return names if folder == beside else f"{names} (in {display_name(str(folder))})"


def _measured(
    blocks: Iterator[np.ndarray], decoder: "ChildDecoder", progress: Progress, task: TaskID
) -> Iterator[np.ndarray]:
    """The decoded blocks, giving the bar its length as soon as the header tells it."""
    told = False
    for block in blocks:
        if not told and decoder.expected_seconds:
            progress.update(task, total=decoder.expected_seconds, audio=_audio(0, decoder))
            progress.refresh()  # shown now: a short file may be done before the next redraw
            told = True
        yield block


def _moved(
    decoder: "ChildDecoder", progress: Progress, task: TaskID
) -> Callable[[StreamProgress], None]:
    def moved(transcribed: StreamProgress) -> None:
        seconds = transcribed.done
        progress.update(task, completed=seconds, audio=_audio(seconds, decoder))

    return moved


def _audio(seconds: float, decoder: "ChildDecoder") -> str:
    expected = decoder.expected_seconds
    return f"{clock(seconds)} of {clock(expected)} audio" if expected else f"{clock(seconds)} audio"


def _recognizer(settings: ModelSettings) -> "Engine | RemoteEngine":
    """The resident model, or the configured servers: what the engine kind makes."""
    return engine_kind(settings).recognizer(settings, settings.batch_size, threading.Event())


def _source(path: Path) -> SourceInfo:
    content = hash_file(path)
    return SourceInfo(name=display_name(path.name), sha256=content.sha256, size=content.size)
