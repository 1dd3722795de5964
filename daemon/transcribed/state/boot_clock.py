"""The kernel's boot clock: seconds since this boot (CLOCK_BOOTTIME, which counts suspend
too), which no setting of the time moves, with the boot's id, so that a reading from another
boot is never compared with one from this boot.

Why: a machine without a battery-backed clock (a Raspberry Pi) boots with the time it shut
down at, and NTP steps it forward minutes or hours later; a wait measured on the wall clock
across that step ends early."""

import functools
import time
from dataclasses import dataclass
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


@dataclass(frozen=True)
class BootTime:
    boot: str  # this boot's id
    seconds: float  # since it


@functools.cache
def _boot_id() -> str | None:
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:  # not Linux, or /proc hidden: the wall clock alone, as before
        return None


def boot_time() -> BootTime | None:
    """Now on the boot clock; None where the boot cannot be told apart."""
    boot = _boot_id()
    return BootTime(boot, time.clock_gettime(time.CLOCK_BOOTTIME)) if boot else None


def seconds_since(boot: str | None, seconds: float | None) -> float | None:
    """Boot-clock seconds since a reading taken as (`boot`, `seconds`); None when it was
    taken in another boot (or not at all)."""
    now = boot_time()
    if now is None or boot is None or seconds is None or boot != now.boot:
        return None
    return now.seconds - seconds
