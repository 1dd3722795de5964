"""Is this process cut off from the network? Checked at start, reported, enforced on request.

The daemon never opens a connection; isolation is the guarantee that it cannot, whatever a
library might try. Under the systemd unit (PrivateNetwork=yes) the process has its own
network namespace holding only loopback. /proc/self/net/dev lists the interfaces of the
reading process's own namespace and needs no socket (the unit forbids all but AF_UNIX).
"""

from pathlib import Path

_NET_DEV = Path("/proc/self/net/dev")


def reachable_interfaces(net_dev: Path = _NET_DEV) -> list[str] | None:
    """Network interfaces other than loopback in this process's namespace; None when the
    kernel does not say (no /proc)."""
    try:
        lines = net_dev.read_text().splitlines()[2:]  # two header lines
    except OSError:
        return None
    names = [line.split(":", 1)[0].strip() for line in lines if ":" in line]
    return [name for name in names if name != "lo"]


def isolation_problem(net_dev: Path = _NET_DEV) -> str | None:
    """None when isolated; else one sentence saying what can be reached."""
    interfaces = reachable_interfaces(net_dev)
    if interfaces is None:
        return "cannot tell whether the network is reachable (/proc/self/net/dev unreadable)"
    if interfaces:
        return "this process can reach network interfaces: " + ", ".join(interfaces)
    return None


ISOLATION_HINT = (
    "run it under the systemd unit (PrivateNetwork=yes) or in a network namespace "
    "(e.g. `systemd-run -p PrivateNetwork=yes …` or `unshare -n`); "
    "require_offline = true makes the daemon refuse to start when it is not isolated"
)
