"""How many tokens a chunk may write: shared by the resident model and the vLLM client, so
it stays free of torch (the vLLM client must not pay for importing it)."""

import math

# Fast speech is ~4.5 tokens/s in English and ~6 characters/s in Chinese; 8 leaves headroom
# without letting a repetition loop run for long. The overhead covers "language X<asr_text>".
TOKENS_PER_SECOND = 8
TOKEN_OVERHEAD = 24


def token_budget(seconds: float) -> int:
    """New tokens allowed for a chunk of this length (the default 512 would cut ~2 min)."""
    return math.ceil(seconds * TOKENS_PER_SECOND) + TOKEN_OVERHEAD
