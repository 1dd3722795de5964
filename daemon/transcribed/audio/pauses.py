"""How long the quiet is between segments: the .txt starts a new paragraph at long pauses.

A segment's edges are measured on its own audio, with the chunker's idea of quiet (50 ms
frames below -20 dB of the loud ones, or below -60 dBFS). The pause before a segment is the
quiet at the end of the previous one, any silent segments in between, and the quiet at its
own start.
"""

import dataclasses

import numpy as np

from transcribed.audio.chunking import frame_rms, quiet_threshold
from transcribed.output.transcript import Segment

_FRAME = 800  # 50 ms at 16 kHz
_RATE = 16_000


def quiet_edges(audio: np.ndarray) -> tuple[float, float]:
    """Seconds of quiet at the start and at the end of `audio`."""
    rms = frame_rms(audio, _FRAME)
    if not len(rms):
        return 0.0, 0.0
    loud = np.flatnonzero(rms >= quiet_threshold(rms))
    if not len(loud):
        return len(audio) / _RATE, len(audio) / _RATE
    return loud[0] * _FRAME / _RATE, (len(rms) - 1 - loud[-1]) * _FRAME / _RATE


class PauseTracker:
    """Gives each segment its `pause_before`, carrying the quiet across batches."""

    def __init__(self) -> None:
        self._quiet = 0.0  # quiet since the last spoken segment ended

    def measure(self, segment: Segment, audio: np.ndarray) -> Segment:
        """`segment` (whose samples are `audio`) with its pause_before; in recording order."""
        if not segment.text:
            self._quiet += segment.end - segment.start
            return segment
        leading, trailing = quiet_edges(audio)
        pause = round(self._quiet + leading, 2)
        self._quiet = trailing
        return dataclasses.replace(segment, pause_before=pause)
