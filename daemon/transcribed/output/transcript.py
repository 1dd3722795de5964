"""Plain value types for a finished transcript, and the text rules that build one.

No model types here: the outbox writers import this module and nothing heavier.
"""

import dataclasses
import hashlib
import json
import unicodedata
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ChunkText:
    """What the model made of one chunk."""

    text: str
    language: str | None  # ISO 639-1 code (or the model's name for an unmapped language)
    truncated: bool  # generation hit the token budget: the text may be cut short
    language_name: str | None = None  # English name, e.g. "Chinese"
    language_confidence: float | None = None  # P(detected language); None when forced or none
    repetition_fixed: bool = False  # a repetition loop was collapsed
    no_speech: bool = False  # silence, or the model said there is no speech: text is empty


@dataclass(frozen=True)
class Word:
    """A word (a character, for Chinese) with times in seconds, from the forced aligner."""

    text: str
    start: float
    end: float


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    language: str | None
    language_name: str | None = None
    language_confidence: float | None = None
    truncated: bool = False
    repetition_fixed: bool = False
    no_speech: bool = False
    words: tuple[Word, ...] = ()  # only with the aligner; times in seconds of the recording
    pause_before: float = 0.0  # seconds of quiet between the previous speech and this
    # With the diarizer: who speaks ("S1", "S2", … by first appearance in the recording), and
    # who else talks at the same time for a noticeable while (overlapping speech).
    speaker: str | None = None
    overlap: tuple[str, ...] = ()


@dataclass(frozen=True)
class SourceInfo:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ModelInfo:
    id: str
    device: str
    dtype: str


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str | None
    language_confidence: float | None  # duration-weighted over the main language's segments
    languages: dict[str, float]  # share of speech time per language, largest first
    segments: tuple[Segment, ...]
    duration: float
    status: str  # "ok", or "no_speech" when no segment has speech (the text is then empty)
    source: SourceInfo
    model: ModelInfo
    created: str
    processing_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    # With the diarizer: each speaker's talk time and share of all talk time, by label, e.g.
    # {"S1": {"seconds": 412.3, "share": 0.58}}; empty without it.
    speakers: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data.update(self.extra)
        return data

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> "Transcript":
        """The transcript a published JSON holds (`to_json_dict` reversed): what the
        recording's other names are published from. KeyError/TypeError when it is not one."""
        fields = {name: data[name] for name in _PLAIN_FIELDS}
        extra = {name: value for name, value in data.items() if name not in _ALL_FIELDS}
        return cls(
            **fields,
            languages=dict(data["languages"]),
            speakers=dict(data.get("speakers", {})),
            segments=tuple(_segment(segment) for segment in data["segments"]),
            source=SourceInfo(**data["source"]),
            model=ModelInfo(**data["model"]),
            extra=extra,
        )


def _segment(data: dict[str, Any]) -> Segment:
    words = tuple(Word(**word) for word in data.get("words", ()))
    return Segment(**{**data, "words": words, "overlap": tuple(data.get("overlap", ()))})


_ALL_FIELDS = {f.name for f in dataclasses.fields(Transcript)}
_CONVERTED = {"languages", "segments", "source", "model", "extra", "speakers"}
_PLAIN_FIELDS = tuple(sorted(_ALL_FIELDS - _CONVERTED))


def _is_unspaced_char(char: str) -> bool:
    """Scripts written without spaces between words: CJK ideographs, kana, fullwidth marks."""
    if not char:
        return False
    name = unicodedata.name(char, "")
    return name.startswith(("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC", "FULLWIDTH")) or (
        "\u3000" <= char <= "\u303f"
    )


def join_texts(texts: list[str]) -> str:
    """Join chunk texts: a space between space-delimited words, none between CJK characters."""
    joined = ""
    for text in (t.strip() for t in texts):
        if not text:
            continue
        if joined and not (_is_unspaced_char(joined[-1]) and _is_unspaced_char(text[0])):
            joined += " "
        joined += text
    return joined


def main_language(segments: tuple[Segment, ...]) -> str | None:
    """The language with the most speech time, or None when no segment has one."""
    seconds: dict[str, float] = defaultdict(float)
    for segment in segments:
        if segment.language:
            seconds[segment.language] += segment.end - segment.start
    return max(seconds, key=lambda code: seconds[code]) if seconds else None


def language_shares(segments: tuple[Segment, ...]) -> dict[str, float]:
    """Each detected language's share of the speech time (segments with a language), largest
    first, rounded to 2 places: e.g. {"zh": 0.63, "en": 0.37}."""
    seconds: dict[str, float] = defaultdict(float)
    for segment in segments:
        if segment.language:
            seconds[segment.language] += segment.end - segment.start
    total = sum(seconds.values())
    ranked = sorted(seconds.items(), key=lambda item: -item[1])
    return {code: round(time / total, 2) for code, time in ranked} if total else {}


def word_ends(text: str, words: tuple[Word, ...]) -> list[int] | None:
    """Where each aligned word ends in `text` (with punctuation that follows it), or None when
    the words cannot be found in order."""
    ends, position = [], 0
    for word in words:
        found = text.find(word.text, position)
        if found < 0:
            return None
        position = found + len(word.text)
        while position < len(text) and unicodedata.category(text[position]).startswith("P"):
            position += 1
        ends.append(position)
    return ends


def weighted_confidence(segments: tuple[Segment, ...], language: str | None) -> float | None:
    """Duration-weighted confidence of `language` over its segments that have one."""
    scored = [s for s in segments if s.language == language and s.language_confidence is not None]
    weight = sum(s.end - s.start for s in scored)
    if not scored or not weight:
        return None
    total = sum((s.end - s.start) * (s.language_confidence or 0.0) for s in scored)
    return round(total / weight, 4)


@dataclass(frozen=True)
class Request:
    """What the model is asked for a recording: which model, a forced language, a context.
    The same content asked the same way gives the same result, so it is transcribed once."""

    model: str
    language: str | None
    context: str | None
    speakers: int | None = None  # speaker labels: None off, else the speaker cap (0: none)

    def as_json(self) -> dict[str, str | int | None]:
        """For the transcript's JSON: enough to recognise the request, not the context text."""
        digest = hashlib.sha256(self.context.encode()).hexdigest() if self.context else None
        return {"language": self.language, "context_sha256": digest, "speakers": self.speakers}

    @property
    def key(self) -> str:
        return request_key(self.model, self.as_json())


def request_key(model: str, request: dict[str, Any]) -> str:
    """The key of a request, from the model id and `Request.as_json()` (as a published JSON
    holds them: the job database can be rebuilt from the outbox)."""
    parts = [model, request.get("language"), request.get("context_sha256")]
    if request.get("speakers") is not None:  # keys of requests without labels stay as they were
        parts.append(request["speakers"])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
