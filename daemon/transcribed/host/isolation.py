"""Is this process cut off from the network? Checked at start, reported, enforced on request.

The daemon never opens a connection (with the vLLM engine: none but to its servers);
isolation is the guarantee that it cannot, whatever a library might try. Under the systemd
unit (PrivateNetwork=yes) the process has its own network namespace holding only loopback.
/proc/self/net/dev lists the interfaces of the reading process's own namespace and needs
no socket (the unit forbids all but AF_UNIX).

With the vLLM engine the network is open to the servers only (the unit's drop-in filters
every other address). That cannot be read from inside, so it is tried: one connection to a
documentation address where no server is must be stopped by the filter (EPERM) or find no
route; one that goes out means other addresses are reachable too.
"""

import errno
import socket
from collections.abc import Callable
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


# Documentation addresses (RFC 5737, RFC 3849): no server of ours, and nothing answers there.
PROBE_ADDRESSES = (("192.0.2.1", 9), ("2001:db8::1", 9))
# A connection stopped by a filter (systemd's IPAddressDeny=) or with no route: not reachable.
_BLOCKED = {
    errno.EPERM,
    errno.EACCES,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.EAFNOSUPPORT,
    errno.EADDRNOTAVAIL,
}


def probe(address: tuple[str, int], timeout: float = 1.0) -> int | None:
    """The errno of one connection attempt to `address`; None when it connected or went
    unanswered (the packet left: the address is reachable, or at least not blocked)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as attempt:
            attempt.settimeout(timeout)
            attempt.connect(address)
    except TimeoutError:
        return None
    except OSError as error:
        return error.errno if error.errno is not None else errno.EPERM
    return None


def servers_only_problem(
    attempt: Callable[[tuple[str, int]], int | None] | None = None,
) -> str | None:
    """With the vLLM engine the daemon needs its servers and nothing else: None when a
    connection to an address that is no server is stopped (by a filter such as the unit's
    IPAddressDeny=any, or for want of a route); else one sentence saying what got through."""
    for address in PROBE_ADDRESSES:
        if (attempt or probe)(address) not in _BLOCKED:
            return (
                f"a connection to {address[0]} (no engine server) was not stopped: "
                "addresses other than the engine servers are reachable"
            )
    return None


SERVERS_ONLY_HINT = (
    "run it under the systemd unit with its vLLM drop-in (systemd/transcribed.service.d/"
    "vllm.conf: IPAddressDeny=any, IPAddressAllow= your servers); require_offline = true "
    "makes the daemon refuse to start when anything but the servers is reachable"
)
