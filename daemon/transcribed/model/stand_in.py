"""A stand-in engine that costs what a GPU would and computes nothing.

It runs the real decode loop (`decoding.DecodeLoop`: slots, refill, batch and length
ladders) over `CostModelBackend`, whose prefills and steps take the time a cost model of
the GPU gives and return placeholder tokens. So the daemon's own pipeline (decoders,
chunking, the model thread, outputs) can be driven on a machine without a GPU at the pace
an H100 would set, and `bench --stand-in` shows whether model calls are full and whether
the model ever waits for audio.

The cost model (per model size, from the published architectures in `synthetic.FULL_SIZES`):

- a decoding step reads every weight of the text model and the output layer once, and each
  row's K and V up to the step's length; it also multiplies every weight by every row:
  time = max(weights / bandwidth, rows x 2 x parameters / dense FLOP/s)
         + rows x length x KV bytes per token / bandwidth + the logits written and read;
- a prefill is compute: the encoder's convolutions and layers over each chunk's audio, the
  text model over each prompt, at the prefill FLOP/s, and no faster than its host time
  (the ~1,700 operations transformers launches from Python for one prefill).

The constants, per GPU (`GPUS`), and where they come from:

- bandwidth: what decoding kernels reach, about 85% of a measured device-to-device copy:
  H100 80GB HBM3 copied ~3.0 TB/s and H200 ~4.3 TB/s on the machines this project borrows
  (device KINDS.md, 2026-11); 2.6 and 3.7 TB/s here.
- dense FLOP/s: an 8192^3 bf16 matrix product ran at ~790-798 TFLOP/s on both; a decode
  step's products are thin (one row per sequence), 600 TFLOP/s here; a prefill mixes large
  products with norms, softmax and convolutions, 400 TFLOP/s here (half of peak).
- host time: 15 ms per prefill plus 0.3 ms per row (processor and launches, an estimate
  from the ~1,700 operations at ~8 us each); a captured step's launch costs ~30 us and
  overlaps the GPU, so the loop's own Python time, run for real here, stands for it.

These are estimates until `gpu/check.sh` measures a decoding step and a prefill on a real
GPU (its results.json prints the bandwidth and FLOP/s they imply). `scale` slows the
stand-in's clock: `bench --stand-in-scale 8` runs it as if this machine's CPU were 8 times
faster (a 2-core development machine standing for a 16-core GPU host).
"""

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from transcribed.model.decoding import (
    LENGTH_STEP,
    Answer,
    DecodeLoop,
    First,
    LoopCounters,
    Row,
)
from transcribed.model.rows import ChunkFeed, run_chunks, run_feed
from transcribed.model.synthetic import FULL_SIZES
from transcribed.model.token_budget import token_budget
from transcribed.output.transcript import ChunkText, ModelInfo

_VOCAB = 151_936
_AUDIO_TOKENS_PER_SECOND = 13  # one second of mel frames -> 13 positions after the convolutions
_TEMPLATE_TOKENS = 12  # the chat template around the audio, no context
_CONTEXT_ROOM = 128  # as the engine's cache leaves room for a context
_MEMORY_HEADROOM = 0.85
_MAX_BATCH = 256


@dataclass(frozen=True)
class Gpu:
    name: str
    bandwidth: float  # bytes/s a decoding step reaches
    dense_flops: float  # FLOP/s of a decoding step's thin products
    prefill_flops: float  # FLOP/s of a prefill
    memory: float  # bytes
    prefill_host: float = 0.015  # s per prefill call
    prefill_host_per_row: float = 0.0003  # s per row of a prefill


GPUS = {
    "h100": Gpu("H100 80GB HBM3", 2.6e12, 600e12, 400e12, 80e9),
    "h200": Gpu("H200 141GB HBM3e", 3.7e12, 600e12, 400e12, 141e9),
}


