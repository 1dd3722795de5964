"""Loaded by every Python process the tests start (via PYTHONPATH): any attempt to connect
beyond this machine is written to stderr as a JSON line and refused, so the test sees it.
TRANSCRIBED_TEST_ALLOWED_ADDRESSES (comma-separated) names the test's own hosts, in network
namespaces the test made."""

import json
import os
import socket
import sys

_real_connect = socket.socket.connect
_LOCAL = (
    "127.0.0.1",
    "::1",
    "localhost",
    *filter(None, os.environ.get("TRANSCRIBED_TEST_ALLOWED_ADDRESSES", "").split(",")),
)


def _guarded(self: socket.socket, address: object) -> object:
    if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:  # type: ignore[index]
        print(
            json.dumps({"event": "test.network_attempt", "address": str(address)}), file=sys.stderr
        )
        raise OSError("network access is forbidden in tests")
    return _real_connect(self, address)  # type: ignore[arg-type]


socket.socket.connect = _guarded  # type: ignore[method-assign]
