"""Collapse the model's repetition loops ("the the the …", one sentence forty times).

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
