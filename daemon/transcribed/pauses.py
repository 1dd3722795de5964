"""How long the quiet is between segments: the .txt starts a new paragraph at long pauses.

A segment's edges are measured on its own audio: 50 ms frames quieter than a tenth of its
loud frames (-20 dB) count as quiet. The pause before a segment is the quiet at the end of
the previous one, any silent segments in between, and the quiet at its own start.
"""

import dataclasses

import numpy as np

from transcribed.transcript import Segment

_FRAME = 800  # 50 ms at 16 kHz
_RATE = 16_000
_RELATIVE_QUIET = 0.1  # -20 dB below the segment's loud (90th percentile) frames
_SILENCE_RMS = 1e-3


def quiet_edges(audio: np.ndarray) -> tuple[float, float]:
    """Seconds of quiet at the start and at the end of `audio`."""
    frames = len(audio) // _FRAME
    if frames == 0:
        return 0.0, 0.0
    blocks = audio[: frames * _FRAME].reshape(frames, _FRAME).astype(np.float64)
    rms = np.sqrt(np.mean(np.square(blocks), axis=1))
    threshold = max(_SILENCE_RMS, _RELATIVE_QUIET * float(np.percentile(rms, 90)))
    loud = np.flatnonzero(rms >= threshold)
    if not len(loud):
        return len(audio) / _RATE, len(audio) / _RATE
    return loud[0] * _FRAME / _RATE, (frames - 1 - loud[-1]) * _FRAME / _RATE


class PauseTracker:
    """Gives each segment its `pause_before`, carrying quiet across batches."""

    def __init__(self) -> None:
        self._quiet = 0.0  # quiet since the last spoken segment ended

    def assign(
        self, segments: list[Segment], pieces: list[tuple[int, np.ndarray]]
    ) -> list[Segment]:
        if not pieces:
            return segments
        audio = np.concatenate([chunk for _, chunk in pieces])
        base = pieces[0][0]
        measured = []
        for segment in segments:
            if not segment.text:
                self._quiet += segment.end - segment.start
                measured.append(segment)
                continue
            first = round(segment.start * _RATE) - base
            last = round(segment.end * _RATE) - base
            leading, trailing = quiet_edges(audio[first:last])
            pause = round(self._quiet + leading, 2)
            measured.append(dataclasses.replace(segment, pause_before=pause))
            self._quiet = trailing
        return measured
