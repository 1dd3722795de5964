"""The addresses other machines can reach this one at, for the URLs the page announces when
it listens on all of them (`0.0.0.0` or `::`): nobody can open `http://0.0.0.0:8750/`.

Read from the kernel without a library: IPv4 through the SIOCGIFADDR ioctl per interface (its
primary address), IPv6 from /proc/net/if_inet6 (global scope only). Loopback, link-local and
container bridges are left out: a phone on the LAN reaches none of them.
"""

import contextlib
import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

_SIOCGIFADDR = 0x8915
_IF_INET6 = Path("/proc/net/if_inet6")
_GLOBAL_SCOPE = "00"
# Bridges and virtual links of containers and VMs on this machine: not the LAN.
_VIRTUAL = ("docker", "veth", "br-", "virbr", "lxc", "lxdbr", "cni", "podman", "flannel")
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104  (names of "every address", compared only)


def lan_addresses(ipv4: bool, ipv6: bool) -> list[str]:
    """This machine's addresses a LAN client can reach: IPv4 first."""
    names = [name for _index, name in socket.if_nameindex() if not name.startswith(_VIRTUAL)]
    found = [a for name in names if (a := _ipv4_of(name)) is not None] if ipv4 else []
    if ipv6:
        found += _ipv6_global(set(names))
    return [a for a in dict.fromkeys(found) if _reachable(a)]


def _ipv4_of(interface: str) -> str | None:
    request = struct.pack("256s", interface.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
        except OSError:  # no IPv4 address on this interface
            return None
    return socket.inet_ntoa(answer[20:24])


def _ipv6_global(interfaces: set[str]) -> list[str]:
    """Lines of `address index prefix scope flags name`; unreadable (a hardened /proc): none."""
    with contextlib.suppress(OSError):
        found = []
        for line in _IF_INET6.read_text().splitlines():
            fields = line.split()
            if len(fields) == 6 and fields[3] == _GLOBAL_SCOPE and fields[5] in interfaces:
                found.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
        return found
    return []


def _reachable(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    return not (parsed.is_loopback or parsed.is_link_local or parsed.is_unspecified)


def page_urls(scheme: str, host: str, port: int, dual_stack: bool) -> tuple[str, list[str]]:
    """(the URL on this machine, the URLs for other machines) of a page listening on `host`;
    `dual_stack`: an IPv6 socket on `::` that takes IPv4 too (Linux's default)."""
    if host in ("0.0.0.0", ""):  # noqa: S104  (a comparison)
        others = lan_addresses(ipv4=True, ipv6=False)
        here = f"{scheme}://127.0.0.1:{port}/"
    elif host == "::":
        others = lan_addresses(ipv4=dual_stack, ipv6=True)
        here = f"{scheme}://{'127.0.0.1' if dual_stack else '[::1]'}:{port}/"
    else:
        return f"{scheme}://{bracketed(host)}:{port}/", []
    return here, [f"{scheme}://{bracketed(address)}:{port}/" for address in others]


def bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host
