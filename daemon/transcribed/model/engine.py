"""The resident Qwen3-ASR model (transformers' native classes), loaded once and kept.

Hides every ML type behind `ChunkText`: callers hand in 16 kHz float32 arrays and get text.
"""

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from transcribed import faults
from transcribed.errors import ModelError, ShutdownRequested, TransientError
from transcribed.logs import get_logger
from transcribed.model.model_files import checked_folder, first_line, load_processor
from transcribed.model.raw_answer import MARKER, LanguageNames, parse_answer
from transcribed.model.scoring import LANGUAGE_STEPS, language_confidence
from transcribed.output.transcript import ChunkText, ModelInfo

log = get_logger(__name__)

# Fast speech is ~4.5 tokens/s in English and ~6 characters/s in Chinese; 8 leaves headroom
# without letting a repetition loop run for long. The overhead covers "language X<asr_text>".
TOKENS_PER_SECOND = 8
TOKEN_OVERHEAD = 24


# Successful batches at a reduced size before trying twice the size again.
_GROW_AFTER = 20
# Share of the GPU memory free after loading that model calls may fill: the rest absorbs
# fragmentation and what other programs on the GPU allocate later.
_MEMORY_HEADROOM = 0.85
MAX_GPU_BATCH = 256


def token_budget(seconds: float) -> int:
    """New tokens allowed for a chunk of this length (the default 512 would cut ~2 min)."""
    return math.ceil(seconds * TOKENS_PER_SECOND) + TOKEN_OVERHEAD


