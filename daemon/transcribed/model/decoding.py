"""The decode loop: rows in fixed slots, each ending on its own, refilled from waiting chunks.

`generate` decodes a batch until its slowest row ends and only then takes the next batch.
Here a row that ends frees its slot, and once enough slots are free the waiting chunks are
encoded and prefilled into them while the other rows go on (in-flight refill). Each step
runs the smallest batch size of a fine ladder that covers the rows (`bucket_ladder`), and
reads only as much of the KV cache as the longest row needs (`length_ladder`).

The loop is the policy; a `Backend` does the work: `torch_backend.TorchBackend` on the
model, or `stand_in.CostModelBackend`, which costs what an H100 would and computes nothing
(so the scheduling the GPU will see is measured on the CPU).

Out of memory: the handler only notes it. Outside it, once the failed call's tensors are
gone, the rows in flight go back to the front of the queue and the loop goes on with half
as many rows (grown back after a run of successes); a single row that still does not fit
fails alone.
"""

import gc
import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from transcribed import faults
from transcribed.errors import ShutdownRequested, TransientError
from transcribed.logs import get_logger
from transcribed.model.slot_rows import Ended, SlotRows
from transcribed.model.token_budget import token_budget

log = get_logger(__name__)

SAMPLE_RATE = 16_000
# Refill once this share of the slots is free: each refill pauses the steps for a prefill,
# whose fixed cost (~1,700 operations launched from Python) is then shared by many rows.
REFILL_SHARE = 8
# Cache lengths are multiples of this: few shapes to capture, little read past the rows.
LENGTH_STEP = 128
# Successful refills at a reduced size before trying twice the size again.
GROW_AFTER = 20


