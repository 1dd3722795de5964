"""A damaged search index repairs itself (issue 25): set aside, never deleted, and rebuilt from
the outbox, by the page, by `transcribed search` and by the daemon at start; the transcripts
list works meanwhile. Real SQLite files damaged as a disk would damage them."""
# ruff: noqa: F401, F811  (the fixtures `site` and `client` come from test_web_security)

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest
from test_web_security import SCRIPT, Site, client, site

from conftest import Folders
from running import CLI, Daemon
from transcribed.output.search_index import IndexState, SearchIndex
from transcribed.web.views import Views


def damage(index: Path) -> None:
    """The first 16 KB overwritten: SQLite's header and the first pages are gone."""
    size = index.stat().st_size
    with index.open("r+b") as handle:
        handle.write(b"\x5a" * min(16 * 1024, size))


def views_of(client) -> Views:
    route = next(r for r in client.app.routes if getattr(r, "path", "") == "/search")
    views = route.endpoint.__self__
    assert isinstance(views, Views)
    return views


def set_aside(state: Path) -> list[str]:
    """The damaged index files kept in the state folder (their WAL beside them, if any)."""
    found = [p.name for p in state.iterdir() if ".damaged-" in p.name]
    return sorted(name for name in found if not name.endswith("-wal"))


def test_a_damaged_index_leaves_the_pages_working_and_is_rebuilt(client, site):
    """Both pages answered 500; now the list works at once, search says the index is being
    rebuilt, and soon finds again what it found before."""
    index = site.settings.search_database
    assert "<mark>alert</mark>" in client.get("/search", params={"q": "alert"}).text
    damage(index)
    # While another process is at the rebuild (it holds the lock), the pages go on.
    with SearchIndex(index)._exclusive(wait=False) as held:
        assert held
        listing = client.get("/transcripts")
        assert listing.status_code == 200 and f'href="/jobs/{site.done}"' in listing.text
        searched = client.get("/search", params={"q": "alert"})
        assert searched.status_code == 200 and "being rebuilt" in searched.text
        views_of(client).catalog.index_repair.wait(30)
    assert SearchIndex(index).state() is IndexState.DAMAGED, "left to the lock's holder"
    # That process died mid-way: the next page to look does the repair itself.
    assert "being rebuilt" in client.get("/search").text
    views_of(client).catalog.index_repair.wait(30)
    assert SearchIndex(index).state() is IndexState.SOUND
    assert len(set_aside(site.settings.state_dir)) == 1, "the damaged file is kept"
    assert "<mark>alert</mark>" in client.get("/search", params={"q": "alert"}).text
    assert "being rebuilt" not in client.get("/search").text


def test_damage_deep_in_the_file_is_found_by_the_search_that_meets_it(client, site):
    """The quick look sees a sound header; the search itself meets the damage."""
    index = site.settings.search_database
    pages = index.stat().st_size // 4096
    assert pages > 2
    with index.open("r+b") as handle:
        for page in range(1, pages):  # every page but the header
            handle.seek(page * 4096)
            handle.write(b"\x00\xff" * 2048)
    searched = client.get("/search", params={"q": "alert"})
    assert searched.status_code == 200
    views_of(client).catalog.index_repair.wait(30)
    assert "<mark>alert</mark>" in client.get("/search", params={"q": "alert"}).text


def shell(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    env = Folders(
        site.settings.inbox,
        site.settings.outbox,
        site.settings.archive_dir or Path(),
        site.settings.failed_dir,
        site.settings.state_dir,
    ).env(Path("unused"))
    return subprocess.run(
        [*CLI, "search", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_search_rebuild_works_on_a_damaged_index(site):
    """`transcribed search --rebuild` once crashed with "file is not a database"."""
    damage(site.settings.search_database)
    rebuilt = shell(site, "--rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "indexed 1 transcripts" in rebuilt.stderr and "Traceback" not in rebuilt.stderr
    found = shell(site, "alert", "--json")
    assert found.returncode == 0 and json.loads(found.stdout)[0]["job_id"] == site.done
    assert len(set_aside(site.settings.state_dir)) == 1


def test_a_search_from_the_shell_repairs_a_damaged_index(site):
    damage(site.settings.search_database)
    found = shell(site, "alert", "--json")
    assert found.returncode == 0, found.stderr
    assert "is damaged: setting it aside and rebuilding it" in found.stderr
    assert [hit["text"] for hit in json.loads(found.stdout)] == [SCRIPT]


def test_a_rebuild_cut_short_is_finished_by_the_next_look(site):
    index = SearchIndex(site.settings.search_database)
    with sqlite3.connect(index.path) as db:
        db.execute("PRAGMA user_version = 1")  # as a rebuild leaves it until its end
        db.execute("DELETE FROM transcripts")
    db.close()
    assert index.state() is IndexState.UNFINISHED
    assert index.repair(site.settings.outbox, site.settings.database) == 1
    assert index.state() is IndexState.SOUND and index.search("alert")
    assert set_aside(site.settings.state_dir) == [], "nothing damaged: nothing set aside"


def test_only_one_process_rebuilds_at_a_time(site):
    index = SearchIndex(site.settings.search_database)
    damage(index.path)
    with index._exclusive(wait=False) as mine:  # as another process would hold it
        assert mine and index.rebuilding_elsewhere()
        assert index.repair(site.settings.outbox, site.settings.database) is None
    assert index.state() is IndexState.DAMAGED
    assert index.repair(site.settings.outbox, site.settings.database) == 1


@pytest.mark.slow
def test_the_daemon_repairs_a_damaged_index_at_start(site, tiny_model, tmp_path):
    """A restart once rebuilt only a missing index, never a damaged one."""
    damage(site.settings.search_database)
    env = Folders(
        site.settings.inbox,
        site.settings.outbox,
        site.settings.archive_dir or Path(),
        site.settings.failed_dir,
        site.settings.state_dir,
    ).env(tiny_model)
    daemon = Daemon(env, tmp_path / "daemon.log")
    try:
        daemon.wait_ready()
    finally:
        assert daemon.stop() == 0
    index = SearchIndex(site.settings.search_database)
    assert index.state() is IndexState.SOUND
    assert [hit.job_id for hit in index.search("alert")] == [site.done]
    assert len(set_aside(site.settings.state_dir)) == 1
    assert '"event": "search.index_set_aside"' in (tmp_path / "daemon.log").read_text()
