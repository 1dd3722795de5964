"""The one place that builds the daemon's objects from settings and runs them.

Threads: watchdog's observer hands paths to the intake thread, which claims settled files
into the queue (large ones hashed on the hasher's thread); `jobs_at_once` worker threads
each transcribe one recording, their chunks batched together by the model thread; one
disposal thread disposes of originals whose transcripts are durable; hooks run on their own
thread. One supervisor (`loops.supervisor`) runs them all, as `bench` does. The main thread
reports health to systemd, reloads the config on SIGHUP and restarts a dead observer (unless
systemd's watchdog is on: then systemd restarts the whole service). Signal handlers only set
a flag; a second SIGTERM forces an exit.
"""

import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from transcribed.audio.decoder import ChildDecoder, DecoderPool
from transcribed.audio.memory import pin_mmap_threshold
from transcribed.disposal.disposer import Disposer
from transcribed.engines import engine_kind
from transcribed.errors import ConfigError
from transcribed.files.content import ignore_lease_breaks
from transcribed.files.durable import remove_stale_temps
from transcribed.files.names import display_name
from transcribed.host.hooks import HookCall, Hooks
from transcribed.host.isolation import (
    ISOLATION_HINT,
    SERVERS_ONLY_HINT,
    isolation_problem,
    servers_only_problem,
)
from transcribed.host.metrics import write_metrics
from transcribed.host.notify import Notifier
from transcribed.intake.claim import Intake, recover_claims
from transcribed.intake.hashing import LargeFileHasher
from transcribed.intake.reconcile import Reconciler
from transcribed.intake.watcher import ObserverSupervisor
from transcribed.jobs.destinations import Destinations
from transcribed.jobs.disposals import Disposals
from transcribed.jobs.rules import Rules
from transcribed.jobs.worker import Decoder, Worker
from transcribed.logs import get_logger
from transcribed.loops.supervisor import Supervisor
from transcribed.model.aligner import Aligner
from transcribed.model.batching import SerializedAligner, SharedModel
from transcribed.model.diarizer import Diarizer
from transcribed.model.engine import gpu_defaults
from transcribed.output.outbox import Outbox
from transcribed.output.search_index import SearchIndex
from transcribed.settings import (
    ModelSettings,
    Settings,
    check_folders,
    check_programs,
    load_settings,
)
from transcribed.settings import reload as settings_reload
from transcribed.state.instance import InstanceLock
from transcribed.state.overview import STALLED_SECONDS, service_status
from transcribed.state.queue import Job, JobQueue, is_damaged
from transcribed.state.rebuild import index_disk
from transcribed.state.workfolder import WorkFolder

log = get_logger(__name__)

SHUTDOWN_GRACE_SECONDS = 20.0
MODEL_LOAD_BUDGET_SECONDS = 600.0  # asked of systemd before loading: large models load slowly
WORKER_STALL_SECONDS = STALLED_SECONDS  # no beat this long: the worker is stuck (a hung GPU call)
# Counting jobs scans the state index (10 ms at 200,000 jobs): the STATUS line is refreshed
# this often, while the watchdog check only pings the database.
STATUS_SECONDS = 5.0


def make_decoder(settings: ModelSettings) -> ChildDecoder:
    return ChildDecoder(
        timeout_seconds=settings.decode_timeout_seconds,
        memory_bytes=settings.decode_memory_mb * 1024 * 1024,
        max_seconds=settings.max_duration_seconds,
    )


def make_outbox(
    root: Path,
    settings: ModelSettings,
    formats: tuple[str, ...] | None = None,
    inbox: Path | None = None,
) -> Outbox:
    return Outbox(
        root,
        formats=formats or tuple(settings.formats),
        mode=settings.output_mode,
        language_in_names=settings.language_in_names,
        inbox=inbox,
    )


def worker_decoders(settings: ModelSettings, jobs_at_once: int) -> list[Decoder]:
    """One decoder each for the transcription workers: its own process per worker, or (with
    an engine kind whose workers share them) more workers sharing `jobs_at_once` processes."""
    sharing = engine_kind(settings).workers_per_decoder
    if sharing == 1:
        return [make_decoder(settings) for _ in range(jobs_at_once)]
    pool = DecoderPool([make_decoder(settings) for _ in range(jobs_at_once)])
    return [pool.lease() for _ in range(jobs_at_once * sharing)]


