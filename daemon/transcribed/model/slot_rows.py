"""The decode loop's bookkeeping per slot, in arrays: a step's tokens are recorded and its
ended rows found for every row at once, so the CPU's share of a 256-row step is a few
array operations, not 256 rounds of Python (the GPU runs the next step meanwhile)."""

from dataclasses import dataclass

import numpy as np

from transcribed.model.scoring import LANGUAGE_STEPS


@dataclass(frozen=True)
class Ended:
    """Rows a step ended: their slots, and for each whether it ended by itself (else it hit
    its token budget)."""

    slots: np.ndarray
    by_itself: np.ndarray


class SlotRows:
    """Which row each slot holds, where it is, and what it has written so far."""

    def __init__(self, slots: int, length: int) -> None:
        self.rows: list[object | None] = [None] * slots
        self.live = np.zeros(slots, bool)
        self.count = np.zeros(slots, np.int64)  # tokens written
        self.budget = np.zeros(slots, np.int64)
        self.fixed = np.zeros(slots, np.int64)  # a fixed count (random weights); 0: none
        self.position = np.zeros(slots, np.int64)  # where the next input goes in the cache
        self.started = np.zeros(slots, np.int64)  # bumped when a slot takes a new row
        self.tokens = np.zeros((slots, length), np.int64)
        self.scores = np.zeros((slots, LANGUAGE_STEPS), np.float32)

    def __len__(self) -> int:
        return int(self.live.sum())

    def occupied(self) -> np.ndarray:
        return np.flatnonzero(self.live)

    def free(self, below: int) -> list[int]:
        return [int(slot) for slot in np.flatnonzero(~self.live[:below])]

    def highest(self) -> int:
        """One past the highest live slot (0 when none)."""
        live = self.occupied()
        return int(live[-1]) + 1 if len(live) else 0

    def longest(self) -> int:
        """Cache places the live rows read at the next step."""
        return int(self.position[self.live].max()) + 1

    def start(self, slot: int, row: object, budget: int, fixed: int, position: int) -> None:
        self.rows[slot] = row
        self.live[slot] = True
        self.count[slot], self.budget[slot], self.fixed[slot] = 0, budget, fixed
        self.position[slot] = position
        self.started[slot] += 1

    def advance(self, slots: np.ndarray) -> None:
        self.position[slots] += 1

    def record(
        self, slots: np.ndarray, tokens: np.ndarray, scores: np.ndarray, eos: np.ndarray
    ) -> Ended:
        """Each slot's token (indexed by slot) and its score; the rows that ended."""
        count = self.count[slots]
        self.tokens[slots, count] = tokens[slots]
        early = count < LANGUAGE_STEPS
        self.scores[slots[early], count[early]] = scores[slots[early]]
        count += 1
        self.count[slots] = count
        fixed = self.fixed[slots]
        counted = fixed > 0
        reached = counted & (count >= fixed)
        stopped = ~counted & np.isin(tokens[slots], eos)
        cut = ~counted & ~stopped & (count >= self.budget[slots])
        ended = reached | stopped | cut
        return Ended(slots[ended], (reached | stopped)[ended])

    def answer(self, slot: int) -> tuple[object, list[int], list[float]]:
        """The slot's row, its tokens and scores; the slot is free again."""
        count = int(self.count[slot])
        row, self.rows[slot] = self.rows[slot], None
        self.live[slot] = False
        scores = self.scores[slot, : min(count, LANGUAGE_STEPS)].tolist()
        return row, self.tokens[slot, :count].tolist(), scores

    def move(self, source: int, target: int) -> None:
        for array in (
            self.live,
            self.count,
            self.budget,
            self.fixed,
            self.position,
            self.tokens,
            self.scores,
        ):
            array[target] = array[source]
        self.rows[target], self.rows[source] = self.rows[source], None
        self.live[source] = False
        self.started[target] += 1
        self.started[source] += 1

    def clear(self) -> list[object]:
        """Every live row, lowest slot first; all slots free."""
        rows = [self.rows[slot] for slot in self.occupied()]
        self.live[:] = False
        self.rows = [None] * len(self.rows)
        return [row for row in rows if row is not None]
