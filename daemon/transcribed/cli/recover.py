"""`transcribed recover`: the job database set aside and rebuilt from the disk (the daemon
stopped); the rebuilding is `state.rebuild`'s."""

import argparse
import os

from transcribed.cli.verb import Verb
from transcribed.settings import Settings, load_settings
from transcribed.settings.access import check_state_access


def recover(args: argparse.Namespace) -> int:
    from transcribed.state.instance import InstanceLock
    from transcribed.state.queue import JobQueue
    from transcribed.state.rebuild import index_disk, set_aside
    from transcribed.state.workfolder import WorkFolder

    settings = load_settings(args.config, Settings)
    check_state_access(settings.state_dir)
    lock = InstanceLock(settings.state_dir)
    lock.acquire()  # the daemon must not run meanwhile
    aside = set_aside(settings.database)
    indexed = index_disk(JobQueue(settings.database), settings.outbox, settings.failed_dir)
    work = WorkFolder(settings.inbox).path
    waiting = len([n for n in os.listdir(work) if not n.startswith(".")]) if work.is_dir() else 0
    if aside is not None:
        print(f"the old database is now {aside}")
    print(
        f"rebuilt {settings.database}: {indexed.transcripts} published transcripts, "
        f"{indexed.failed} failed recordings; {waiting} recordings in the work folder are "
        "queued again when the daemon starts (those already transcribed are only disposed "
        "of, or published under their own name without running the model)"
    )
    return 0


VERB = Verb(
    "recover",
    help="rebuild a damaged job database from the disk (daemon stopped)",
    description="Set the job database aside (renamed, not deleted) and rebuild it from "
    "the disk: published transcripts in the outbox become done jobs (they name their "
    "recording's SHA-256), failed recordings with reason files become failed jobs, and "
    "the recordings in the work folder are queued again when the daemon next starts, "
    "so nothing is lost and nothing is transcribed twice. Refuses to run while the "
    "daemon runs.",
    run=recover,
)
