"""The resident Qwen3-ASR model (transformers' native classes), loaded once and kept.

Hides every ML type behind `ChunkText`: callers hand in 16 kHz float32 arrays and get text.
The weights and modules are transformers'; the decoding is ours (`decoding.DecodeLoop` over
`torch_backend.TorchBackend`): rows in KV slots, each ending on its own and replaced by a
waiting chunk, a CUDA graph per step shape on a GPU. `generate` gives the same tokens (the
suite checks it on the CPU) and is no longer called.
"""

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from transcribed.errors import ModelError, TransientError
from transcribed.logs import get_logger
from transcribed.model.decode_step import KvSlots, StepGraphs, TextParts
from transcribed.model.decoding import (
    LENGTH_STEP,
    Answer,
    DecodeLoop,
    LoopCounters,
    Row,
    bucket_ladder,
    length_ladder,
)
from transcribed.model.device import announce_device, resolve_device, why_no_cuda
from transcribed.model.encoder import AudioEncoder, choose_attention
from transcribed.model.model_files import (
    checked_folder,
    first_line,
    load_processor,
    quiet_loading,
)
from transcribed.model.raw_answer import MARKER, LanguageNames, parse_answer
from transcribed.model.rows import ChunkFeed, run_chunks
from transcribed.model.scoring import language_confidence
from transcribed.model.token_budget import token_budget
from transcribed.model.torch_backend import TorchBackend
from transcribed.output.transcript import ChunkText, ModelInfo

log = get_logger(__name__)

__all__ = [
    "Engine",
    "batch_ceiling",
    "gpu_defaults",
    "resolve_device",
    "token_budget",
    "why_no_cuda",
]

# Share of the GPU memory free after loading that model calls may fill: the rest absorbs
# fragmentation and what other programs on the GPU allocate later.
_MEMORY_HEADROOM = 0.85
MAX_GPU_BATCH = 256
# Rows prefilled in one call at most on a GPU: enough to share the call's fixed cost, few
# enough that its activations (~80 MB a 30 s row for 1.7B) stay small next to the cache.
GPU_PREFILL_ROWS = 64
# A step's logits per row: bf16 out of the head, fp32 for the log-probabilities, a temporary.
_LOGIT_BYTES = 10
# Prompt tokens allowed beyond the template and the audio: a context (hotwords) this long
# still leaves a chunk its whole token budget.
CONTEXT_ROOM = 128


