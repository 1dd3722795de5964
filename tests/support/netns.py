"""The test's own hosts: network namespaces joined by veth pairs, made and removed by the test.

`TestHosts` makes a namespace for the daemon and one per server, each server on its own
link to the daemon's (10.99.N.1 there, 10.99.N.2 at the server). The daemon's namespace has
no route anywhere else: nothing it sends can leave this machine. Names carry the test
process's id, so runs beside each other do not collide; addresses live inside the
namespaces and never meet the machine's own.
"""

import os
import shutil
import subprocess
from collections.abc import Sequence

IP = shutil.which("ip")


def _ip(*args: str) -> None:
    assert IP is not None
    subprocess.run([IP, *args], check=True, capture_output=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if IP is None:
        return "the ip program (iproute2) is not installed"
    probe = f"tprobe{os.getpid() % 100_000}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as error:
        return f"cannot create a network namespace: {error.stderr.decode().strip()}"
    _ip("netns", "del", probe)
    return None


class TestHosts:
    __test__ = False  # not a test class

    def __init__(self, servers: int) -> None:
        tag = os.getpid() % 100_000
        self.daemon_ns = f"td{tag}"
        self.server_ns = [f"t{chr(97 + n)}{tag}" for n in range(servers)]
        self.addresses = [f"10.99.{n + 1}.2" for n in range(servers)]
        self._made: list[str] = []

    def __enter__(self) -> "TestHosts":
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make(self) -> None:
        for name in (self.daemon_ns, *self.server_ns):
            _ip("netns", "add", name)
            self._made.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        for n, name in enumerate(self.server_ns):
            near, far = f"{self.daemon_ns}v{n}", f"{name}v"
            _ip("link", "add", near, "type", "veth", "peer", "name", far)
            _ip("link", "set", near, "netns", self.daemon_ns)
            _ip("link", "set", far, "netns", name)
            _ip("-n", self.daemon_ns, "addr", "add", f"10.99.{n + 1}.1/24", "dev", near)
            _ip("-n", name, "addr", "add", f"10.99.{n + 1}.2/24", "dev", far)
            _ip("-n", self.daemon_ns, "link", "set", near, "up")
            _ip("-n", name, "link", "set", far, "up")

    def inside(self, namespace: str) -> tuple[str, ...]:
        """The command prefix that runs a program in `namespace` (ip execs it: same pid)."""
        assert IP is not None
        return (IP, "netns", "exec", namespace)

    def close(self) -> None:
        """Remove the namespaces (their veth links go with them). Processes still inside
        must have been stopped by the caller."""
        for name in self._made:
            subprocess.run([IP or "ip", "netns", "del", name], capture_output=True, timeout=30)
        self._made.clear()

    def leftovers(self) -> Sequence[str]:
        listed = subprocess.run([IP or "ip", "netns", "list"], capture_output=True, text=True)
        mine = (self.daemon_ns, *self.server_ns)
        return [line.split()[0] for line in listed.stdout.splitlines() if line.split()[0] in mine]