def make_worker(
    settings: Settings,
    work: WorkFolder,
    jobs: JobQueue,
    model: SharedModel,
    stop: threading.Event,
    wake_disposals: threading.Event,
    *,
    decoder: Decoder | None = None,
    aligner: SerializedAligner | None = None,
    diarizer: Diarizer | None = None,
    on_finished: Callable[[Job, str], None] = lambda job, outcome: None,
) -> Worker:
    """A worker with its own database connection (one per thread) and a decoder (its own
    process unless given one: `worker_decoders`), wired as the daemon runs it (`bench` too):
    it wakes the disposal thread, which alone disposes."""
    return Worker(
        jobs=jobs,
        work=work,
        decoder=decoder or make_decoder(settings),
        recognizer=model,
        rules=make_rules(settings),
        destinations=make_destinations(settings, work, jobs),
        chunk_seconds=settings.chunk_seconds,
        max_attempts=settings.max_attempts,
        retry_seconds=settings.retry_seconds,
        settle_seconds=settings.settle_seconds,
        aligner=aligner,
        diarizer=diarizer,
        stop=stop,
        on_finished=on_finished,
        job_scope=model.job,
        wake_disposals=wake_disposals,
        search=SearchIndex(settings.search_database),
    )


def make_disposals(
    settings: Settings,
    work: WorkFolder,
    wake: threading.Event,
    on_finished: Callable[[Job, str], None] = lambda job, outcome: None,
) -> Disposals:
    """The disposal loop, with its own database connection."""
    jobs = JobQueue(settings.database)
    return Disposals(
        jobs=jobs,
        work=work,
        rules=make_rules(settings),
        destinations=make_destinations(settings, work, jobs),
        max_attempts=settings.max_attempts,
        retry_seconds=settings.retry_seconds,
        settle_seconds=settings.settle_seconds,
        on_finished=on_finished,
        wake=wake,
        search=SearchIndex(settings.search_database),
    )


def make_destinations(settings: Settings, work: WorkFolder, jobs: JobQueue) -> Destinations:
    return Destinations(
        lambda formats: make_outbox(settings.outbox, settings, formats, settings.inbox),
        lambda policy: Disposer(
            jobs,
            work,
            policy,
            settings.archive_dir,
            settings.failed_dir,
            settings.output_mode,
            hold_unseen=settings.settle_seconds_unseen,
        ),
    )


def make_intake(
    settings: Settings,
    work: WorkFolder,
    arrivals: "queue.SimpleQueue[str]",
    hasher: LargeFileHasher | None = None,
) -> Intake:
    jobs = JobQueue(settings.database)  # its own connection: it runs in its own thread
    return Intake(
        inbox=settings.inbox,
        work=work,
        jobs=jobs,
        arrivals=arrivals,
        settle_seconds=settings.settle_seconds,
        rescan_seconds=settings.rescan_seconds,
        stalled_seconds=settings.stalled_seconds,
        settle_seconds_unseen=settings.settle_seconds_unseen,
        hasher=hasher,
        reconciler=Reconciler(jobs, work, hasher),
    )


@dataclass(frozen=True)
class Pace:
    """How soon an idle loop looks for work again: gently in the daemon, at once in `bench`,
    which measures throughput."""

    idle_seconds: float = 0.5  # a worker or the disposals with nothing to do
    intake_seconds: float = 0.25  # between the intake's looks at what arrived


@dataclass
class DaemonLoops:
    """The loops that take recordings in and through, wired as the daemon runs them; `bench`
    runs the very same (the hooks and the watcher are the daemon's alone)."""

    intake: Intake
    hasher: LargeFileHasher
    workers: list[Worker]
    disposals: Disposals

    @property
    def with_jobs(self) -> list[Worker | Disposals]:
        """The loops that act on jobs: they take the reloadable job settings."""
        return [*self.workers, self.disposals]

    def supervise(self, supervisor: Supervisor, model: SharedModel, pace: Pace) -> None:
        """Hand every loop to `supervisor`, the model's thread with them."""
        supervisor.add(self.intake.loop(pace.intake_seconds))
        supervisor.add_thread("model", model.serve, model.busy_for, WORKER_STALL_SECONDS)
        supervisor.add(self.disposals.loop(pace.idle_seconds, WORKER_STALL_SECONDS))
        supervisor.add(self.hasher.loop())
        for number, worker in enumerate(self.workers):
            supervisor.add(worker.loop(f"worker-{number}", pace.idle_seconds, WORKER_STALL_SECONDS))