def batch_ceiling(free: int, fixed: int, per_chunk: int, cap: int = MAX_GPU_BATCH) -> int:
    """Chunks per model call that fit in `free` bytes when a call needs `fixed` bytes plus
    `per_chunk` bytes for each chunk; at least 1, at most `cap`."""
    usable = free * _MEMORY_HEADROOM - fixed
    return max(1, min(cap, int(usable // max(per_chunk, 1))))


# On a GPU: chunks each recording hands the model at once. Large enough that a recording's
# rows fill a good part of the batch, small enough that it is decoded in seconds.
GPU_BATCH_SIZE = 32


def gpu_defaults(ceiling: int) -> tuple[int, int]:
    """(batch_size, jobs_at_once) that keep a GPU with this batch ceiling full: the jobs'
    batches together cover the ceiling three times (a recording's last batch is short, a
    short recording has one chunk or two, and a recording that just started is still
    decoding its first batch). Measured with `bench --stand-in h100-1.7b`: 32 x 24 kept the
    modelled GPU 97% busy, 16 x 32 rows fewer per step (docs/performance.md)."""
    jobs = math.ceil(3 * ceiling / GPU_BATCH_SIZE)
    return GPU_BATCH_SIZE, max(4, min(32, jobs))


def rows_that_fit(free: int, base: int, per_prefill_row: int, per_slot: int) -> tuple[int, int]:
    """(rows decoded at once, rows prefilled at once) for `free` bytes: a prefill group
    takes at most a third of what is usable (at most `GPU_PREFILL_ROWS` rows), and the KV
    slots the rest."""
    usable = free * _MEMORY_HEADROOM - base
    group = max(1, min(GPU_PREFILL_ROWS, int(usable / 3 // max(per_prefill_row, 1))))
    ceiling = batch_ceiling(free, base + group * per_prefill_row, per_slot)
    return ceiling, min(group, ceiling)


class Engine:
    """Qwen3ASRForConditionalGeneration plus its processor, resident on one device."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        info: ModelInfo,
        batch_size: int,
        *,
        chunk_seconds: float = 30.0,
        graphs: bool = False,
    ) -> None:
        self._model = model
        self._processor = processor
        self.info = info
        self.batch_size = batch_size  # chunks a recording gathers before it asks the model
        self._chunk_seconds = chunk_seconds
        self._graphs = graphs
        self._names = LanguageNames()
        self._marker_id = int(processor.tokenizer.convert_tokens_to_ids(MARKER))
        self._parts = TextParts.of(model)
        self.encoder = AudioEncoder(
            model.model.audio_tower,
            model.model.multi_modal_projector,
            choose_attention(model.device, model.dtype),
        )
        self.cache_length = self._cache_length()
        self.memory: dict[str, float] = {}  # what `fit_to_gpu_memory` measured
        # Rows decoded at once at most: `batch_size` on the CPU; on a GPU, what fits in the
        # memory left free after loading (`fit_to_gpu_memory`).
        self.ceiling = batch_size
        self.loop = self._make_loop(batch_size, prefill_rows=batch_size)

    @classmethod
    def load(
        cls,
        model: str,
        device: str,
        *,
        allow_download: bool,
        batch_size: int,
        chunk_seconds: float = 30.0,
    ) -> "Engine":
        from transformers import Qwen3ASRForConditionalGeneration

        quiet_loading()
        torch_device = resolve_device(device)
        announce_device(device, torch_device)
        folder = checked_folder(model, allow_download)  # what `doctor` checks, too
        dtype = torch.bfloat16 if torch_device.type == "cuda" else torch.float32
        started = time.monotonic()
        processor = load_processor(folder)
        try:
            network = Qwen3ASRForConditionalGeneration.from_pretrained(
                folder,
                dtype=dtype,
                # The prefill's attention; the encoder's and the decode step's are ours.
                attn_implementation="sdpa",
                local_files_only=True,
            )
        except Exception as error:  # OSError, ValueError, RuntimeError (shapes), …
            raise ModelError(
                f"cannot load the model weights from {folder}: {type(error).__name__}: "
                f"{first_line(error)}"
            ) from error
        network.to(torch_device).eval()
        info = ModelInfo(
            id=model, device=str(torch_device), dtype=str(dtype).removeprefix("torch.")
        )
        log.info(
            "model.loaded",
            model=model,
            device=info.device,
            dtype=info.dtype,
            seconds=round(time.monotonic() - started, 2),
        )
        cuda = torch_device.type == "cuda"
        engine = cls(network, processor, info, batch_size, chunk_seconds=chunk_seconds, graphs=cuda)
        if cuda:
            engine.fit_to_gpu_memory()
        return engine

    def _make_loop(self, slots: int, prefill_rows: int) -> DecodeLoop:
        """A decode loop over a KV cache of `slots` rows (the old cache is let go first)."""
        fixed = None
        if hasattr(self, "loop"):
            fixed = self.loop.fixed_tokens_per_second
            del self.loop
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        cache = KvSlots(
            self._parts, slots, self.cache_length, self._model.dtype, self._model.device
        )
        backend = TorchBackend(
            self._model,
            self._processor,
            self.encoder,
            cache,
            prefill_rows=min(prefill_rows, slots),
            graphs=self._graphs,
        )
        return DecodeLoop(backend, fixed_tokens_per_second=fixed)

    def _cache_length(self) -> int:
        """Cache places a row needs at most: the prompt of a full-length chunk, room for a
        context, and the chunk's whole token budget."""
        silence = np.zeros(self._samples(), np.float32)
        prompt = int(
            self._processor.apply_transcription_request(audio=[silence])["input_ids"].shape[1]
        )
        needed = prompt + CONTEXT_ROOM + token_budget(self._chunk_seconds) + 2
        return -(-needed // LENGTH_STEP) * LENGTH_STEP

    def fit_to_gpu_memory(self) -> None:
        """Set the ceiling from the GPU memory free now. Probe prefills of 8 and 16
        full-length chunks give a prefill's fixed cost (the convolutions' slice among it,
        which stops growing past ~4 chunks) and each row's; each row's KV slot and its
        share of a step's logits are counted by arithmetic; then the cache is made for
        the ceiling. A GPU that cannot prefill 16 chunks is probed with 1 and 2."""
        probed = self._probe((8, 16)) or self._probe((1, 2))
        self.loop = self._make_loop(1, prefill_rows=1)  # the probe's cache let go
        if probed is None:
            self.ceiling = 1
            log.warning("model.batch_ceiling", ceiling=1, reason="out of memory while probing")
            return
        base, per_row = probed
        slot = self._parts.kv_bytes_per_token(self._model.dtype) * self.cache_length
        slot += _LOGIT_BYTES * int(self._model.config.get_text_config().vocab_size)
        free, _total = torch.cuda.mem_get_info(self._model.device)
        self.ceiling, prefill_rows = rows_that_fit(free, base, per_row, slot)
        self.loop = self._make_loop(self.ceiling, prefill_rows)
        self.memory = {
            "free_mib": free >> 20,
            "per_chunk_mib": round(slot / 2**20, 1),
            "prefill_mib_per_chunk": round(per_row / 2**20, 1),
            "prefill_fixed_mib": round(base / 2**20, 1),
        }
        log.info(
            "model.batch_ceiling",
            ceiling=self.ceiling,
            prefill_rows=prefill_rows,
            cache_tokens=self.cache_length,
            encoder_attention=self.encoder.attention.name,
            **self.memory,
        )

    def _probe(self, sizes: tuple[int, int]) -> tuple[int, int] | None:
        """(fixed bytes, bytes per row) of a prefill, from the peaks of two probes; None
        when they do not fit."""
        few, many = sizes
        self.loop = self._make_loop(many, prefill_rows=many)
        chunk = (0.05 * np.random.default_rng(0).standard_normal(self._samples())).astype(
            np.float32
        )
        try:
            low, high = self._probe_peak([chunk] * few), self._probe_peak([chunk] * many)
        except TransientError:  # the loop's own recovery gave up: out of memory for one row
            return None
        if self.loop.counters.out_of_memory:  # rows were decoded fewer at a time than asked
            return None
        per_row = max((high - low) // (many - few), 1)
        return max(low - few * per_row, 0), per_row

    def _probe_peak(self, audio: list[np.ndarray]) -> int:
        device = self._model.device
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        self._run_fixed(audio, tokens=2)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)

    def warm_up(self) -> None:
        """On a GPU, run two full-length chunks through the model before the first
        recording: the first step shapes are captured and the kernels loaded now. On a CPU
        there is nothing to capture, and the model is slow: nothing."""
        if not self.info.device.startswith("cuda"):
            return
        started = time.monotonic()
        backend = self.loop._backend
        steps = getattr(backend, "steps", None)
        if isinstance(steps, StepGraphs):
            lengths = length_ladder(self.cache_length)
            steps.prepare(
                [(rows, length) for rows in bucket_ladder(self.ceiling) for length in lengths]
            )
            log.info(
                "decode.graphs_captured",
                shapes=len(steps.shapes),
                seconds=round(time.monotonic() - started, 1),
                graphs=steps.graphs,
            )
        chunk = np.zeros(self._samples(), np.float32)
        chunk[::97] = 0.05  # not silence: the model is asked
        self._run_fixed([chunk] * min(2, self.ceiling), tokens=4)

    def _run_fixed(self, audio: list[np.ndarray], tokens: int) -> None:
        """Decode exactly `tokens` per row (probes and warm-up), whatever the settings."""
        saved = self.loop.fixed_tokens_per_second
        self.loop.fixed_tokens_per_second = tokens / (len(audio[0]) / 16_000)
        try:
            self.transcribe(audio)
        finally:
            self.loop.fixed_tokens_per_second = saved

    def _samples(self) -> int:
        return int(self._chunk_seconds * 16_000)

    @property
    def fixed_tokens_per_second(self) -> float | None:
        """Benchmarks with random weights: each row writes exactly this many tokens per audio
        second and has then ended (a random model would stop at a random point)."""
        return self.loop.fixed_tokens_per_second

    @fixed_tokens_per_second.setter
    def fixed_tokens_per_second(self, value: float | None) -> None:
        self.loop.fixed_tokens_per_second = value

    @property
    def counters(self) -> LoopCounters:
        return self.loop.counters

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        """Text for each 16 kHz chunk, in input order; `should_stop` is checked between
        decoding steps."""
        return run_chunks(self.loop, chunks, language, context, self._text, should_stop)

    def run_rows(self, feed: ChunkFeed, should_stop: Callable[[], bool]) -> None:
        """Decode rows from `feed` until it is dry and every row has ended, taking new rows
        into the slots of those that end (in-flight refill)."""
        from transcribed.model.rows import run_feed

        run_feed(self.loop, feed, self._text, should_stop)

    def _text(self, row: Row, answer: Answer) -> ChunkText:
        return self._parse(answer.tokens, answer.scores, row.language, row.context, answer.ended)

    def _parse(
        self,
        ids: list[int],
        scores: list[float],
        forced: str | None,
        context: str | None = None,
        ended: bool = True,
    ) -> ChunkText:
        # Decoded once, special tokens skipped (`<asr_text>` is an ordinary token and stays);
        # the same parser reads a vLLM server's answer.
        return parse_answer(
            self._processor.tokenizer.decode(ids, skip_special_tokens=True),
            ended=ended,
            confidence=None if forced else language_confidence(ids, scores, self._marker_id),
            forced=forced,
            context=context,
            names=self._names,
        )

    def language_name(self, language: str | None) -> str | None:
        """English name for a language code or name the model knows; unknown ones pass through."""
        return self._names.name(language)

    def language_code(self, language: str | None) -> str | None:
        """ISO code for a language name or code the model knows; unknown names pass through."""
        return self._names.code(language)
