"""`transcribed transcribe FILE…`: the daemon's pipeline for a few files, with a progress bar.

Same decoder child, model and outbox writers as the daemon; no queue, no disposal.
"""

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from transcribed.audio.memory import pin_mmap_threshold
from transcribed.errors import TranscribedError
from transcribed.files.content import hash_file
from transcribed.files.names import display_name
from transcribed.logs import get_logger
from transcribed.model.pipeline import transcribe_stream
from transcribed.output.transcript import SourceInfo
from transcribed.servers.vllm_engine import RemoteEngine
from transcribed.service import (
    load_aligner,
    load_diarizer,
    load_engine,
    make_decoder,
    make_outbox,
)
from transcribed.settings import ModelSettings

if TYPE_CHECKING:
    from transcribed.model.engine import Engine

log = get_logger(__name__)


def transcribe_files(files: list[Path], settings: ModelSettings, outbox_dir: Path | None) -> int:
    """Transcribe each file; return how many failed. Outputs go beside each file by default."""
    pin_mmap_threshold()
    diarizer = load_diarizer(settings)
    engine = _recognizer(settings)
    aligner = load_aligner(settings)
    decoder = make_decoder(settings)
    console = Console(stderr=True)
    failures = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("transcribing", total=len(files))
            for path in files:
                progress.update(task, description=display_name(path.name))
                started = time.monotonic()
                try:
                    transcript = transcribe_stream(
                        decoder.stream(path, path.name),
                        _source(path),
                        engine,
                        chunk_seconds=settings.chunk_seconds,
                        language=settings.language,
                        aligner=aligner,
                        speakers=diarizer.open() if diarizer is not None else None,
                        max_speakers=settings.max_speakers,
                        started=started,
                    )
                    outbox = make_outbox(outbox_dir or path.parent, settings)
                    written = outbox.publish(transcript, path.name)
                    console.print(f"{display_name(str(path))} -> {display_name(str(written[-1]))}")
                except (TranscribedError, OSError) as error:
                    failures += 1
                    console.print(f"[red]{display_name(str(path))}: {error}[/red]")
                    log.warning("transcribe.failed", file=display_name(str(path)), error=str(error))
                progress.advance(task)
    finally:
        decoder.close()
        if isinstance(engine, RemoteEngine):
            engine.pool.close()
    return failures


def _recognizer(settings: ModelSettings) -> "Engine | RemoteEngine":
    """The resident model, or with engine = "vllm" the configured servers."""
    if settings.engine == "vllm":
        return RemoteEngine.connect(settings, settings.batch_size, threading.Event())
    return load_engine(settings)


def _source(path: Path) -> SourceInfo:
    content = hash_file(path)
    return SourceInfo(name=display_name(path.name), sha256=content.sha256, size=content.size)
