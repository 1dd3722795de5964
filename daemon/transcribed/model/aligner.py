"""Word timing with Qwen3-ForcedAligner (optional): one forward pass over audio and text.

The aligner knows 11 languages and windows of at most 180 s; anything else keeps the
segment's own timing. Its time bins are clamped to the piece of audio and made monotonic:
a word never starts before the previous one or ends outside its segment.
"""

import time
from typing import Any

import numpy as np
import torch

from transcribed.errors import ModelError
from transcribed.logs import get_logger
from transcribed.output.transcript import Word

log = get_logger(__name__)

WINDOW_SECONDS = 180.0  # the aligner's longest input
_RATE = 16_000


class Aligner:
    """Qwen3ASRForTokenClassification plus its processor, resident on one device."""

    def __init__(self, model: Any, processor: Any) -> None:
        from transformers.models.qwen3_asr.processing_qwen3_asr import (
            FORCED_ALIGNER_LANGUAGES,
            LANGUAGE_CODE_TO_NAME,
        )

        self._model = model
        self._processor = processor
        self._names = LANGUAGE_CODE_TO_NAME
        self._supported = FORCED_ALIGNER_LANGUAGES
        self._unsupported: set[str] = set()  # languages whose word splitter is not installed

    @classmethod
    def load(cls, model: str, device: str, *, allow_download: bool) -> "Aligner":
        from transformers import Qwen3ASRForTokenClassification

        from transcribed.model.device import resolve_device
        from transcribed.model.model_files import (
            checked_folder,
            first_line,
            load_processor,
            quiet_loading,
        )

        torch_device = resolve_device(device)
        folder = checked_folder(model, allow_download, recognizer=False, setting="aligner")
        dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
        quiet_loading()
        started = time.monotonic()
        processor = load_processor(folder)
        try:
            network = Qwen3ASRForTokenClassification.from_pretrained(
                folder, dtype=dtype, local_files_only=True
            )
        except Exception as error:  # OSError, ValueError, RuntimeError (shapes), …
            raise ModelError(
                f"cannot load the aligner from {folder}: {type(error).__name__}: "
                f"{first_line(error)}"
            ) from error
        network.to(torch_device).eval()
        log.info("aligner.loaded", model=model, seconds=round(time.monotonic() - started, 2))
        return cls(network, processor)

    def supports(self, language: str | None) -> bool:
        """None (not detected) is tried with the default word splitting."""
        if language is None:
            return True
        return language not in self._unsupported and (
            self._names.get(language, language) in self._supported
        )

    @torch.inference_mode()
    def align(self, audio: np.ndarray, text: str, language: str | None) -> tuple[Word, ...]:
        """Words of `text` with times in seconds from the start of `audio`; () when the piece
        is too long, the language unsupported or the text has no words."""
        seconds = len(audio) / _RATE
        if not text.strip() or seconds > WINDOW_SECONDS or not self.supports(language):
            return ()
        try:
            inputs, word_lists = self._processor.prepare_forced_aligner_inputs(
                [audio], [text], language=language
            )
        except ImportError as missing:  # ja needs nagisa, ko needs soynlp to split words
            self._unsupported.add(str(language))
            log.warning("aligner.language_needs_package", language=language, error=str(missing))
            return ()
        if not word_lists[0]:
            return ()
        inputs = inputs.to(self._model.device)
        inputs["input_features"] = inputs["input_features"].to(self._model.dtype)
        logits = self._model(**inputs).logits
        [items] = self._processor.decode_forced_alignment(
            logits, inputs["input_ids"], word_lists, self._model.config.timestamp_token_id
        )
        return monotonic_words(items, seconds)


def monotonic_words(items: list[dict[str, Any]], seconds: float) -> tuple[Word, ...]:
    """Clamp each word into [0, seconds] and keep starts and ends in order."""
    words: list[Word] = []
    floor = 0.0
    for item in items:
        start = min(max(float(item["start_time"]), floor), seconds)
        end = min(max(float(item["end_time"]), start), seconds)
        words.append(Word(str(item["text"]), round(start, 3), round(end, 3)))
        floor = end
    return tuple(words)
