"""Language confidence from the model's own generation scores. No model types: unit-testable.

Qwen3-ASR writes `language <Name><asr_text>text…`. Under greedy decoding each generated
token is the most likely one, so the probability of the detected language is the product of
the chosen tokens' probabilities up to the `<asr_text>` marker.
"""

import math
from collections.abc import Sequence

# The language prefix is a handful of tokens; scores are only kept for this many steps.
LANGUAGE_STEPS = 16


def language_confidence(
    token_ids: Sequence[int], step_logprobs: Sequence[float], marker_id: int
) -> float | None:
    """P(language tokens) for one generated row, or None when no language was written (forced
    languages are prefilled, and a row without the marker has no language part)."""
    try:
        end = list(token_ids).index(marker_id)
    except ValueError:
        return None
    if end == 0 or end > min(len(step_logprobs), LANGUAGE_STEPS):
        return None
    return round(math.exp(sum(step_logprobs[:end])), 4)
