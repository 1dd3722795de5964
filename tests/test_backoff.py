"""The one backoff every part that retries uses (issue 22): the figures each part had."""

import pytest

from transcribed.backoff import LONGEST_WAIT_SECONDS, Backoff, backoff


def test_the_wait_doubles_from_the_first_up_to_the_longest() -> None:
    """A job's transient failures with `retry_seconds = 30`: 30 s, then doubling to 10 min."""
    assert [backoff(n, 30.0) for n in range(1, 8)] == [30, 60, 120, 240, 480, 600, 600]
    assert LONGEST_WAIT_SECONDS == 600


def test_each_part_keeps_its_own_first_and_longest_wait() -> None:
    """The intake's own bookkeeping: 2 s up to a minute; a large file's hash: 5 s up."""
    assert [Backoff(2.0, 60.0)(n) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]
    assert [backoff(n, 5.0) for n in (1, 2, 3, 8)] == [5, 10, 20, 600]


def test_the_page_keeps_its_figures() -> None:
    """A wrong password on the page waits 2 s, doubling to 15 minutes (its figures before
    the one backoff)."""
    assert [backoff(n, 2.0, 900.0) for n in (1, 2, 9, 10, 25)] == [2, 4, 512, 900, 900]


def test_no_failure_yet_waits_the_first_wait() -> None:
    assert backoff(0, 30.0) == backoff(1, 30.0) == 30.0


def test_months_of_failures_in_a_row_do_not_overflow() -> None:
    """A counter that grows for months (a disk full for weeks) still gives the longest wait."""
    assert backoff(5000, 30.0) == LONGEST_WAIT_SECONDS
    assert backoff(10**9, 0.5, longest=float("inf")) == 0.5 * 2.0**32


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_jitter_spreads_the_wait_around_its_doubling(attempt: int) -> None:
    """The engine servers' retries: 0.5 s doubling, each spread by up to half of itself."""
    plain = 0.5 * 2 ** (attempt - 1)
    waits = {backoff(attempt, 0.5, longest=float("inf"), jitter=0.5) for _ in range(200)}
    assert all(plain * 0.5 <= wait <= plain * 1.5 for wait in waits)
    assert len(waits) > 100  # spread out, not one value
