"""Batching across recordings: chunks of several jobs share model calls and every job gets
exactly its own results back; an out-of-memory batch is halved and nothing fails for it."""

import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from support.recordings import write_soundfile
from support.running import Daemon, events
from transcribed.errors import ShutdownRequested
from transcribed.model.batching import SharedRecognizer
from transcribed.output.transcript import ChunkText, ModelInfo

RATE = 16000


class Recording:
    """Answers each chunk with its own label (its first sample, written there by the test)
    and remembers how many chunks each call carried."""

    info = ModelInfo("recording", "cpu", "float32")
    batch_size = 8

    def __init__(self, delay: float = 0.05, fail_on: float | None = None) -> None:
        self.calls: list[int] = []
        self.delay = delay
        self.fail_on = fail_on

    def transcribe(self, chunks, language=None, context=None, should_stop=lambda: False):
        self.calls.append(len(chunks))
        time.sleep(self.delay)  # a model call takes a while: other jobs' chunks queue up
        labels = [float(chunk[0]) for chunk in chunks]
        if self.fail_on in labels:
            raise RuntimeError("this chunk breaks the model")
        return [ChunkText(f"chunk {label:g}", language, False) for label in labels]


def labelled(label: int, seconds: float = 3) -> np.ndarray:
    chunk = np.full(int(seconds * RATE), 0.1, np.float32)
    chunk[0] = label
    return chunk


