"""Test-only fault injection: crash, hang or fail with an errno at a named step.

Off unless the environment variable TRANSCRIBED_TEST_FAULTS is set, so production pays one
dictionary lookup per step. Tests use it to kill the real daemon right after a durable step
(then restart it and check the invariants) and to inject errors the kernel will not produce
on demand (EIO, EACCES for root).

Rules are separated by ";", each `STEP[~TEXT][@N]=ACTION`:
  STEP    a name passed to `point()`, e.g. `outbox.json.published` or `db.published`
  ~TEXT   only when the step's subject (a file name) contains TEXT
  @N      only at the N-th matching hit (counted per process), else at every hit
  ACTION  `exit` (os._exit, like kill -9 at that instant), `hang` (sleep forever),
          `sleepS` (pause S seconds, e.g. `sleep3`: time for a test to act mid-step),
          `raise` (an unexpected RuntimeError, e.g. to kill the thread it happens in),
          `oom` (InjectedOutOfMemory, handled like CUDA running out of memory),
          or an errno name such as `EIO` (raises OSError)
Errno faults stay active while the file named by TRANSCRIBED_TEST_FAULT_SWITCH exists (when
that is set): deleting it is how a test "repairs the disk".
"""

import errno
import os
import time
from dataclasses import dataclass

CRASH_EXIT_CODE = 86  # distinct from every exit code the daemon uses on purpose

_ENV = "TRANSCRIBED_TEST_FAULTS"


class InjectedOutOfMemory(MemoryError):
    """Stands in for torch.OutOfMemoryError, which a CPU-only test machine cannot raise."""


_SWITCH_ENV = "TRANSCRIBED_TEST_FAULT_SWITCH"


@dataclass
class _Rule:
    step: str
    text: str | None
    nth: int | None
    action: str
    hits: int = 0

    def fires(self, step: str, subject: str) -> bool:
        if step != self.step or (self.text is not None and self.text not in subject):
            return False
        self.hits += 1
        return self.nth is None or self.hits == self.nth


def _parse(spec: str) -> list[_Rule]:
    rules = []
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        target, _, action = item.partition("=")
        target, _, nth = target.partition("@")
        step, _, text = target.partition("~")
        rules.append(_Rule(step, text or None, int(nth) if nth else None, action or "exit"))
    return rules


_rules = _parse(os.environ.get(_ENV, ""))


def point(step: str, subject: str = "") -> None:
    """A named step has just happened; apply any fault a test configured for it."""
    if not _rules:
        return
    for rule in _rules:
        if rule.fires(step, subject):
            _act(rule.action, step)


def _act(action: str, step: str) -> None:
    if action == "exit":
        os._exit(CRASH_EXIT_CODE)
    if action == "hang":
        while True:
            time.sleep(3600)
    if action.startswith("sleep"):
        time.sleep(float(action.removeprefix("sleep")))
        return
    if action == "oom":
        raise InjectedOutOfMemory(f"injected at {step}")
    if action == "raise":
        raise RuntimeError(f"injected at {step}")
    switch = os.environ.get(_SWITCH_ENV)
    if switch is None or os.path.exists(switch):
        code = getattr(errno, action)
        raise OSError(code, f"{os.strerror(code)} (injected at {step})")
