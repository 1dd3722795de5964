"""Names fitted to NAME_MAX bytes keep whole characters and any non-UTF-8 bytes."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.powerfs import PowerFS, require_powerfs
from transcribed.errors import FolderUnusable
from transcribed.files.durable import (
    NAME_MAX,
    fit_name,
    link_or_copy_no_overwrite,
    make_folders,
)
from transcribed.files.folders import link_free_name


def test_a_long_name_is_cut_on_a_character_boundary_to_leave_room() -> None:
    stem = "é" * 200  # 400 bytes
    fitted = fit_name(stem, ".error.json")
    assert len(os.fsencode(fitted)) <= NAME_MAX and fitted.endswith(".error.json")
    assert set(fitted.removesuffix(".error.json")) == {"é"}
    assert fit_name("short", ".json") == "short.json"


def test_bytes_that_are_not_utf8_survive_the_cut() -> None:
    stem = os.fsdecode(b"\xff\xfe" + b"a" * 300)
    fitted = fit_name(stem, ".json", reserve=12)
    assert os.fsencode(fitted).startswith(b"\xff\xfe")
    assert len(os.fsencode(fitted)) == NAME_MAX - 12


def test_another_users_file_is_copied_where_the_kernel_refuses_a_hard_link(tmp_path) -> None:
    """Found by the adversary (Trust 2): a non-root daemon could never archive or quarantine a
    recording another user wrote read-only (fs.protected_hardlinks refuses the link): it
    waited for ever with a wrong hint, and a non-audio file was never quarantined."""
    if os.geteuid() != 0 or Path("/proc/sys/fs/protected_hardlinks").read_text().strip() != "1":
        pytest.skip("needs root and fs.protected_hardlinks to make the kernel refuse the link")
    source, target = tmp_path / "recording.wav", tmp_path / "archive" / "recording.wav"
    target.parent.mkdir()
    source.write_bytes(b"RIFF another user's recording")
    os.chown(source, 65534, 65534)
    source.chmod(0o644)
    # As the service user would be: root without the capabilities that override ownership.
    script = (
        "import sys; from pathlib import Path; "
        "from transcribed.files.durable import link_or_copy_no_overwrite as f; "
        "f(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    no_override = ("--inh-caps=-fowner,-dac_override", "--bounding-set=-fowner,-dac_override")
    done = subprocess.run(
        ["setpriv", *no_override, sys.executable, "-c", script, str(source), str(target)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == source.read_bytes()
    assert not os.path.samefile(source, target)


@pytest.fixture(params=["renames that cannot replace", "plain renames only"])
def no_links(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A mounted folder whose filesystem refuses hard links (EPERM), as vfat, exFAT and many
    shares do (the test filesystem with its links switched off); then perhaps renames that
    must not replace, too (EINVAL, as NFS)."""
    require_powerfs()
    with PowerFS(tmp_path / "disk") as disk:
        disk.ask("links off")
        if request.param == "plain renames only":
            disk.ask("noreplace off")
        yield disk.root


def test_a_filesystem_without_hard_links_still_takes_names_without_replacing(
    no_links: Path, tmp_path: Path
) -> None:
    """Found by the adversary: an archive, failed folder or inbox there never worked (the
    copy's last step was a hard link): 'Operation not permitted' for ever, said as a
    permission problem. A name is now taken by a rename that cannot replace."""
    (no_links / "probe").write_bytes(b"")
    with pytest.raises(PermissionError):
        os.link(no_links / "probe", no_links / "probe-2")  # the premise: no links here
    (no_links / "probe").unlink()
    source = tmp_path / "recording.wav"
    source.write_bytes(b"the recording")
    link_or_copy_no_overwrite(source, no_links / "recording.wav")
    assert (no_links / "recording.wav").read_bytes() == b"the recording"
    with pytest.raises(FileExistsError):
        link_or_copy_no_overwrite(source, no_links / "recording.wav")
    temp = no_links / ".upload.tmp"
    temp.write_bytes(b"another recording")
    folder = os.open(no_links, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert link_free_name(folder, temp.name, "recording.wav") == "recording-2.wav"
    finally:
        os.close(folder)
    assert sorted(path.name for path in no_links.iterdir()) == ["recording-2.wav", "recording.wav"]
    assert (no_links / "recording.wav").read_bytes() == b"the recording"
    assert (no_links / "recording-2.wav").read_bytes() == b"another recording"


def test_a_symbolic_link_below_a_destination_is_not_followed(tmp_path: Path) -> None:
    """Found by the adversary (I3): `outbox/team` made a link to another folder, and the
    transcripts of inbox/team/ were written there (so were originals, below the archive)."""
    root, elsewhere = tmp_path / "outbox", tmp_path / "elsewhere"
    root.mkdir()
    elsewhere.mkdir()
    (root / "team").symlink_to(elsewhere)
    with pytest.raises(FolderUnusable, match="symbolic link"):
        make_folders(root, Path("team/2026"))
    assert list(elsewhere.iterdir()) == []
    assert make_folders(root, Path("other/2026")) == root / "other/2026"