def make_loops(
    settings: Settings,
    work: WorkFolder,
    model: SharedModel,
    stop: threading.Event,
    arrivals: "queue.SimpleQueue[str]",
    decoders: list[Decoder],
    *,
    aligner: SerializedAligner | None = None,
    diarizer: Diarizer | None = None,
    on_finished: Callable[[Job, str], None] = lambda job, outcome: None,
) -> DaemonLoops:
    """Every loop with its own database connection (one per thread); one transcription
    worker per decoder (`worker_decoders`), and one disposal thread, the only one that
    disposes, so two never race on one original."""
    wake_disposals = threading.Event()
    hasher = LargeFileHasher(settings.database, work, stop)
    workers = [
        make_worker(
            settings,
            work,
            JobQueue(settings.database),
            model,
            stop,
            wake_disposals,
            decoder=decoder,
            aligner=aligner,
            diarizer=diarizer,
            on_finished=on_finished,
        )
        for decoder in decoders
    ]
    disposals = make_disposals(settings, work, wake_disposals, on_finished)
    return DaemonLoops(make_intake(settings, work, arrivals, hasher), hasher, workers, disposals)


def _no_database(path: Path) -> bool:
    """No job database, or one truncated to nothing: the disk is not indexed. (A database
    with no rows left, after `jobs prune`, is not lost: its jobs were forgotten on purpose.)"""
    try:
        return os.stat(path).st_size == 0
    except FileNotFoundError:
        return True


def open_job_database(settings: Settings) -> JobQueue:
    """The job database, checked; ConfigError with the way out when it is damaged."""
    try:
        jobs = JobQueue(settings.database)
        verdict = jobs.check()
    except sqlite3.Error as error:
        if not is_damaged(error):
            raise ConfigError(
                f"cannot open the job database {settings.database}: {error}"
            ) from None
        verdict = str(error)
    if verdict != "ok":
        raise ConfigError(
            f"the job database {settings.database} is damaged ({verdict}). Stop the daemon "
            "and run `transcribed recover` (same config): it sets the database aside and "
            "rebuilds it from the work folder, the outbox and the failed folder, so nothing "
            "is lost or transcribed twice"
        )
    return jobs


def make_rules(settings: Settings) -> Rules:
    return Rules(
        settings.folders,
        inbox=settings.inbox,
        language=settings.language,
        formats=tuple(settings.formats),
        disposal=settings.disposal,
        diarize=settings.diarizer is not None,
        max_speakers=settings.max_speakers,
    )


def load_diarizer(settings: ModelSettings) -> Diarizer | None:
    """The diarizer the settings ask for, refusing a speaker cap beyond what it can tell."""
    if settings.diarizer is None:
        return None
    diarizer = Diarizer.load(
        settings.diarizer, settings.device, allow_download=settings.allow_download
    )
    rules = settings.folders if isinstance(settings, Settings) else []
    caps = [settings.max_speakers, *(rule.max_speakers for rule in rules)]
    if (most := max((cap for cap in caps if cap), default=0)) > diarizer.speakers:
        raise ConfigError(
            f"max_speakers = {most}, but the diarizer tells at most {diarizer.speakers} "
            "speakers apart"
        )
    return diarizer


def load_aligner(settings: ModelSettings) -> Aligner | None:
    if settings.aligner is None:
        return None
    return Aligner.load(settings.aligner, settings.device, allow_download=settings.allow_download)


def fit_to_ceiling(settings: Settings, model: SharedModel) -> Settings:
    """On a GPU, `batch_size` and `jobs_at_once` left unset follow from the batch ceiling
    measured at load (`engine.gpu_defaults`): enough recordings at once to keep it full."""
    ceiling = getattr(model, "ceiling", None)
    if not engine_kind(settings).sized_by_ceiling or ceiling is None:
        return settings
    if not model.info.device.startswith("cuda"):
        return settings
    batch, jobs = gpu_defaults(int(ceiling))
    chosen = {"batch_size": batch, "jobs_at_once": jobs}
    update = {key: value for key, value in chosen.items() if key not in settings.model_fields_set}
    if "batch_size" in update:
        model.batch_size = batch  # type: ignore[misc]  # SharedRecognizer's is settable
    log.info(
        "model.sized", ceiling=ceiling, **{key: update.get(key, "configured") for key in chosen}
    )
    return settings.model_copy(update=update)


def load_shared_model(settings: Settings, stop: threading.Event) -> SharedModel:
    """What the workers share: the resident model behind one model thread, or the pool of
    vLLM servers (whose state the status file in state_dir tells `transcribed status`)."""
    return engine_kind(settings).shared(settings, stop)


