"""Language confidence from the model's own generation scores. No model types: unit-testable.

Qwen3-ASR writes `language <Name><asr_text>text…`. Under greedy decoding each generated
token is the most likely one, so the probability of the detected language is the product of
the chosen tokens' probabilities up to the `<asr_text>` marker. The resident model names
tokens by id; a vLLM server's log-probabilities name them by their text: both work.
"""

import math
from collections.abc import Hashable, Sequence
from typing import TypeVar

# The language prefix is a handful of tokens; scores are only kept for this many steps.
LANGUAGE_STEPS = 16

Token = TypeVar("Token", bound=Hashable)


def language_confidence(
    tokens: Sequence[Token], step_logprobs: Sequence[float], marker: Token
) -> float | None:
    """P(language tokens) for one generated row, or None when no language was written (forced
    languages are prefilled, and a row without the marker has no language part)."""
    try:
        end = list(tokens).index(marker)
    except ValueError:
        return None
    if end == 0 or end > min(len(step_logprobs), LANGUAGE_STEPS):
        return None
    return round(math.exp(sum(step_logprobs[:end])), 4)
