"""The model's raw answer, `language X<asr_text>text`, made into a `ChunkText`.

One parser for every engine (the resident model and vLLM servers), so a forced language, the
model's "no speech" answer, repetition loops, context echoed into the text and truncation are
treated the same whichever engine wrote the answer. Engines hand in the decoded answer (special
tokens skipped; `<asr_text>` is an ordinary token and stays), whether generation ended on its
own, and the language confidence they computed from their own scores.
"""

from transcribed.model.repetition import collapse_repetitions, remove_context_echo
from transcribed.output.transcript import ChunkText
from transcribed.settings.languages import QWEN3_ASR_LANGUAGES

MARKER = "<asr_text>"


class LanguageNames:
    """ISO codes and English names of the languages Qwen3-ASR knows (the one table the
    settings check against too)."""

    def __init__(self) -> None:
        self._code_to_name: dict[str, str] = dict(QWEN3_ASR_LANGUAGES)
        self._name_to_code: dict[str, str] = {
            name.lower(): code for code, name in QWEN3_ASR_LANGUAGES.items()
        }

    def name(self, language: str | None) -> str | None:
        """English name for a language code or name the model knows; unknown ones pass through."""
        if not language:
            return None
        return self._code_to_name.get(self.code(language) or "", language)

    def code(self, language: str | None) -> str | None:
        """ISO code for a language name or code the model knows; unknown names pass through."""
        if not language:
            return None
        return self._name_to_code.get(language.lower(), language)

    def prefill(self, language: str) -> str:
        """What forcing `language` writes for the model: it then only writes the text. The same
        words as transformers' `apply_transcription_request`."""
        return f"language {self.name(language)}{MARKER}"


def detected_language(raw: str) -> str | None:
    """The language the model wrote before the marker: its first non-empty line, without the
    word "language" (as transformers' Qwen3-ASR output parser reads it)."""
    prefix, marker, _text = raw.strip().partition(MARKER)
    if not marker or prefix.strip().lower() == "language none":
        return None
    for line in prefix.splitlines():
        line = line.strip()
        if line:
            named = line[len("language ") :] if line.lower().startswith("language ") else line
            return named.strip() or None
    return None


def parse_answer(
    raw: str,
    *,
    ended: bool,
    confidence: float | None,
    forced: str | None,
    context: str | None,
    names: LanguageNames,
) -> ChunkText:
    """The chunk's text and language from the raw answer. `ended`: generation stopped by
    itself (else it hit its token budget: truncated). `confidence`: P(the detected language),
    None when forced or not known."""
    if not forced and raw.strip().lower().startswith("language none"):
        # The model's own "no speech" answer: whatever text follows is invented.
        return ChunkText("", None, truncated=False, no_speech=True)
    name = forced or detected_language(raw)
    _prefix, marker, body = raw.partition(MARKER)
    text, repeated = collapse_repetitions((body if marker else raw).strip())
    text, _echoed = remove_context_echo(text, context)
    return ChunkText(
        text,
        names.code(name),
        truncated=not ended,
        language_name=names.name(name),
        language_confidence=None if forced or not name else confidence,
        repetition_fixed=repeated,
    )
