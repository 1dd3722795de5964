"""The one backoff: how long to wait after consecutive failures, for every part that retries.

Postfix's queue manager in one line: the first wait is the minimal backoff time, each further
failure doubles it, and it never exceeds the maximal backoff time. Jitter (as dramatiq's
`compute_backoff` adds) spreads the retries of many requests that failed together. Each caller
keeps its own first and longest wait (`retry_seconds` for jobs, 2 s for the intake's own
bookkeeping, …); the formula is this one.
"""

import random
from dataclasses import dataclass

# The longest wait a job is given (its backoff's cap): the job database stores waits as wall
# clock times, and one further away than this is taken for a clock that was wrong.
LONGEST_WAIT_SECONDS = 600.0
# Doubling stops here (2**32 times the first wait is beyond any cap): a counter of failures
# that keeps growing for months must not overflow a float.
_MOST_DOUBLINGS = 32


def backoff(
    failures: int, first: float, longest: float = LONGEST_WAIT_SECONDS, jitter: float = 0.0
) -> float:
    """The wait after the `failures`-th failure in a row (1 for the first): `first`, doubled
    for each failure before it, at most `longest`, then spread by up to ±`jitter` of itself."""
    doublings = min(_MOST_DOUBLINGS, max(0, failures - 1))
    wait = min(longest, first * 2.0**doublings)
    return wait * random.uniform(1 - jitter, 1 + jitter) if jitter else wait


@dataclass(frozen=True)
class Backoff:
    """A part's own first and longest wait, as a function of the failures in a row: handed
    to what runs it (`loops.supervisor`)."""

    first: float
    longest: float = LONGEST_WAIT_SECONDS

    def __call__(self, failures: int) -> float:
        return backoff(failures, self.first, self.longest)