def run_jobs(shared: SharedRecognizer, jobs: dict[int, list[list[int]]]) -> dict[int, object]:
    """Each job on its own thread, calling the shared model once per batch of labels."""
    results: dict[int, object] = {}

    def job(number: int) -> None:
        with shared.job():
            got: list[str] = []
            try:
                for batch in jobs[number]:
                    got += [t.text for t in shared.transcribe([labelled(n) for n in batch])]
            except Exception as error:  # the test inspects it
                results[number] = error
                return
            results[number] = got

    threads = [threading.Thread(target=job, args=(number,)) for number in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def serving(model) -> tuple[SharedRecognizer, threading.Event, threading.Thread]:
    stop = threading.Event()
    shared = SharedRecognizer(model, stop)
    thread = threading.Thread(target=shared.serve)
    thread.start()
    return shared, stop, thread


def test_chunks_of_several_recordings_share_calls_and_come_back_to_their_own_job() -> None:
    model = Recording()
    shared, stop, thread = serving(model)
    jobs = {job: [[job * 100 + i, job * 100 + i + 1] for i in range(0, 6, 2)] for job in (1, 2, 3)}
    try:
        results = run_jobs(shared, jobs)
    finally:
        stop.set()
        thread.join(5)
    for job, batches in jobs.items():
        assert results[job] == [f"chunk {n}" for batch in batches for n in batch]
    assert shared.merged_calls > 0, "some calls carried chunks of more than one recording"
    assert len(model.calls) < 9 and max(model.calls) > 2


def test_a_chunk_that_breaks_a_merged_call_fails_only_its_own_job() -> None:
    shared, stop, thread = serving(Recording(fail_on=201))
    try:
        results = run_jobs(shared, {1: [[101, 102]], 2: [[201, 202]], 3: [[301]]})
    finally:
        stop.set()
        thread.join(5)
    assert isinstance(results[2], RuntimeError)
    assert results[1] == ["chunk 101", "chunk 102"] and results[3] == ["chunk 301"]


def test_chunks_sent_one_at_a_time_by_several_recordings_share_calls() -> None:
    """`submit` (the pipeline's window): each chunk as it is cut, merged with the chunks every
    other recording has waiting, and each answer back to its own Future."""
    model = Recording()
    shared, stop, thread = serving(model)
    answers: dict[int, list[Future[ChunkText]]] = {}

    def job(number: int) -> None:
        with shared.job():
            answers[number] = [shared.submit(labelled(number * 100 + i)) for i in range(6)]
            for answer in answers[number]:
                answer.result(10)

    threads = [threading.Thread(target=job, args=(number,)) for number in (1, 2, 3)]
    try:
        for each in threads:
            each.start()
        for each in threads:
            each.join(30)
    finally:
        stop.set()
        thread.join(5)
    for number, sent in answers.items():
        assert [a.result().text for a in sent] == [f"chunk {number * 100 + i}" for i in range(6)]
    assert shared.merged_calls > 0 and max(model.calls) > 1


def test_a_chunk_called_off_before_the_model_takes_it_is_dropped() -> None:
    model = Recording()
    stop = threading.Event()
    shared = SharedRecognizer(model, stop)  # no model thread yet: nothing is taken
    dropped, kept = shared.submit(labelled(1)), shared.submit(labelled(2))
    assert dropped.cancel()
    thread = threading.Thread(target=shared.serve)
    thread.start()
    try:
        assert kept.result(10).text == "chunk 2"
    finally:
        stop.set()
        thread.join(5)
    assert model.calls == [1]


def test_stopping_ends_waiting_jobs_with_shutdown_not_an_error() -> None:
    stop = threading.Event()
    shared = SharedRecognizer(Recording(), stop)  # no model thread: nothing is ever taken
    stop.set()
    with pytest.raises(ShutdownRequested):
        shared.transcribe([labelled(1)])


@pytest.mark.slow
def test_an_out_of_memory_batch_is_halved_and_no_job_fails(folders, tiny_model, tmp_path):
    """Every 4-chunk model batch runs out of memory (injected): each is split in two and
    every recording is still transcribed once, none failed or retried."""
    env = folders.env(
        tiny_model,
        TRANSCRIBED_SETTLE_SECONDS="0.3",
        TRANSCRIBED_BATCH_SIZE="4",
        TRANSCRIBED_JOBS_AT_ONCE="3",
        TRANSCRIBED_CHUNK_SECONDS="5",
        TRANSCRIBED_TEST_FAULTS="model.batch~4 chunks=oom",
    )
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
        names = [f"r{seed}.wav" for seed in range(4)]
        # 22 s in 5 s chunks: each recording alone asks for a 4-chunk batch first, so the
        # fault fires whether or not the jobs' calls happen to be merged.
        for seed, name in enumerate(names):
            hidden = write_soundfile(folders.inbox / f".{name}", 22, RATE, "PCM_16", seed=seed)
            hidden.rename(folders.inbox / name)
        daemon.wait_for(lambda: len(list(folders.archive.iterdir())) == 4, 120)
    finally:
        assert daemon.stop() == 0
    logged = events(daemon.log_path)
    splits = [e for e in logged if e["event"] == "model.oom_split"]
    assert splits and all(e["batch"] == 4 and e["into"] == 2 for e in splits)
    assert not [e for e in logged if e["event"] in ("job.failed", "job.retry_later")]
    assert sorted(p.name for p in folders.outbox.glob("*.json")) == [
        f"r{seed}.json" for seed in range(4)
    ]


class Streaming(Recording):
    """A `RowEngine`: takes rows from the feed while it runs (as the decode loop does),
    answers each with its label, and breaks on a chunk labelled `fail_on`."""

    ceiling = 6

    def __init__(self, fail_on: float | None = None) -> None:
        super().__init__(delay=0.01, fail_on=fail_on)
        self.loops: list[int] = []  # rows each run_rows call took

    def run_rows(self, feed, should_stop) -> None:
        taken = 0
        while rows := feed.take(self.ceiling):
            taken += len(rows)
            for row in rows:
                label = float(row.audio[0])
                if label == self.fail_on:
                    raise RuntimeError("this chunk breaks the model")
                feed.done(row, ChunkText(f"chunk {label:g}", row.language, False))
            time.sleep(0.05)  # other rows decode; the answered jobs send their next chunks
        self.loops.append(taken)


def test_chunks_that_arrive_while_rows_decode_join_the_same_loop() -> None:
    """With a row engine, one model call takes the rows of every job, those sent while it
    runs included; each job gets exactly its own answers."""
    model = Streaming()
    shared, stop, thread = serving(model)
    jobs = {job: [[job * 100 + i, job * 100 + i + 1] for i in range(0, 8, 2)] for job in (1, 2, 3)}
    try:
        results = run_jobs(shared, jobs)
    finally:
        stop.set()
        thread.join(5)
    for job, batches in jobs.items():
        assert results[job] == [f"chunk {n}" for batch in batches for n in batch]
    assert max(model.loops) > model.ceiling, model.loops  # refilled from later requests
    assert not model.calls  # nothing went the one-call-at-a-time way


def test_a_chunk_that_breaks_a_streamed_call_fails_only_its_own_job() -> None:
    shared, stop, thread = serving(Streaming(fail_on=201))
    try:
        results = run_jobs(shared, {1: [[101, 102]], 2: [[201, 202]], 3: [[301]]})
    finally:
        stop.set()
        thread.join(5)
    assert isinstance(results[2], RuntimeError)
    assert results[1] == ["chunk 101", "chunk 102"] and results[3] == ["chunk 301"]


def test_the_resident_engine_decodes_every_jobs_rows_together(tiny_model) -> None:
    """The real engine behind the model thread: three recordings (one forced to another
    language) share its decode loop, and each gets what the engine gives it alone."""
    from transcribed.model.engine import Engine

    engine = Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=4)
    shared, stop, thread = serving(engine)
    chunks = {job: [labelled(job, seconds) for seconds in (2, 4, 3)] for job in (1, 2, 3)}
    languages = {1: None, 2: "zh", 3: None}
    results: dict[int, list[ChunkText]] = {}

    def job(number: int) -> None:
        with shared.job():
            results[number] = shared.transcribe(chunks[number], languages[number])

    threads = [threading.Thread(target=job, args=(number,)) for number in chunks]
    try:
        for each in threads:
            each.start()
        for each in threads:
            each.join(60)
    finally:
        stop.set()
        thread.join(10)
    for number in chunks:
        alone = engine.transcribe(chunks[number], languages[number])
        assert [r.text for r in results[number]] == [r.text for r in alone]
        assert {r.language for r in results[number]} == {languages[number]} - {None} or (
            languages[number] is None
        )


