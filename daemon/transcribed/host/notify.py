"""systemd's notify protocol, without a dependency: one datagram per message to $NOTIFY_SOCKET.

READY=1 once start-up work is done, STATUS= one line for `systemctl status`, WATCHDOG=1 from
the health loop, STOPPING=1 on shutdown, EXTEND_TIMEOUT_USEC= while a long step runs. Without
$NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

import os
import socket
import time

from transcribed.logs import get_logger

log = get_logger(__name__)


class Notifier:
    def __init__(self, environ: "os._Environ[str] | dict[str, str]" = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace (a leading NUL byte).
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._warned = False
        self.watchdog_seconds = _watchdog_seconds(environ)

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")

    def reloading(self) -> None:
        """Reloading the config; READY=1 follows when done (as Type=notify-reload expects)."""
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def extend_timeout(self, seconds: float) -> None:
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def _send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self._address)
        except OSError as error:  # systemd gone or socket unreadable: never fatal, said once
            if not self._warned:
                log.warning("notify.failed", error=str(error))
                self._warned = True


def _watchdog_seconds(environ: "os._Environ[str] | dict[str, str]") -> float | None:
    """The watchdog interval systemd expects pings within, if it is meant for this process."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000