class Daemon:
    """Runs until SIGTERM/SIGINT; then stops intake, lets the current job finish or requeue."""

    def __init__(
        self,
        settings: Settings,
        config_path: Path | None = None,
        reloads_asked: list[int] | None = None,  # SIGHUPs that came before our handler
    ) -> None:
        check_folders(settings)
        self._lock = InstanceLock(settings.state_dir)
        self._lock.acquire()  # before anything is recovered, requeued or cleaned
        self._work = WorkFolder(settings.inbox)
        self._work.open()
        check_isolation(
            settings.require_offline,
            servers_only=engine_kind(settings).network == "servers_only",
        )
        pin_mmap_threshold()
        self._config_path = config_path
        self._reload = threading.Event()
        self._problem: str | None = None  # the last health problem logged
        self.notifier = Notifier()
        self.notifier.extend_timeout(MODEL_LOAD_BUDGET_SECONDS)
        self.notifier.status("recovering and loading the model")
        self._status_due = 0.0  # when the STATUS line is next refreshed
        self.settings = settings
        self.stop = threading.Event()
        self.left_running: list[str] = []  # loops that had not ended by the end of a stop
        # Before the long model load: a SIGTERM or SIGHUP then is handled, not fatal.
        self._install_signal_handlers()
        if reloads_asked:  # during the start, before this handler: the main loop reloads
            self._reload.set()
        ignore_lease_breaks()  # before the intake probes a file for writers (files.content)
        lost = _no_database(settings.database)  # before opening it makes one
        self._jobs = open_job_database(settings)
        self._arrivals: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._recover_disk(settings, lost)
        # The diarizer first: a missing one is found before the long model load, and the
        # model's batches are sized from the GPU memory left beside it.
        self._diarizer = load_diarizer(settings)
        # One model thread; each worker transcribes one recording with its own decoder
        # process, and their chunks share model batches (or go to the engine servers).
        self._model = load_shared_model(settings, self.stop)
        settings = self.settings = fit_to_ceiling(settings, self._model)
        aligner = load_aligner(settings)
        self._loops = make_loops(
            settings,
            self._work,
            self._model,
            self.stop,
            self._arrivals,
            worker_decoders(settings, settings.jobs_at_once),
            aligner=SerializedAligner(aligner) if aligner is not None else None,
            diarizer=self._diarizer,
            on_finished=self._job_finished,
        )
        for worker in self._loops.workers:
            # Started now, while one thread runs: the first job does not wait for a child
            # to import its libraries, and no child is half-spawned when another thread
            # ends the process (the orphan would print a traceback into the journal).
            worker.decoder.start()
        self._hooks = Hooks(
            settings.database,
            settings.on_done,
            settings.on_failed,
            settings.hook_timeout_seconds,
            self.stop,
        )
        self._supervisor = Supervisor(self.stop)
        self._supervisor.add(self._hooks.loop())
        self._loops.supervise(self._supervisor, self._model, Pace())

    def _recover_disk(self, settings: Settings, lost: bool) -> None:
        """Before anything runs: finish claims a crash cut short, index the disk when the
        database was `lost` (the work folder is then claimed again by the first rescan),
        forget the last run's waiting files, rebuild a missing or damaged search index,
        remove stale temp files."""
        if recovered := recover_claims(self._jobs, self._work):
            log.info("recover.claims_finished", jobs=recovered)
        if lost:
            indexed = index_disk(self._jobs, settings.outbox, settings.failed_dir)
            if indexed.transcripts or indexed.failed:
                log.warning(
                    "recover.database_rebuilt",
                    transcripts=indexed.transcripts,
                    failed=indexed.failed,
                    hint="the job database was new: it was rebuilt from the outbox and the "
                    "failed folder",
                )
        self._jobs.clear_waiting()
        self._repair_search_index(settings)
        for folder in (settings.outbox, settings.archive_dir, settings.failed_dir):
            if folder is not None and (removed := remove_stale_temps(folder)):
                log.info("recover.temp_files_removed", folder=str(folder), files=removed)

    @staticmethod
    def _repair_search_index(settings: Settings) -> None:
        """Lost, damaged, never built or a rebuild cut short: the outbox has it all. Only a
        cache: a failure is a warning, never a reason not to start."""
        try:
            SearchIndex(settings.search_database).repair(settings.outbox, settings.database)
        except (OSError, sqlite3.Error) as error:
            log.warning(
                "search.repair_failed",
                error=f"{type(error).__name__}: {error}",
                hint="`transcribed search --rebuild` makes the index anew",
            )

    def _job_finished(self, job: Job, outcome: str) -> None:
        """Called on the worker thread when a job is done (disposed) or failed for good."""
        failed = outcome == "failed"
        if not failed and not job.outputs:
            return  # a duplicate: its transcript is the original's, which had its own hook
        self._hooks.submit(HookCall("failed" if failed else "done", job.id, hook_environment(job)))

    def run(self) -> int:
        """Start up, run until SIGTERM or SIGINT, shut down (uvicorn's `Server.serve`)."""
        health = self._startup()
        self._main_loop(health)
        self._shutdown()
        return 0

    def _startup(self) -> JobQueue:
        """Requeue what a crash cut short, watch the inbox, take what arrived while we were
        not running, say we are ready, start every loop; the main thread's own connection."""
        self._loops.disposals.fate.requeue_interrupted()
        self._watch = ObserverSupervisor(
            self.settings.inbox,
            self._arrivals,
            self.settings.watch_mode,
            self.settings.poll_seconds,
            self._loops.intake.request_rescan,
            # Under systemd's watchdog, systemd restarts us instead.
            restart=not self.notifier.watchdog_seconds,
        )
        self._loops.intake.rescan()  # files that arrived while we were not running
        self._lock.ready()
        log.info("daemon.ready", inbox=str(self.settings.inbox), counts=self._jobs.counts())
        health = JobQueue(self.settings.database)
        self.notifier.ready(service_status(health))
        self._supervisor.start()
        return health

    def _main_loop(self, health: JobQueue) -> None:
        """Until a signal: reload on SIGHUP, keep the watcher alive, report health."""
        watchdog = self.notifier.watchdog_seconds
        tick = min(1.0, watchdog / 2) if watchdog else 1.0
        while not self.stop.wait(tick):
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            self._watch.check()
            self._report(health)

    def _shutdown(self) -> None:
        """Stop watching, let each loop finish its turn (the current model batch) within the
        grace time, then close the decoders, the work folder and the instance lock. A job
        still running stays so and is requeued at the next start."""
        self.notifier.stopping()
        self.notifier.extend_timeout(SHUTDOWN_GRACE_SECONDS + 10)  # the current batch ends
        log.info("daemon.stopping")
        self._watch.stop()
        still_running = self._supervisor.join(SHUTDOWN_GRACE_SECONDS)
        self._hooks.close(still_running="hooks" in still_running)
        if stuck := [name for name in still_running if name != "hooks"]:
            log.warning("daemon.stop_timeout", seconds=SHUTDOWN_GRACE_SECONDS, still_running=stuck)
            self.left_running = stuck
        for worker in self._loops.workers:
            worker.decoder.close()
        self._work.close()
        self._lock.release()
        log.info("daemon.stopped")

    def _report(self, health: JobQueue) -> None:
        """Tell systemd how things stand; ping its watchdog only when every part is healthy."""
        try:
            if time.monotonic() >= self._status_due:
                servers = engine_kind(self.settings).summary(self._model)
                self.notifier.status(service_status(health) + (f"; {servers}" if servers else ""))
                self._status_due = time.monotonic() + STATUS_SECONDS
                self._write_metrics(health)
            health.ping()
            self._lock.beat()  # for `status`: the daemon answers
        except sqlite3.Error as error:
            log.warning("health.database", error=str(error))
            return
        problem = self._health_problem(health)
        if problem != self._problem:  # said once when it starts and once when it ends
            if problem:
                log.error("health.unhealthy", problem=problem, watchdog_pings="stopped")
            else:
                log.info("health.healthy")
            self._problem = problem
        if not problem:
            self.notifier.watchdog()

    def _write_metrics(self, health: JobQueue) -> None:
        path = self.settings.metrics_file
        if path is None:
            return
        try:
            write_metrics(path, health, self.settings.output_mode)
        except OSError as error:  # a monitoring problem must not become a service problem
            log.warning("metrics.cannot_write", path=str(path), error=str(error))

    def reload(self) -> None:
        """Re-read the config (SIGHUP). A new config that does not load, or whose folders are
        unusable, is rejected whole and the running one kept."""
        self.notifier.reloading()
        try:
            new = load_settings(self._config_path, Settings)
            check_folders(new)
            check_programs(new)
        except ConfigError as error:
            log.error("config.reload_rejected", error=str(error), kept="the running config")
            self.notifier.ready(f"config reload rejected: {str(error).splitlines()[0]}")
            return
        change = settings_reload.reload(self.settings, new)
        if change.needs_restart:
            log.warning(
                "config.needs_restart",
                settings=change.needs_restart,
                hint="these take effect after `systemctl restart transcribed`",
            )
        self._apply(change.settings)
        log.info("config.reloaded", changed=change.applied)
        self.notifier.ready("config reloaded")

    def _apply(self, settings: Settings) -> None:
        """Hand the reloaded settings to the worker and hooks: jobs started from now on use
        them; a job mid-way finishes as it began."""
        self.settings = settings
        for worker in self._loops.with_jobs:
            worker.rules = make_rules(self.settings)
            worker.destinations = make_destinations(self.settings, self._work, worker.jobs)
            worker.max_attempts = self.settings.max_attempts
            worker.retry_seconds = self.settings.retry_seconds
        for worker in self._loops.workers:
            worker.chunk_seconds = self.settings.chunk_seconds
        self._hooks.configure(
            self.settings.on_done, self.settings.on_failed, self.settings.hook_timeout_seconds
        )

    def _health_problem(self, health: JobQueue) -> str | None:
        if health.replaced():  # restarting indexes the disk anew (systemd does, on the watchdog)
            return (
                f"the job database {self.settings.database} was deleted or replaced while the "
                "daemon ran: restart it, and it indexes the recordings on disk again"
            )
        if (problem := self._work.problem()) and not self._reopen_inbox():
            return problem
        if not self._watch.observer.is_alive():
            return "the inbox watcher is not running"
        if problem := self._supervisor.problem():  # a loop died, or is stuck (a hung GPU call)
            return problem
        last_rescan = self._loops.intake.last_rescan
        if (
            last_rescan is None
            or time.monotonic() - last_rescan > 2 * self.settings.rescan_seconds + 60
        ):
            return "the periodic rescan is overdue"
        return None

    def _reopen_inbox(self) -> bool:
        """A folder is back at the inbox path (or its work folder was removed): open it anew,
        with the checks of a start, and look at everything. The watcher follows on its own
        only for the same folder, so it is restarted too."""
        if not self.settings.inbox.is_dir():
            return False
        try:
            check_folders(self.settings)
        except ConfigError as error:
            log.error("inbox.cannot_reopen", error=str(error))
            return False
        if not self._work.reopen():
            return False
        self._watch.restart()  # its inotify watches are on the old folder
        self._loops.intake.request_rescan()
        return True

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, frame: FrameType | None) -> None:
            if self.stop.is_set():
                os._exit(1)  # second signal: the user insists; the queue recovers at next start
            log.info("daemon.signal", signal=signal.Signals(signum).name)
            self.stop.set()

        def reload(signum: int, frame: FrameType | None) -> None:
            self._reload.set()  # the main loop reloads: no work inside a signal handler

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)
        signal.signal(signal.SIGHUP, reload)


