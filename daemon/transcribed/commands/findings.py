"""What a check of this machine finds: one line of `transcribed doctor`, with what to do.

Its own module so that every check (doctor's, the vLLM servers') imports it from below
instead of from doctor, which calls them.
"""

from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Finding:
    check: str
    level: Level
    message: str
    hint: str = ""
