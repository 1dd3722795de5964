"""Per-folder rules: an inbox subfolder can force a language, add context (hotwords), choose
formats, a disposal policy and an outbox subfolder, and turn speaker labels on or off. The
deepest matching rule wins; anything a rule leaves unset comes from the global settings.

A `.context.txt` in an inbox folder (or any folder above it, up to the inbox) adds to the
context of recordings below it. The inbox is shared, so that file is read like untrusted
input: no symlinks, regular files only, at most a few KB.
"""

import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from transcribed.settings.folders import MAX_CONTEXT_BYTES, FolderRule

CONTEXT_FILE = ".context.txt"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class Plan:
    """What to do with one recording, rules applied."""

    relpath: str  # the recording, relative to the inbox
    language: str | None
    rule_context: str | None  # the rule's glossary; `.context.txt` files are read by `context`
    formats: tuple[str, ...]
    disposal: str
    output_relpath: str  # where its transcripts go, relative to the outbox (with its name)
    diarize: bool = False  # label speakers
    max_speakers: int | None = None


class Rules:
    def __init__(
        self,
        rules: list[FolderRule],
        *,
        inbox: Path,
        language: str | None,
        formats: tuple[str, ...],
        disposal: str,
        diarize: bool = False,
        max_speakers: int | None = None,
    ) -> None:
        self._rules = sorted(rules, key=lambda rule: -len(PurePosixPath(rule.path).parts))
        self._inbox = inbox
        self._language = language
        self._formats = formats
        self._disposal = disposal
        self._diarize = diarize
        self._max_speakers = max_speakers

    def plan(self, relpath: str) -> Plan:
        """The plan for the recording at inbox-relative `relpath` (no file is read)."""
        path = PurePosixPath(relpath)
        rule = next((r for r in self._rules if _below(path, PurePosixPath(r.path))), None)
        output = str(path)
        if rule and rule.output:
            output = str(PurePosixPath(rule.output) / path.relative_to(rule.path))
        return Plan(
            relpath=relpath,
            language=(rule.language if rule and rule.language else self._language),
            rule_context=rule.context if rule else None,
            formats=tuple(rule.formats) if rule and rule.formats else self._formats,
            disposal=rule.disposal if rule and rule.disposal else self._disposal,
            output_relpath=output,
            diarize=rule.diarize if rule and rule.diarize is not None else self._diarize,
            max_speakers=rule.max_speakers if rule and rule.max_speakers else self._max_speakers,
        )

    def context(self, plan: Plan) -> str | None:
        """The model's context for a planned recording: its rule's glossary plus the nearest
        `.context.txt`. Reads the inbox, so it is asked only when transcribing."""
        found = read_context(self._inbox, PurePosixPath(plan.relpath))
        return "\n".join(c for c in (plan.rule_context, found) if c) or None


def _below(path: PurePosixPath, folder: PurePosixPath) -> bool:
    return path.parts[: len(folder.parts)] == folder.parts and len(path.parts) > len(folder.parts)


def read_context(inbox: Path, relpath: PurePosixPath) -> str | None:
    """The nearest `.context.txt` at or above the recording's folder, read safely: folders are
    entered one by one without following symlinks, so nothing outside the inbox is read."""
    found: str | None = None
    fd = os.open(inbox, _DIR_FLAGS)
    try:
        found = _read_context_at(fd) or found
        for part in relpath.parent.parts:
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                break  # gone, or swapped for a symlink: stop here
            os.close(fd)
            fd = child
            found = _read_context_at(fd) or found
    finally:
        os.close(fd)
    return found


def _read_context_at(folder_fd: int) -> str | None:
    try:
        fd = os.open(CONTEXT_FILE, _FILE_FLAGS, dir_fd=folder_fd)
    except OSError:
        return None  # absent, a symlink, unreadable: no context from here
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, MAX_CONTEXT_BYTES).decode("utf-8", errors="replace").strip()
        return text or None
    finally:
        os.close(fd)
