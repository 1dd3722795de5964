"""A server's chat completion, checked before it is believed (DESIGN I6).

Whatever answers at a server's address may not be vLLM serving Qwen3-ASR: a proxy's error
page with status 200, a half-broken host, a chat model served under the configured name. The
parts the daemon uses are checked for their shape, and an answer that ended by itself must
be a transcription (`language X<asr_text>…`). What fails is a `BadAnswer`: the server's
failure, and the chunk goes to another server.
"""

import math
from dataclasses import dataclass
from typing import Any

from transcribed.model.raw_answer import MARKER
from transcribed.model.scoring import LANGUAGE_STEPS
from transcribed.servers.server_pool import BadAnswer

_NO_SPEECH = "language none"  # the model's own answer for audio without speech


@dataclass(frozen=True)
class Reply:
    """What the daemon reads from a chat completion."""

    content: str  # the model's raw answer
    ended: bool  # generation stopped by itself (else it hit max_tokens)
    tokens: list[str]  # the first generated tokens, for the language confidence
    logprobs: list[float]


def read_reply(answer: Any) -> Reply:
    """The first choice's message, finish reason and first log-probabilities, each of the
    shape vLLM gives; BadAnswer says what is missing or wrong."""
    if not isinstance(answer, dict):
        raise BadAnswer("it is not a JSON object")
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadAnswer("it has no choices")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise BadAnswer("its first choice has no message")
    content = message.get("content")
    if not isinstance(content, str | None):
        raise BadAnswer("its message content is not text")
    finish = choice.get("finish_reason")
    if not isinstance(finish, str | None):
        raise BadAnswer("its finish_reason is not text")
    tokens, logprobs = _steps(choice.get("logprobs"))
    return Reply(content or "", finish != "length", tokens, logprobs)


def check_transcription(reply: Reply, forced: str | None) -> None:
    """An answer that ended by itself must carry the `<asr_text>` marker (or be the model's
    "no speech"): a chat model answers in prose. With a forced language the marker was
    prefilled and the answer is only the text after it. An answer cut at its token budget
    is kept, flagged as truncated: the pipeline asks again in halves."""
    if forced or not reply.ended:
        return
    text = reply.content.strip()
    if MARKER in text or text.lower().startswith(_NO_SPEECH):
        return
    raise BadAnswer(f"not a transcription (no {MARKER}): is a Qwen3-ASR model served as named?")


def _steps(logprobs: Any) -> tuple[list[str], list[float]]:
    """Tokens and their log-probabilities for the first LANGUAGE_STEPS generated tokens."""
    if logprobs is None:
        return [], []
    steps = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(steps, list | None):
        raise BadAnswer("its logprobs are not a list")
    tokens, values = [], []
    for step in (steps or [])[:LANGUAGE_STEPS]:
        token = step.get("token") if isinstance(step, dict) else None
        value = step.get("logprob") if isinstance(step, dict) else None
        if not isinstance(token, str) or isinstance(value, bool):
            raise BadAnswer("its logprobs are not tokens with log-probabilities")
        if not isinstance(value, int | float):
            raise BadAnswer("its logprobs are not tokens with log-probabilities")
        tokens.append(token)
        # A probability is at most 1; -inf (or a NaN) is "none at all".
        values.append(min(float(value), 0.0) if math.isfinite(value) else -math.inf)
    return tokens, values