def test_a_long_streamed_call_that_progresses_is_not_taken_for_a_hung_one() -> None:
    """A decode loop fed for as long as chunks keep coming is one model call: the health
    check's `busy_for` counts from its last answer, not from its start."""
    model = Streaming()
    shared, stop, thread = serving(model)
    seen: list[float] = []
    jobs = {job: [[job * 100 + i] for i in range(12)] for job in (1, 2)}
    watching = threading.Event()

    def watch() -> None:
        while not watching.wait(0.02):
            seen.append(shared.busy_for())

    watcher = threading.Thread(target=watch)
    watcher.start()
    started = time.monotonic()
    try:
        run_jobs(shared, jobs)
    finally:
        watching.set()
        watcher.join(5)
        stop.set()
        thread.join(5)
    assert len(model.loops) < 6 and time.monotonic() - started > 0.5  # long calls
    assert max(seen) < 0.3, max(seen)


class Gated(Streaming):
    """A row engine that, after its first rows, waits for `gate` before it takes more."""

    def __init__(self) -> None:
        super().__init__()
        self.started, self.gate = threading.Event(), threading.Event()
        self.seen: list[float] = []

    def run_rows(self, feed, should_stop) -> None:
        taken = 0
        while rows := feed.take(self.ceiling):
            taken += len(rows)
            self.seen += [float(row.audio[0]) for row in rows]
            self.started.set()
            self.gate.wait(10)
            for row in rows:
                feed.done(row, ChunkText(f"chunk {float(row.audio[0]):g}", None, False))
        self.loops.append(taken)


def test_chunks_sent_one_at_a_time_join_a_running_decode_loop_and_called_off_ones_do_not() -> None:
    """The window's `submit` into the streamed decode loop: a chunk sent while the loop runs
    is one of its rows, and one cancelled before the loop takes it never reaches the model."""
    model = Gated()
    shared, stop, thread = serving(model)
    try:
        with shared.job():
            first = shared.submit(labelled(1))
            assert model.started.wait(10)
            dropped, kept = shared.submit(labelled(2)), shared.submit(labelled(3))
            assert dropped.cancel()
            model.gate.set()
            assert first.result(10).text == "chunk 1" and kept.result(10).text == "chunk 3"
    finally:
        stop.set()
        thread.join(5)
    assert model.seen == [1, 3] and model.loops == [2] and not model.calls
