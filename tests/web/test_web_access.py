"""The page served by a user who may not read the daemon's state folder: every page answers
with something a person can act on (a note, or an error page naming the user to run as),
never a bare 500. The app runs in a subprocess that is held to the permission bits."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from running import NO_OVERRIDE, STRANGER_UID
from transcribed.output.search_index import SearchIndex
from transcribed.state.queue import JobQueue

PAGES = ("/", "/transcripts", "/search?q=budget", "/jobs/1", "/upload")

SERVE = textwrap.dedent(
    """
    import json, sys
    from starlette.testclient import TestClient
    from transcribed.settings import Settings
    from transcribed.web.app import build_app
    from transcribed.web.auth import Credentials

    folders = json.loads(sys.argv[1])
    settings = Settings(**folders, disposal="delete")
    app = build_app(settings, Credentials(None, None))
    answers = {}
    local = {"base_url": "http://127.0.0.1:8750", "client": ("127.0.0.1", 50000)}
    with TestClient(app, raise_server_exceptions=False, **local) as page:
        for path in sys.argv[2:]:
            answer = page.get(path, follow_redirects=False)
            answers[path] = [answer.status_code, answer.text[:3000]]
    print(json.dumps(answers))
    """
)


def test_the_page_of_a_user_who_cannot_read_the_state_folder_says_so(folders) -> None:
    """A page served as the wrong user answers every request with words, never a 500."""
    JobQueue(folders.state / "jobs.sqlite3").close()
    SearchIndex(folders.state / "search.sqlite3")
    settings = {
        "inbox": str(folders.inbox),
        "outbox": str(folders.outbox),
        "failed_dir": str(folders.failed),
        "state_dir": str(folders.state),
    }
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        for path in (folders.state, *folders.state.iterdir()):
            os.chown(path, STRANGER_UID, STRANGER_UID)
        folders.state.chmod(0o700)
        prefix = NO_OVERRIDE
    else:
        folders.state.chmod(0o000)
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", SERVE, json.dumps(settings), *PAGES],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
        )
    finally:
        folders.state.chmod(0o700)
    assert done.returncode == 0, done.stderr[-2000:]
    answers = json.loads(done.stdout.splitlines()[-1])
    statuses = {path: status for path, (status, _text) in answers.items()}
    broken = [path for path, status in statuses.items() if status >= 500 and status != 503]
    refused = [text for status, text in answers.values() if status == 503]
    assert not broken, answers
    assert refused, answers
    assert all("run it as that user" in text or "shut you out" in text for text in refused)
