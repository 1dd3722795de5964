"""The service page's steps on a machine booted with systemd as PID 1: a minimal Debian root
(debootstrap) booted with systemd-nspawn runs the system unit under its hardening and the page's
unit, transcribes a dropped recording, answers `status`, reloads and stops cleanly.

The root is cached between runs (under $XDG_CACHE_HOME/transcribed-tests, else
/var/cache/transcribed-tests), so only the first run pays for debootstrap; every
boot is on an overlay that forgets what the run changed. Skipped, saying why, only where the
container cannot be made or booted, and never in CI.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.recordings import write_soundfile

# A first run makes the Debian root (a minute or two); later ones boot from the cache.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

PROJECT = Path(__file__).parents[2]
MIRROR = os.environ.get("TRANSCRIBED_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The host's own Debian python: the container's python3 is the same package, so a venv made
# with it here runs there.
HOST_PYTHON = Path("/usr/bin/python3")
# What a minimal Debian needs to boot with systemd, plus the python3 the service page installs.
PACKAGES = "systemd,systemd-sysv,dbus,python3"
CONFIG = "/etc/transcribed/config.toml"
CLI = "/opt/transcribed/.venv/bin/transcribed"
PYTHON = "/opt/transcribed/.venv/bin/python"
TINY_MODEL = "/opt/transcribed-models/tiny-asr"
# The dependencies (torch, transformers, …) the tests' own venv holds.
DEPENDENCIES = sysconfig.get_path("purelib")
DEPENDENCIES_INSIDE = "/opt/transcribed-dependencies"


def cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "transcribed-tests" if base else Path("/var/cache/transcribed-tests")


def cannot(reason: str) -> None:
    """Skip where a container cannot be made here; in CI that is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must boot the container: {reason}")
    pytest.skip(reason)


def run(*command: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout
    )


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.partition("=")[2].strip('"')
    cannot("this host is not Debian: no VERSION_CODENAME in /etc/os-release")
    raise AssertionError


def debian_root() -> Path:
    """A minimal Debian of the host's release, made once (debootstrap into a temp name, renamed
    when complete)."""
    release = codename()
    root = cache() / f"debian-{release}"
    if not root.is_dir():
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.parent.mkdir(parents=True, exist_ok=True)
        args = ["--variant=minbase", f"--include={PACKAGES}", release, partial, MIRROR]
        done = run("debootstrap", *args, timeout=1200)
        if done.returncode:
            cannot(f"debootstrap failed: {(done.stdout + done.stderr)[-2000:]}")
        partial.rename(root)
    return root


def service_venv(opt: Path) -> None:
    """The venv the service runs (step 1 of docs/service.md), made in seconds in the root's
    /opt/transcribed: a venv of the host's Debian python (the container has the same one)
    holding this checkout's code, that finds its dependencies in the venv running these tests
    (the same Python ABI), which the container sees read-only at DEPENDENCIES_INSIDE (outside
    /tmp and /root, which the unit's hardening hides). Installing torch again costs minutes."""
    venv = opt / ".venv"
    made = run(HOST_PYTHON, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stdout + made.stderr
    [site] = (venv / "lib").glob("python3*/site-packages")
    (site / "dependencies.pth").write_text(DEPENDENCIES_INSIDE + "\n")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PROJECT / "daemon" / "transcribed", site / "transcribed", ignore=ignore)
    # What pip makes of [project.scripts]; the decoder child imports it, hence the guard.
    module, _, function = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"][
        "scripts"
    ]["transcribed"].partition(":")
    script = venv / "bin" / "transcribed"
    script.write_text(
        f"#!{PYTHON}\nimport sys\nfrom {module} import {function}\n"
        f'if __name__ == "__main__":\n    sys.exit({function}())\n'
    )
    script.chmod(0o755)