def check_isolation(required: bool, servers_only: bool = False) -> None:
    """Say whether the network is reachable from here (with the vLLM engine: anything but
    the engine servers); refuse to run if it must not be."""
    problem = servers_only_problem() if servers_only else isolation_problem()
    hint = SERVERS_ONLY_HINT if servers_only else ISOLATION_HINT
    if problem is None:
        log.info("network.only_engine_servers" if servers_only else "network.isolated")
        return
    if required:
        raise ConfigError(f"require_offline = true, but {problem}; {hint}")
    log.warning("network.not_isolated", problem=problem, hint=hint)


def hook_environment(job: Job) -> dict[str, str]:
    """What a hook learns about a job: paths and figures, never transcript text."""
    environment = {
        "TRANSCRIBED_JOB": str(job.id),
        "TRANSCRIBED_SOURCE": display_name(job.relpath),
        "TRANSCRIBED_OUTPUTS": "\n".join(job.outputs),
    }
    named = {".txt": "TRANSCRIBED_TRANSCRIPT", ".json": "TRANSCRIBED_JSON"}
    for output in job.outputs:
        if variable := named.get(Path(output).suffix):
            environment[variable] = output
    if job.state == "failed":  # a done job may carry an old, retried error
        environment["TRANSCRIBED_ERROR"] = job.error or ""
        if job.disposed_to:
            environment["TRANSCRIBED_FAILED_PATH"] = job.disposed_to
    if job.audio_seconds is not None:
        environment["TRANSCRIBED_AUDIO_SECONDS"] = f"{job.audio_seconds:.3f}"
    return environment