@dataclass(frozen=True)
class ModelShape:
    """What a model size costs, from its architecture."""

    name: str
    decode_parameters: float  # text layers and the output layer: read every step
    total_bytes: float  # every weight, bf16
    kv_bytes_per_token: int
    text_flops_per_token: float  # a prefill's text model, per prompt token
    audio_flops_per_second: float  # the encoder and projector, per second of audio
    hidden: int

    @classmethod
    def of(cls, size: str) -> "ModelShape":
        audio, text = FULL_SIZES[size]
        width, layers = text["hidden_size"], text["num_hidden_layers"]
        q = text["num_attention_heads"] * text["head_dim"]
        kv = text["num_key_value_heads"] * text["head_dim"]
        per_layer = width * (2 * q + 2 * kv) + 3 * width * text["intermediate_size"]
        text_parameters = layers * per_layer
        output = _VOCAB * width
        encoder = _encoder_flops_per_second(audio)
        encoder_parameters = audio["encoder_layers"] * (
            4 * audio["d_model"] ** 2 + 2 * audio["d_model"] * audio["encoder_ffn_dim"]
        )
        return cls(
            name=size,
            decode_parameters=text_parameters + output,
            total_bytes=2.0 * (text_parameters + output + encoder_parameters),
            kv_bytes_per_token=2 * layers * kv * 2,
            text_flops_per_token=2.0 * text_parameters,
            audio_flops_per_second=encoder,
            hidden=width,
        )

    def prompt_tokens(self, seconds: float) -> int:
        return _TEMPLATE_TOKENS + math.ceil(seconds * _AUDIO_TOKENS_PER_SECOND)


def _encoder_flops_per_second(audio: dict[str, int]) -> float:
    """The convolutions (128 mel bins x 100 frames a second, three stride-2 3x3 layers),
    the layers over 13 positions a second, and the projector."""
    channels, width = audio["downsample_hidden_size"], audio["d_model"]
    convolutions = 2 * 9 * channels * (64 * 50 + channels * 32 * 25 + channels * 16 * 13)
    into_width = 2 * 13 * channels * 16 * width
    layer = 2 * (4 * width**2 + 2 * width * audio["encoder_ffn_dim"]) + 4 * 104 * width
    projector = 2 * (width**2 + width * audio["output_dim"])
    return float(convolutions + into_width + 13 * (audio["encoder_layers"] * layer + projector))


