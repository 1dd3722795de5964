"""Feeds between the decode loop and its callers: a list of chunks (`run_chunks`, one call's
worth), or rows that keep arriving from many recordings (`ChunkFeed`, the model thread's
`batching.SharedRecognizer`), answered as `ChunkText`."""

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from transcribed.model.decoding import Answer, DecodeLoop, Row
from transcribed.output.transcript import ChunkText

ToText = Callable[[Row, Answer], ChunkText]


class ChunkFeed(Protocol):
    """Rows from waiting recordings; each answer goes back as soon as its row ends."""

    def take(self, count: int) -> list[Row]: ...

    def done(self, row: Row, text: ChunkText) -> None: ...

    def failed(self, row: Row, error: BaseException) -> None: ...


@runtime_checkable
class RowEngine(Protocol):
    """An engine that takes rows from a feed while it decodes (in-flight refill)."""

    ceiling: int

    def run_rows(self, feed: ChunkFeed, should_stop: Callable[[], bool]) -> None: ...


class _Texts:
    """A `decoding.Feed` that hands each answer on as text."""

    def __init__(self, feed: ChunkFeed, to_text: ToText) -> None:
        self._feed, self._to_text = feed, to_text

    def take(self, count: int) -> list[Row]:
        return self._feed.take(count)

    def done(self, row: Row, answer: Answer) -> None:
        self._feed.done(row, self._to_text(row, answer))

    def failed(self, row: Row, error: BaseException) -> None:
        self._feed.failed(row, error)


def run_feed(
    loop: DecodeLoop, feed: ChunkFeed, to_text: ToText, should_stop: Callable[[], bool]
) -> None:
    loop.run(_Texts(feed, to_text), should_stop)


class _Listed:
    """One call's chunks as a feed; answers kept in input order."""

    def __init__(self, rows: list[Row]) -> None:
        self._rows = rows
        self._next = 0
        self.texts: dict[int, ChunkText] = {}
        self.error: BaseException | None = None

    def take(self, count: int) -> list[Row]:
        taken = self._rows[self._next : self._next + count]
        self._next += len(taken)
        return taken

    def done(self, row: Row, text: ChunkText) -> None:
        assert isinstance(row.tag, int)
        self.texts[row.tag] = text

    def failed(self, row: Row, error: BaseException) -> None:
        self.error = self.error or error


def run_chunks(
    loop: DecodeLoop,
    chunks: Sequence[np.ndarray],
    language: str | None,
    context: str | None,
    to_text: ToText,
    should_stop: Callable[[], bool],
) -> list[ChunkText]:
    """Text for each chunk, in input order. Chunks go in longest first, so rows that start
    together end close together; a row that fails fails the call."""
    order = sorted(range(len(chunks)), key=lambda index: -len(chunks[index]))
    listed = _Listed([Row(chunks[i], language, context, tag=i) for i in order])
    run_feed(loop, listed, to_text, should_stop)
    if listed.error is not None:
        raise listed.error
    return [listed.texts[index] for index in range(len(chunks))]