def prepare(root: Path) -> None:
    """/opt/transcribed as the service page leaves it: the checkout's config and units, the
    venv, and (step 3's stand-in) the tiny model."""
    opt = root / "opt" / "transcribed"
    shutil.rmtree(opt, ignore_errors=True)
    opt.mkdir(parents=True)
    for folder in ("config", "systemd"):
        shutil.copytree(PROJECT / folder, opt / folder)
    service_venv(opt)
    model = root / TINY_MODEL.lstrip("/")
    if not (model / "config.json").exists():
        shutil.rmtree(model, ignore_errors=True)
        build = run(sys.executable, "-m", "transcribed.model.synthetic", model)
        assert build.returncode == 0, build.stderr
        assert run("chmod", "-R", "a+rX", model.parent).returncode == 0  # as the page says


class Container:
    """A booted container: `inside` runs a command in all its namespaces (nsenter)."""

    def __init__(self, root: Path, shared: Path, recordings: Path) -> None:
        # /srv/recordings is a folder of this host's, not the overlay: on an overlay whose
        # layers are on different filesystems, a file's st_dev is not its folder's, and the
        # daemon rightly refuses to claim a recording it cannot rename atomically.
        command = [
            "systemd-nspawn", "-b", "--register=no", "--keep-unit", "--private-network",
            "--volatile=overlay", "--console=passive", "-D", str(root),
            f"--bind-ro={DEPENDENCIES}:{DEPENDENCIES_INSIDE}", f"--bind-ro={shared}:/mnt/host",
            f"--bind={recordings}:/srv/recordings",
        ]  # fmt: skip
        self.shared = shared
        self.console = shared.with_name(shared.name + ".console")
        with self.console.open("w") as console:
            self.nspawn = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT)
        self.init = self._init_pid()

    def _init_pid(self) -> int:
        """The container's PID 1, once nspawn's own helper processes have made way for it."""
        children = Path(f"/proc/{self.nspawn.pid}/task/{self.nspawn.pid}/children")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.nspawn.poll() is None:
            for pid in children.read_text().split() if children.exists() else []:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
            time.sleep(0.1)
        cannot(f"systemd-nspawn did not start systemd: {self.console.read_text()[-2000:]}")
        raise AssertionError

    def boot(self) -> None:
        """Wait for the boot to finish (`is-system-running --wait` says offline until the
        manager answers)."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = self.inside("systemctl", "is-system-running", "--wait", timeout=90)
            if state.stdout.strip() in ("running", "degraded"):
                return
            time.sleep(0.5)
        cannot(f"the container did not boot: {state.stdout}{self.console.read_text()[-2000:]}")

    def inside(self, *command: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run("nsenter", "-t", str(self.init), "-a", *command, timeout=timeout)

    def ok(self, *command: str, timeout: float = 120) -> str:
        done = self.inside(*command, timeout=timeout)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
        return done.stdout

    def wait_for(self, *command: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.inside(*command).returncode:
            if time.monotonic() > deadline:
                log = self.inside("journalctl", "-u", "transcribed", "-n", "40", "-o", "cat").stdout
                log += self.inside("runuser", "-u", "transcribed", "--", CLI, "status").stdout
                raise AssertionError(f"{command} not true after {seconds} s:\n{log}")
            time.sleep(0.5)

    def power_off(self) -> int:
        if self.nspawn.poll() is None:
            self.inside("systemctl", "poweroff", "--no-block")
            try:
                self.nspawn.wait(60)
            except subprocess.TimeoutExpired:
                self.nspawn.kill()
                self.nspawn.wait(10)
        return self.nspawn.returncode


@pytest.fixture(scope="module")
def container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    if os.geteuid() != 0:
        cannot("booting a container needs root")
    for program in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(program) is None:
            cannot(f"{program} is not installed (Debian: debootstrap, systemd-container)")
    if not HOST_PYTHON.exists() or sys.version_info < (3, 11):
        cannot(f"{HOST_PYTHON} (Debian's python3) is needed for the service's venv")
    root = debian_root()
    prepare(root)
    shared, recordings = tmp_path_factory.mktemp("shared"), tmp_path_factory.mktemp("srv")
    for folder in (shared, recordings):
        folder.chmod(0o755)  # as /srv is: the service's user goes through it
    box = Container(root, shared, recordings)
    try:
        box.boot()
        yield box
    finally:
        box.power_off()


def install_as_the_service_page_says(box: Container) -> None:
    """docs/service.md "System service, step by step", steps 2, 4 and 5 (1 and 3 above)."""
    box.ok("useradd", "--system", "--home-dir", "/var/lib/transcribed", "--create-home",
           "transcribed")  # fmt: skip
    folders = [f"/srv/recordings/{name}" for name in ("inbox", "transcripts", "archive", "failed")]
    box.ok("install", "-d", "-o", "transcribed", "-g", "transcribed", "-m", "0750", *folders)
    box.ok("install", "-D", "-m", "0640", "-g", "transcribed",
           "/opt/transcribed/config/transcribed.toml", CONFIG)  # fmt: skip
    # The editor's part: the tiny model, on the CPU.
    box.ok("sed", "-i", "-e", f's|^#* *model = .*|model = "{TINY_MODEL}"|',
           "-e", 's|^#* *device = .*|device = "cpu"|', CONFIG)  # fmt: skip
    doctor = box.inside("runuser", "-u", "transcribed", "--", CLI, "doctor", "--config", CONFIG)
    assert "fail" not in [line.split()[0] for line in doctor.stdout.splitlines() if line], (
        doctor.stdout + doctor.stderr
    )
    box.ok("cp", "/opt/transcribed/systemd/transcribed.service", "/etc/systemd/system/")
    box.ok("cp", "/opt/transcribed/systemd/transcribed-web.service", "/etc/systemd/system/")
    box.ok("systemctl", "daemon-reload")


def unit(box: Container, name: str) -> dict[str, str]:
    keys = "ActiveState,SubState,StatusText,Result,ExecMainStatus,NRestarts"
    shown = box.ok("systemctl", "show", "-p", keys, name)
    return dict(line.partition("=")[::2] for line in shown.splitlines())


def test_the_system_unit_and_the_page_run_in_a_booted_debian(container: Container) -> None:
    """The unit starts under its hardening, reports READY and STATUS, transcribes, reloads
    (with nothing but what a minimal Debian has) and stops cleanly; the page's unit serves."""
    box = container
    install_as_the_service_page_says(box)
    box.ok("systemctl", "enable", "--now", "transcribed", timeout=300)  # returns at READY=1
    started = unit(box, "transcribed")
    assert (started["ActiveState"], started["SubState"]) == ("active", "running"), started
    assert "queued" in started["StatusText"], started  # STATUS=0 queued, 0 running, …

    write_soundfile(box.shared / "talk.wav", 3, 16000, "PCM_16")
    box.ok("runuser", "-u", "transcribed", "--", "cp", "/mnt/host/talk.wav",
           "/srv/recordings/inbox/")  # fmt: skip
    box.wait_for("test", "-e", "/srv/recordings/archive/talk.wav", seconds=120)
    box.ok("test", "-s", "/srv/recordings/transcripts/talk.json")
    status = box.ok("runuser", "-u", "transcribed", "--", CLI, "status", "--config", CONFIG)
    assert "1 done" in status and "running (PID" in status, status
    box.wait_for("sh", "-c", "systemctl show -p StatusText transcribed | grep -q '1 done'",
                 seconds=30)  # fmt: skip

    box.ok("systemctl", "reload", "transcribed")
    box.wait_for("sh", "-c", "journalctl -u transcribed -o cat | grep -q config.reloaded",
                 seconds=30)  # fmt: skip
    assert unit(box, "transcribed")["ActiveState"] == "active"

    box.ok("systemctl", "enable", "--now", "transcribed-web")
    page = f"{PYTHON} -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:8750/')\""
    box.wait_for("sh", "-c", page, seconds=60)

    box.ok("systemctl", "stop", "transcribed", "transcribed-web", timeout=120)
    stopped = unit(box, "transcribed")
    assert stopped["Result"] == "success" and stopped["ExecMainStatus"] == "0", stopped
    assert stopped["NRestarts"] == "0", stopped
    assert unit(box, "transcribed-web")["Result"] == "success"
    journal = box.ok("journalctl", "-u", "transcribed", "-o", "cat", "--no-pager")
    assert "daemon.stopped" in journal and "Traceback" not in journal, journal[-3000:]