class CostModelBackend:
    """`decoding.Backend` that takes the modelled time and computes nothing. Steps queue
    as on a GPU: the loop goes on while one runs, and waits only to read its tokens."""

    def __init__(
        self,
        gpu: Gpu,
        shape: ModelShape,
        chunk_seconds: float = 30.0,
        scale: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gpu, self.shape, self.scale = gpu, shape, scale
        self._sleep, self._clock = sleep, clock
        needed = (
            shape.prompt_tokens(chunk_seconds) + _CONTEXT_ROOM + token_budget(chunk_seconds) + 2
        )
        self.length = -(-needed // LENGTH_STEP) * LENGTH_STEP
        self.prefill_rows = 64
        self.slots = self._ceiling()
        self.eos: frozenset[int] = frozenset()
        self.busy = 0.0  # modelled GPU seconds (scaled)
        self._free_at = 0.0  # when the modelled GPU finishes what it was given
        self._lock = threading.Lock()

    def _ceiling(self) -> int:
        """As the engine measures it: 85% of the memory left after the weights, less a
        full prefill's activations and cache, in slots of the whole cache length."""
        free = self.gpu.memory - self.shape.total_bytes - 1e9  # CUDA context, allocator
        prompt = self.shape.prompt_tokens(30)
        per_row_prefill = prompt * (self.shape.kv_bytes_per_token + 24 * self.shape.hidden)
        usable = free * _MEMORY_HEADROOM - self.prefill_rows * per_row_prefill
        slot = self.length * self.shape.kv_bytes_per_token
        return max(1, min(_MAX_BATCH, int(usable // slot)))

    # --- costs (seconds on the GPU, unscaled) ------------------------------------------

    def step_seconds(self, rows: int, length: int) -> float:
        shape, gpu = self.shape, self.gpu
        weights = max(
            2 * shape.decode_parameters / gpu.bandwidth,
            rows * 2 * shape.decode_parameters / gpu.dense_flops,
        )
        cache = rows * length * shape.kv_bytes_per_token / gpu.bandwidth
        logits = rows * _VOCAB * 6 / gpu.bandwidth  # bf16 written, fp32 read back
        return weights + cache + logits

    def prefill_seconds(self, seconds: Sequence[float]) -> float:
        shape, gpu = self.shape, self.gpu
        flops = sum(
            shape.audio_flops_per_second * s + shape.text_flops_per_token * shape.prompt_tokens(s)
            for s in seconds
        )
        host = gpu.prefill_host + gpu.prefill_host_per_row * len(seconds)
        return max(host, flops / gpu.prefill_flops)

    # --- the backend ---------------------------------------------------------------------

    def prefill(self, rows: Sequence[Row], slots: Sequence[int]) -> list[First]:
        cost = self.prefill_seconds([row.seconds for row in rows]) * self.scale
        self._wait_until(self._queue(cost))
        return [First(1, 0.0, self.shape.prompt_tokens(row.seconds)) for row in rows]

    def step(self, rows: int, length: int) -> "_Later":
        done = self._queue(self.step_seconds(rows, length) * self.scale)
        return _Later(rows, done, self._wait_until)

    def move(self, source: int, target: int) -> None:
        self._queue(
            2 * self.length * self.shape.kv_bytes_per_token / self.gpu.bandwidth * self.scale
        )

    def _queue(self, cost: float) -> float:
        """Give the modelled GPU `cost` seconds of work after what it has; when it ends."""
        with self._lock:
            self._free_at = max(self._clock(), self._free_at) + cost
            self.busy += cost
            return self._free_at

    def _wait_until(self, moment: float) -> None:
        left = moment - self._clock()
        if left > 0:
            self._sleep(left)


class _Later:
    def __init__(self, rows: int, done: float, wait: Callable[[float], None]) -> None:
        self._rows, self._done, self._wait = rows, done, wait

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._wait(self._done)
        return np.ones(self._rows, np.int64), np.zeros(self._rows, np.float32)


class StandInEngine:
    """An engine for `bench` and the suite: the real decode loop over `CostModelBackend`.
    Every row writes `tokens_per_second` tokens per audio second and then ends."""

    def __init__(
        self,
        gpu: str,
        size: str,
        batch_size: int,
        *,
        chunk_seconds: float = 30.0,
        scale: float = 1.0,
        tokens_per_second: float = 4.0,
    ) -> None:
        self.backend = CostModelBackend(GPUS[gpu], ModelShape.of(size), chunk_seconds, scale)
        self.loop = DecodeLoop(self.backend, fixed_tokens_per_second=tokens_per_second)
        self.info = ModelInfo(f"stand-in {gpu} {size}", f"stand-in ({GPUS[gpu].name})", "bfloat16")
        self.ceiling = self.backend.slots
        self.batch_size = batch_size
        self.fixed_tokens_per_second: float | None = tokens_per_second

    @property
    def counters(self) -> LoopCounters:
        return self.loop.counters

    def warm_up(self) -> None:
        """Nothing to load or capture."""

    def transcribe(
        self,
        chunks: list[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        return run_chunks(self.loop, chunks, language, context, _text, should_stop)

    def run_rows(self, feed: ChunkFeed, should_stop: Callable[[], bool]) -> None:
        run_feed(self.loop, feed, _text, should_stop)


def _text(row: Row, answer: Answer) -> ChunkText:
    return ChunkText("stand-in", row.language or "en", truncated=not answer.ended)
