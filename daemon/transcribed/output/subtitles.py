"""SRT, WebVTT and TSV renderings of a transcript's segments.

Segments are up to `chunk_seconds` long: far too long for one subtitle, so each is split into
cues of at most two readable lines. With word timing (the aligner) cues are cut after a word
and take that word's times; without it they are cut at spaces (characters for unspaced
scripts) and the segment's time is shared out in proportion to the text.

With speaker labels, an SRT cue starts with its speaker ("S1: …"), a WebVTT cue is a voice
span (`<v S1>…`), and the TSV gains `speaker` and `overlap` columns.
"""

import re
from dataclasses import dataclass

from transcribed.output.transcript import Segment, Transcript, word_ends

MAX_CUE_CHARS = 84  # two lines of 42: the usual broadcast limit
_LINE_CHARS = 42


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str
    speaker: str | None = None


def cues(segments: tuple[Segment, ...], max_chars: int = MAX_CUE_CHARS) -> list[Cue]:
    """Subtitle cues in order, none overlapping, none empty."""
    result: list[Cue] = []
    for segment in segments:
        text = " ".join(segment.text.split())
        room = max_chars - len(_label(segment.speaker))  # the SRT label shares the lines
        ends = word_ends(text, segment.words) if segment.words else None
        if ends is not None:
            result += _word_cues(text, segment, ends, room)
            continue
        pieces = _split(text, room)
        total = sum(len(piece) for piece in pieces)
        start = segment.start
        for piece in pieces:
            end = start + (segment.end - segment.start) * len(piece) / total
            result.append(Cue(round(start, 3), round(end, 3), piece, segment.speaker))
            start = end
    return result


def _label(speaker: str | None) -> str:
    return f"{speaker}: " if speaker else ""


def _word_cues(text: str, segment: Segment, ends: list[int], max_chars: int) -> list[Cue]:
    """Cues cut after whole words, timed by the words they hold."""
    made: list[Cue] = []
    first_word, first_char = 0, 0
    for index in range(len(segment.words)):
        last = index == len(segment.words) - 1
        too_long = len(text[first_char : ends[index]].strip()) > max_chars
        if too_long and index > first_word:
            made.append(_cue(text[first_char : ends[index - 1]], segment, first_word, index - 1))
            first_word, first_char = index, ends[index - 1]
        if last:
            made.append(_cue(text[first_char:], segment, first_word, index))
    return made


def _cue(text: str, segment: Segment, first: int, last: int) -> Cue:
    start, end = segment.words[first].start, segment.words[last].end
    return Cue(start, max(start, end), text.strip(), segment.speaker)


def _split(text: str, max_chars: int) -> list[str]:
    """Pieces of at most `max_chars`, cut at spaces where the text has them."""
    pieces: list[str] = []
    while len(text) > max_chars:
        cut = text.rfind(" ", 0, max_chars + 1)
        cut = cut if cut > 0 else max_chars  # no space (CJK, one long word): cut anywhere
        pieces.append(text[:cut].strip())
        text = text[cut:].strip()
    if text:
        pieces.append(text)
    return pieces


def _lines(text: str) -> str:
    """Break a cue into two lines near the middle, at a space when there is one."""
    if len(text) <= _LINE_CHARS:
        return text
    middle = len(text) // 2
    left, right = text.rfind(" ", 0, middle + 1), text.find(" ", middle)
    candidates = [i for i in (left, right) if i > 0]
    if not candidates:
        return text
    cut = min(candidates, key=lambda i: abs(i - middle))
    return text[:cut] + "\n" + text[cut + 1 :]


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _no_arrow(text: str) -> str:
    return text.replace("-->", "->")  # the one sequence both formats reserve


def render_srt(transcript: Transcript) -> bytes:
    blocks = [
        f"{number}\n{_clock(cue.start, ',')} --> {_clock(cue.end, ',')}\n"
        f"{_lines(_no_arrow(_label(cue.speaker) + cue.text))}\n"
        for number, cue in enumerate(cues(transcript.segments), start=1)
    ]
    return "\n".join(blocks).encode()


_VTT_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def render_vtt(transcript: Transcript) -> bytes:
    lines = ["WEBVTT", ""]
    for cue in cues(transcript.segments):
        text = re.sub(r"[&<>]", lambda m: _VTT_ESCAPES[m.group()], _no_arrow(cue.text))
        voice = f"<v {cue.speaker}>" if cue.speaker else ""
        lines += [f"{_clock(cue.start, '.')} --> {_clock(cue.end, '.')}", voice + _lines(text), ""]
    return "\n".join(lines).encode()


def render_tsv(transcript: Transcript) -> bytes:
    """One row per segment: start and end in milliseconds, the language, with speaker labels
    the speaker and who else talks over it (comma-separated), then the text (tabs removed)."""
    labelled = any(segment.speaker for segment in transcript.segments)
    rows = [
        "start\tend\tlanguage\tspeaker\toverlap\ttext" if labelled else "start\tend\tlanguage\ttext"
    ]
    for segment in transcript.segments:
        text = " ".join(segment.text.split())
        who = f"{segment.speaker or ''}\t{','.join(segment.overlap)}\t" if labelled else ""
        rows.append(
            f"{round(segment.start * 1000)}\t{round(segment.end * 1000)}\t"
            f"{segment.language or ''}\t{who}{text}"
        )
    return ("\n".join(rows) + "\n").encode()