def bucket_ladder(ceiling: int) -> list[int]:
    """Batch sizes a step runs at: every size to 4, then four steps per doubling (16, 20,
    24, 28, 32, 40, …), so a step pads at most a fifth of its rows; and the ceiling."""
    sizes = {1, 2, 3, 4, 6, 8, 12}
    power = 16
    while power <= ceiling:
        sizes |= {power, power * 5 // 4, power * 3 // 2, power * 7 // 4}
        power *= 2
    return sorted(size for size in sizes | {ceiling} if size <= ceiling)


def length_ladder(longest: int, step: int = LENGTH_STEP) -> list[int]:
    """Cache lengths a step reads: multiples of `step`, and the whole cache."""
    return sorted({*range(step, longest, step), longest})


def smallest_at_least(ladder: list[int], value: int) -> int:
    return next(size for size in ladder if size >= value)


@dataclass(eq=False)
class Row:
    """One chunk to transcribe; `tag` is the caller's, handed back with the answer."""

    audio: np.ndarray
    language: str | None = None
    context: str | None = None
    tag: object = None

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def key(self) -> tuple[str | None, str | None]:
        return self.language, self.context


@dataclass(frozen=True)
class First:
    """What a prefill gives for a row: its first token, that token's log-probability, and
    the prompt's length (where the row's next token goes in the cache)."""

    token: int
    score: float
    prompt: int


@dataclass(frozen=True)
class Answer:
    """What the model wrote for a row: its tokens, the log-probability of the first few,
    and whether it ended by itself (else it hit its budget)."""

    tokens: list[int]
    scores: list[float]
    ended: bool


class Feed(Protocol):
    """Where rows come from and where their answers go."""

    def take(self, count: int) -> list[Row]:
        """Up to `count` rows ready now (never waits)."""

    def done(self, row: Row, answer: Answer) -> None: ...

    def failed(self, row: Row, error: BaseException) -> None: ...


class StepResult(Protocol):
    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The step's tokens and their log-probabilities, one per row of the step."""


class Backend(Protocol):
    """The work behind the loop: prefill rows into slots, step, move a row."""

    slots: int  # rows at most (the batch ceiling)
    length: int  # cache positions per slot
    prefill_rows: int  # rows prefilled in one call at most
    eos: frozenset[int]

    def prefill(self, rows: Sequence[Row], slots: Sequence[int]) -> list["First"]:
        """Encode and prefill `rows` into `slots`: each row's first token, its
        log-probability and its prompt's length. The slots are then ready to step."""

    def step(self, rows: int, length: int) -> StepResult:
        """Start a step of the first `rows` slots reading `length` cache positions."""

    def move(self, source: int, target: int) -> None: ...


@dataclass
class LoopCounters:
    """What the loop did, for `bench` and the stand-in's report."""

    steps: int = 0
    prefills: int = 0
    rows: int = 0
    slot_steps: int = 0  # rows times steps, padding included
    live_steps: int = 0  # rows that were live, summed over steps
    full_steps: int = 0  # steps at the ceiling with at most a refill's worth of slots idle
    out_of_memory: int = 0  # times the rows in flight were put back and the size halved


class DecodeLoop:
    """Runs rows from a feed through a backend until the feed is dry and every row ended."""

    def __init__(self, backend: Backend, fixed_tokens_per_second: float | None = None) -> None:
        self._backend = backend
        self.fixed_tokens_per_second = fixed_tokens_per_second
        self.capacity = backend.slots  # halved on out-of-memory, grown back
        self._fits = 0
        self._buckets = bucket_ladder(backend.slots)
        self._lengths = length_ladder(backend.length)
        self._eos = np.array(sorted(backend.eos), np.int64)
        self.counters = LoopCounters()
        self._warned_long = False

    def run(self, feed: Feed, should_stop: Callable[[], bool] = lambda: False) -> None:
        self._eos = np.array(sorted(self._backend.eos), np.int64)
        state = _State(SlotRows(self._backend.slots, self._backend.length))
        while True:
            out_of_memory = False
            try:
                if not self._turn(state, feed, should_stop):
                    return
            except (torch.OutOfMemoryError, faults.InjectedOutOfMemory):
                out_of_memory = True  # nothing of the error is kept: its frames hold tensors
            if out_of_memory:
                self._recover(state, feed)

    # --- one turn: refill when it is worth it, then a step ----------------------------

    def _turn(self, state: "_State", feed: Feed, should_stop: Callable[[], bool]) -> bool:
        if should_stop():
            raise ShutdownRequested("stopping between decoding steps")
        live = len(state.slots)
        free = self.capacity - live
        admitted = False
        if free >= max(1, self.capacity // REFILL_SHARE) or not live:
            if free > len(state.waiting):
                state.waiting.extend(feed.take(free - len(state.waiting)))
            if state.waiting:
                self._finish_step(state, feed)
                self._admit(state, feed)
                admitted = True
        if self._worth_compacting(state):
            self._finish_step(state, feed)
            self._compact(state)
        if not len(state.slots):
            self._finish_step(state, feed)
            return admitted or bool(state.waiting)  # rows may have ended at their prefill
        self._launch(state, feed)
        return True

    def _admit(self, state: "_State", feed: Feed) -> None:
        """Prefill waiting rows into the free slots, a group of one key at a time."""
        free = state.slots.free(self.capacity)
        while free and state.waiting:
            group = self._group(state.waiting, min(len(free), self._backend.prefill_rows))
            slots, free = free[: len(group)], free[len(group) :]
            firsts = self._backend.prefill(group, slots)
            for _ in group:
                state.waiting.popleft()
            self.counters.prefills += 1
            self.counters.rows += len(group)
            self._start(state, feed, group, slots, firsts)
        self._fits += 1
        if self.capacity < self._backend.slots and self._fits >= GROW_AFTER:
            self.capacity, self._fits = min(self._backend.slots, self.capacity * 2), 0
            log.info("model.batch_grown", batch=self.capacity)

    def _group(self, waiting: deque[Row], most: int) -> list[Row]:
        """The first waiting rows that share the first one's language and context (their
        prompts are built together), up to `most`; the rest keep their place."""
        key = waiting[0].key
        group: list[Row] = []
        for row in list(waiting):
            if len(group) == most or row.key != key:
                break
            group.append(row)
        return group

    def _start(
        self, state: "_State", feed: Feed, rows: list[Row], slots: list[int], firsts: list[First]
    ) -> None:
        """The rows take their slots with their first token (some end there)."""
        book = state.slots
        for row, slot, first in zip(rows, slots, firsts, strict=True):
            budget = token_budget(row.seconds)
            room = self._backend.length - first.prompt - 2  # the step after the end writes
            if budget > room:
                self._warn_long(first.prompt)
                budget = max(1, room)
            fixed = 0
            if self.fixed_tokens_per_second:
                fixed = min(budget, max(1, math.ceil(row.seconds * self.fixed_tokens_per_second)))
            book.start(slot, row, budget, fixed, first.prompt)
        index = np.array(slots, np.int64)
        tokens = np.zeros(self._backend.slots, np.int64)
        scores = np.zeros(self._backend.slots, np.float32)
        tokens[index] = [first.token for first in firsts]
        scores[index] = [first.score for first in firsts]
        self._end(state, feed, book.record(index, tokens, scores, self._eos))

    def _warn_long(self, position: int) -> None:
        if not self._warned_long:
            self._warned_long = True
            log.warning(
                "decode.prompt_too_long",
                prompt_tokens=position,
                cache_tokens=self._backend.length,
                hint="a long context leaves less room for text: such chunks may be cut short",
            )

    # --- steps ------------------------------------------------------------------------

    def _launch(self, state: "_State", feed: Feed) -> None:
        """Start a step, then read the one before it: the GPU works on this step while
        the CPU looks at the last one's tokens."""
        book = state.slots
        rows = smallest_at_least(self._buckets, book.highest())
        length = smallest_at_least(self._lengths, min(book.longest(), self._backend.length))
        faults.point("model.step", f"{rows} rows")
        started = self._backend.step(rows, length)
        live = book.occupied()
        book.advance(live)
        self._count(rows, len(live))
        self._finish_step(state, feed)
        state.in_flight = (started, live, book.started[live].copy())

    def _finish_step(self, state: "_State", feed: Feed) -> None:
        """Read the step in flight (if any): record each of its rows' token, end rows."""
        if state.in_flight is None:
            return
        started, slots, generation = state.in_flight
        state.in_flight = None
        tokens, scores = started.result()
        book = state.slots
        # Rows that ended at the step before this one, or were moved, are skipped.
        current = slots[book.live[slots] & (book.started[slots] == generation)]
        self._end(state, feed, book.record(current, tokens, scores, self._eos))

    def _end(self, state: "_State", feed: Feed, ended: Ended) -> None:
        for slot, by_itself in zip(ended.slots.tolist(), ended.by_itself.tolist(), strict=True):
            row, tokens, scores = state.slots.answer(slot)
            assert isinstance(row, Row)
            feed.done(row, Answer(tokens, scores, bool(by_itself)))

    def _count(self, rows: int, live: int) -> None:
        counters = self.counters
        counters.steps += 1
        counters.slot_steps += rows
        counters.live_steps += live
        if rows == self._backend.slots and live >= rows - rows // REFILL_SHARE:
            counters.full_steps += 1

    def _worth_compacting(self, state: "_State") -> bool:
        """Rows sit in high slots while a smaller batch size would hold them all."""
        live = len(state.slots)
        if not live:
            return False
        needed = smallest_at_least(self._buckets, live)
        return smallest_at_least(self._buckets, state.slots.highest()) > needed

    def _compact(self, state: "_State") -> None:
        book = state.slots
        live = len(book)
        free = iter(book.free(live))
        for slot in [int(slot) for slot in book.occupied() if slot >= live]:
            target = next(free)
            self._backend.move(slot, target)
            book.move(slot, target)

    # --- out of memory -----------------------------------------------------------------

    def _recover(self, state: "_State", feed: Feed) -> None:
        """After the handler: the rows in flight go back to the front of the queue, the
        failed call's tensors are freed, and the loop goes on with half the rows; a row
        that fails alone fails for good."""
        state.in_flight = None
        again = [row for row in state.slots.clear() if isinstance(row, Row)]
        gc.collect()  # frames of the failed call may sit in reference cycles
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.capacity == 1:
            if again:
                failed = again.pop(0)
            elif state.waiting:
                failed = state.waiting.popleft()
            else:
                raise TransientError("GPU out of memory with no row to give up")
            feed.failed(failed, TransientError("GPU out of memory even for a single chunk"))
        state.waiting.extendleft(reversed(again))
        half = max(1, self.capacity // 2)
        self.counters.out_of_memory += 1
        log.warning("model.oom_split", batch=self.capacity, into=half)
        self.capacity, self._fits = half, 0


@dataclass
class _State:
    slots: SlotRows
    waiting: deque[Row] = field(default_factory=deque)
    in_flight: tuple[StepResult, np.ndarray, np.ndarray] | None = None
