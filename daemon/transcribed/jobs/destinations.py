"""Where a job's results go: one Outbox per format set and one Disposer per policy, built
once each, so per-folder rules cost nothing per job."""

from collections.abc import Callable

from transcribed.disposal.disposer import Disposer
from transcribed.output.outbox import Outbox


class Destinations:
    def __init__(
        self,
        make_outbox: Callable[[tuple[str, ...]], Outbox],
        make_disposer: Callable[[str], Disposer],
    ) -> None:
        self._make_outbox = make_outbox
        self._make_disposer = make_disposer
        self._outboxes: dict[tuple[str, ...], Outbox] = {}
        self._disposers: dict[str, Disposer] = {}

    def outbox(self, formats: tuple[str, ...]) -> Outbox:
        if formats not in self._outboxes:
            self._outboxes[formats] = self._make_outbox(formats)
        return self._outboxes[formats]

    def disposer(self, policy: str) -> Disposer:
        if policy not in self._disposers:
            self._disposers[policy] = self._make_disposer(policy)
        return self._disposers[policy]