def batch_ceiling(free: int, fixed: int, per_chunk: int, cap: int = MAX_GPU_BATCH) -> int:
    """Chunks per model call that fit in `free` bytes when a call needs `fixed` bytes plus
    `per_chunk` bytes for each chunk; at least 1, at most `cap`."""
    usable = free * _MEMORY_HEADROOM - fixed
    return max(1, min(cap, int(usable // max(per_chunk, 1))))


def batch_shapes(ceiling: int) -> list[int]:
    """The batch sizes a compiled decoder is built for: powers of two, and the ceiling."""
    sizes = {1 << power for power in range(ceiling.bit_length()) if 1 << power <= ceiling}
    return sorted(sizes | {ceiling})


def why_no_cuda() -> tuple[str, str] | None:
    """Why torch cannot use a CUDA GPU here, and what to do; None when it can."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a CPU-only build",
            "install a CUDA build of torch: `pip install --force-reinstall torch` (PyPI's Linux "
            "wheels are CUDA builds) or the command for your CUDA version from "
            "https://pytorch.org/get-started/locally/",
        )
    if not torch.cuda.is_available():
        return (
            f"no usable CUDA GPU was found (torch {torch.__version__}, CUDA {torch.version.cuda})",
            "check that the NVIDIA driver is loaded and `nvidia-smi` works",
        )
    return None


def resolve_device(requested: str) -> torch.device:
    """`auto` picks the first GPU when CUDA works, else the CPU; `cuda` without one is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and (reason := why_no_cuda()) is not None:
        problem, remedy = reason
        raise ModelError(
            f"device = {requested!r} but {problem}: {remedy}; or set device = 'auto' or 'cpu' "
            "to run without a GPU"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ModelError(
            f"device = {requested!r} but only {torch.cuda.device_count()} GPU(s) exist"
        )
    return device


def attention_for(device: torch.device) -> str:
    """FlashAttention 2 on a GPU when the package is installed, else PyTorch's SDPA."""
    import importlib.util

    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def announce_device(requested: str, chosen: torch.device) -> None:
    """Say loudly what `auto` chose: a CPU fallback is 50-100x slower and must not go unseen."""
    if requested != "auto":
        log.info("device.chosen", device=str(chosen), requested=requested)
    elif chosen.type == "cuda":
        log.info("device.chosen", device=str(chosen), requested="auto", gpu=_gpu_name(chosen))
    else:
        log.warning(
            "device.cpu_fallback",
            requested="auto",
            hint="no usable CUDA GPU: transcription runs on the CPU, far slower. Check "
            "`nvidia-smi` and `transcribed doctor`; set device = 'cuda' to refuse to run "
            "without a GPU (systemd then retries)",
        )


def _gpu_name(device: torch.device) -> str:
    return str(torch.cuda.get_device_name(device))


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
        static_cache: bool = False,
    ) -> None:
        self._model = model
        self._processor = processor
        self.info = info
        self.batch_size = batch_size  # chunks a recording gathers before it asks the model
        self._chunk_seconds = chunk_seconds
        # Chunks per model call at most: `batch_size` on the CPU; on a GPU, what fits in the
        # memory left free after loading (`fit_to_gpu_memory`), so merged calls of several
        # recordings fill the GPU.
        self.ceiling = batch_size
        # The largest batch that fits right now: halved on out-of-memory and grown back
        # after a run of successes, so one long-audio spike does not cost every later batch
        # half its size, and a full GPU does not fail every batch first.
        self._limit = batch_size
        self._fits = 0
        # A static KV cache lets transformers compile the decoding step (CUDA only); batches
        # are padded to a few sizes (`batch_shapes`) so the compiled steps are reused.
        self._static_cache = static_cache
        self._eos_ids = _eos_ids(model)
        self._names = LanguageNames()
        self._marker_id = int(processor.tokenizer.convert_tokens_to_ids(MARKER))
        # Benchmarks with random weights: write exactly this many tokens per audio second
        # (a random model would stop at a random point) instead of up to the budget.
        self.fixed_tokens_per_second: float | None = None

    @classmethod
    def load(
        cls,
        model: str,
        device: str,
        *,
        allow_download: bool,
        batch_size: int,
        chunk_seconds: float = 30.0,
        compile_decoder: bool = False,
    ) -> "Engine":
        from transformers import Qwen3ASRForConditionalGeneration
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # bars would garble the JSON log lines
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
                attn_implementation=attention_for(torch_device),
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
        engine = cls(
            network,
            processor,
            info,
            batch_size,
            chunk_seconds=chunk_seconds,
            static_cache=compile_decoder,
        )
        if torch_device.type == "cuda":
            engine.fit_to_gpu_memory()
        return engine

    def fit_to_gpu_memory(self) -> None:
        """Set the ceiling from the GPU memory free now. Two probe calls (one and two
        full-length chunks) give a call's fixed cost and each chunk's; the KV cache for a
        chunk's whole token budget is added by arithmetic rather than generated."""
        device = self._model.device
        chunk = (0.05 * np.random.default_rng(0).standard_normal(self._samples())).astype(
            np.float32
        )
        try:
            one, two = (self._probe_peak([chunk] * count) for count in (1, 2))
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            self.ceiling = self._limit = 1
            log.warning("model.batch_ceiling", ceiling=1, reason="out of memory while probing")
            return
        marginal = max(two - one, 1)
        per_chunk = marginal
        if not self._static_cache:  # a static cache is allocated whole by the probe itself
            per_chunk += self._kv_bytes_per_token() * token_budget(self._chunk_seconds)
        free, _total = torch.cuda.mem_get_info(device)
        self.ceiling = self._limit = batch_ceiling(free, max(one - marginal, 0), per_chunk)
        log.info(
            "model.batch_ceiling",
            ceiling=self.ceiling,
            free_mib=free >> 20,
            per_chunk_mib=round(per_chunk / 2**20, 1),
        )

    def warm_up(self) -> None:
        """Run full-length chunks through the model before the first recording: with a
        static cache every batch shape once, so compiling happens now."""
        chunk = np.zeros(self._samples(), np.float32)
        chunk[::97] = 0.05  # not silence: the model is asked
        shapes = batch_shapes(self._limit) if self._static_cache else [min(2, self._limit)]
        for index, size in enumerate(reversed(shapes)):
            # The first static call asks for a whole chunk's budget: transformers keeps the
            # longest static cache it has made, so every later batch fits in that length.
            full = self._static_cache and index == 0
            tokens = token_budget(self._chunk_seconds) if full else 4
            self._generate([chunk] * size, None, None, exact_tokens=tokens)

    def _samples(self) -> int:
        return int(self._chunk_seconds * 16_000)

    def _probe_peak(self, audio: list[np.ndarray]) -> int:
        device = self._model.device
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        self._generate(audio, None, None, exact_tokens=8)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)

    def _kv_bytes_per_token(self) -> int:
        text = self._model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        per_layer = 2 * text.num_key_value_heads * head_dim * self._model.dtype.itemsize
        return int(per_layer * text.num_hidden_layers)

    def transcribe(
        self,
        chunks: Sequence[np.ndarray],
        language: str | None = None,
        context: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> list[ChunkText]:
        """Text for each 16 kHz chunk, in input order. Chunks are batched longest first so each
        batch pads little; `should_stop` is checked between batches."""
        order = sorted(range(len(chunks)), key=lambda index: -len(chunks[index]))
        results: dict[int, ChunkText] = {}
        while order:
            if should_stop():
                raise ShutdownRequested("stopping between model batches")
            batch, order = order[: self._limit], order[self._limit :]
            texts = self._generate_adaptive([chunks[i] for i in batch], language, context)
            results.update(zip(batch, texts, strict=True))
        return [results[index] for index in range(len(chunks))]

    def _generate_adaptive(
        self, audio: list[np.ndarray], language: str | None, context: str | None
    ) -> list[ChunkText]:
        """Generate; on CUDA out-of-memory halve the batch and retry; never lose the job."""
        try:
            faults.point("model.batch", f"{len(audio)} chunks")
            texts = self._generate(audio, language, context)
        except (torch.OutOfMemoryError, faults.InjectedOutOfMemory):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(audio) == 1:
                raise TransientError("GPU out of memory even for a single chunk") from None
            half = len(audio) // 2
            self._limit, self._fits = min(self._limit, half), 0
            log.warning("model.oom_split", batch=len(audio), into=half)
            return self._generate_adaptive(audio[:half], language, context) + (
                self._generate_adaptive(audio[half:], language, context)
            )
        self._fits += 1
        if self._limit < self.ceiling and self._fits >= _GROW_AFTER:
            self._limit, self._fits = min(self.ceiling, self._limit * 2), 0
            log.info("model.batch_grown", batch=self._limit)
        return texts

    @torch.inference_mode()
    def _generate(
        self,
        audio: list[np.ndarray],
        language: str | None,
        context: str | None,
        exact_tokens: int | None = None,
    ) -> list[ChunkText]:
        rows = len(audio)
        if self._static_cache:  # pad with copies of the shortest chunk up to a compiled shape
            shapes = batch_shapes(max(self._limit, rows))  # within the limit: no new OOM
            shape = next(size for size in shapes if size >= rows)
            audio = audio + [min(audio, key=len)] * (shape - rows)
        inputs = self._processor.apply_transcription_request(
            audio=audio,
            language=language,  # forced: the processor pre-fills "language X<asr_text>"
            prompt=[context] * len(audio) if context else None,
            # Log-mel features are computed where the model runs (the GPU), not on the CPU.
            processor_kwargs={"audio_kwargs": {"device": str(self._model.device)}},
        ).to(self._model.device)
        inputs["input_features"] = inputs["input_features"].to(self._model.dtype)
        seconds = max(len(a) for a in audio) / 16_000
        budget = token_budget(seconds)
        length: dict[str, int] = {"max_new_tokens": budget}
        if self.fixed_tokens_per_second and exact_tokens is None:
            exact_tokens = max(1, math.ceil(seconds * self.fixed_tokens_per_second))
        if exact_tokens is not None:
            length = {"max_new_tokens": exact_tokens, "min_new_tokens": exact_tokens}
        cache: dict[str, str] = {"cache_implementation": "static"} if self._static_cache else {}
        recorder = _ChosenTokenScores()
        generated = self._model.generate(
            **inputs,
            **length,
            **cache,
            do_sample=False,
            logits_processor=LogitsProcessorList([recorder]),
        )
        new_tokens = generated[:rows, inputs["input_ids"].shape[1] :]
        scores = recorder.per_row()[:rows] or [[] for _ in range(rows)]
        return [
            self._parse(row, scores[index], language, context)
            for index, row in enumerate(new_tokens)
        ]

    def _parse(
        self, row: torch.Tensor, scores: list[float], forced: str | None, context: str | None = None
    ) -> ChunkText:
        ids = row.tolist()
        # Decoded once, special tokens skipped (`<asr_text>` is an ordinary token and stays);
        # the same parser reads a vLLM server's answer.
        return parse_answer(
            self._processor.tokenizer.decode(row, skip_special_tokens=True),
            ended=any(token in self._eos_ids for token in ids),
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


class _ChosenTokenScores(LogitsProcessor):  # type: ignore[misc]  # transformers is untyped here
    """Keeps the log-probability of the greedy choice for the first few steps (the language
    part of the output): one small tensor per step, no full score matrices."""

    def __init__(self) -> None:
        self._steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if len(self._steps) < LANGUAGE_STEPS:
            self._steps.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values)
        return scores

    def per_row(self) -> list[list[float]]:
        if not self._steps:
            return []
        rows: list[list[float]] = torch.stack(self._steps, dim=1).cpu().tolist()
        return rows


def _eos_ids(model: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos) if isinstance(eos, list | tuple) else {eos}
