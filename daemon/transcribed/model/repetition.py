"""Clean-ups of the model's known failure modes: repetition loops ("the the the …", one
sentence forty times) and the context prompt echoed into the transcript.

A decoder stuck in a loop repeats a short unit many times or a long one a few times; real
speech does neither at these counts. Each run is collapsed to a single occurrence.
"""

import re

# (longest unit in characters, repeats that make a loop): short units need many repeats
# ("no, no, no" is speech), long ones few (nobody says the same 40-character sentence 4 times
# in a row).
_LOOPS = (
    re.compile(r"(.{1,20}?)\1{19,}", re.DOTALL),
    re.compile(r"(.{21,200}?)\1{3,}", re.DOTALL),
)


def collapse_repetitions(text: str) -> tuple[str, bool]:
    """The text with every loop collapsed, and whether any was found."""
    fixed = text
    for loop in _LOOPS:
        fixed = loop.sub(r"\1", fixed)
    return fixed, fixed != text


_MIN_ECHO_CHARS = 12  # shorter glossary entries are words the speaker may well have said


def remove_context_echo(text: str, context: str | None) -> tuple[str, bool]:
    """Drop the context prompt where the model copied it into the transcript: the whole
    context, or any of its lines, verbatim and long enough not to be ordinary speech."""
    if not context:
        return text, False
    pieces = [" ".join(context.split())] + [" ".join(line.split()) for line in context.splitlines()]
    cleaned = " ".join(text.split())
    for piece in sorted({p for p in pieces if len(p) >= _MIN_ECHO_CHARS}, key=len, reverse=True):
        cleaned = cleaned.replace(piece, " ")
    cleaned = " ".join(cleaned.split())
    return (cleaned, True) if cleaned != " ".join(text.split()) else (text, False)
