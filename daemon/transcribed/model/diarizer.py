"""Speaker diarization with Nemotron 3 Diarization (optional): who speaks when, streamed.

One resident model serves every recording; each recording has its own `DiarizerStream`,
which carries the model's speaker cache from step to step: a speaker keeps their slot
through a recording of any length while memory holds one step of audio and a cache of fixed
size. The model tells up to 8 speakers apart, numbered by first arrival.

A step is one chunk of the model's own offline schedule (`chunk_length` encoder frames,
27.2 s, seeing `chunk_right_context` frames ahead, 3.2 s, with the offline FIFO sizes), taken
as the audio arrives: the result is what one pass over the whole recording gives (a test
checks it), without holding the recording. Steps of several recordings that wait at the same
moment run as one batch; the speaker caches are stacked for it and split again after.
"""

import copy
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from transcribed.errors import ModelError, TransientError
from transcribed.logs import get_logger
from transcribed.model.device import resolve_device
from transcribed.model.model_files import diarizer_folder, quiet_loading
from transcribed.model.speakers import FRAME_SAMPLES

log = get_logger(__name__)

_RATE = 16_000
_MODE = "offline-schedule"  # the streaming mode registered for the offline chunk sizes


@dataclass(eq=False)
class _Call:
    """One model call a stream waits for; calls with equal keys can share a batch."""

    features: torch.Tensor
    mask: torch.Tensor
    cache: Any  # the stream's speaker cache; None before its first step
    lookahead: int | None  # encoder frames seen ahead; None for a recording's last chunk
    key: object
    probabilities: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class Diarizer:
    """Nemotron3DiarizationForAudioFrameClassification and its processor on one device,
    shared by the recordings' streams (any thread)."""

    def __init__(self, model: Any, processor: Any, model_id: str) -> None:
        from transformers import Nemotron3DiarizationProcessor

        config = model.config
        self._model = model
        self._config = config
        self.id = model_id
        self.speakers = int(config.head_config.num_speakers)
        self._chunk_frames = int(config.chunk_length)  # encoder frames per step
        self._factor = int(config.audio_config.subsampling_factor)  # mel frames per encoder one
        self._processor = Nemotron3DiarizationProcessor(
            processor.feature_extractor,
            subsampling_factor=self._factor,
            streaming_modes={_MODE: (config.chunk_length, config.chunk_right_context)},
            streaming_mode=_MODE,
        )
        self._lookahead = int(config.chunk_right_context)
        # Samples each step takes, and how far the next one starts after it.
        self.first_samples = int(self._processor.num_samples_first_audio_chunk)
        self.step_samples = int(self._processor.num_samples_per_audio_chunk)
        step_frames = int(self._processor.num_mel_frames_per_step)
        self.first_advance = int(self._processor.audio_chunk_start(step_frames))
        self.step_advance = step_frames * FRAME_SAMPLES
        self._calling = threading.Lock()  # one model call at a time
        self._guard = threading.Lock()  # the waiting calls and the clock
        self._waiting: list[_Call] = []
        self.seconds = 0.0  # spent in the diarizer (features and model), for `bench`
        self.merged_calls = 0  # model calls that carried steps of more than one recording

    @classmethod
    def load(cls, model: str, device: str, *, allow_download: bool) -> "Diarizer":
        from transformers import AutoModelForAudioFrameClassification, AutoProcessor

        _check_transformers()
        torch_device = resolve_device(device)
        folder = diarizer_folder(model, allow_download)
        # float32 on the GPU too: the speaker cache keeps the frames whose scores rank
        # highest, and bf16 rounding can reorder close scores; the model is small (99 M
        # parameters), so full precision costs the GPU little.
        dtype = torch.float32
        quiet_loading()
        started = time.monotonic()
        try:
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
            network = AutoModelForAudioFrameClassification.from_pretrained(
                folder, dtype=dtype, local_files_only=True
            )
        except Exception as error:  # config, weights or processor files: all mean "unusable"
            raise ModelError(
                f"cannot load the diarizer from {folder}: {type(error).__name__}: {error}"
            ) from error
        _check_features(folder, processor)
        network.to(torch_device).eval()
        log.info(
            "diarizer.loaded",
            model=model,
            device=str(torch_device),
            speakers=network.config.head_config.num_speakers,
            seconds=round(time.monotonic() - started, 2),
        )
        return cls(network, processor, model)

    def open(self) -> "DiarizerStream":
        """A stream for one recording."""
        return DiarizerStream(self)

    # --- steps, called by the streams ---------------------------------------------------

    def step(self, audio: np.ndarray, cache: Any, first: bool) -> tuple[np.ndarray, Any]:
        """Speaker probabilities of one step's own frames, and the cache after it."""
        features = self._features(audio, first=first, last=False)
        state = None
        if cache is not None:
            state = (cache.num_cache_frames, cache.num_fifo_frames, cache.is_compressed)
        key = ("step", first, tuple(features["input_features"].shape), state)
        call = self._submit(features, cache, self._lookahead, key)
        return self._probabilities(call), call.cache

    def last_step(self, audio: np.ndarray, cache: Any, first: bool) -> np.ndarray:
        """Speaker probabilities of every remaining frame of a recording."""
        features = self._features(audio, first=first, last=True)
        if first:  # the whole recording is shorter than a step: the model's offline pass
            return self._probabilities(self._submit(features, None, None, object()))
        # The tail as the offline schedule takes it: a full chunk seeing the rest ahead,
        # then the rest.
        encoder_frames = -(-features["input_features"].shape[1] // self._factor)
        if encoder_frames <= self._chunk_frames:
            return self._probabilities(self._submit(features, cache, None, object()))
        ahead = encoder_frames - self._chunk_frames
        call = self._submit(features, cache, ahead, object())
        head = self._probabilities(call)
        cut = self._chunk_frames * self._factor
        rest = {name: value[:, cut:] for name, value in features.items()}
        tail = self._probabilities(self._submit(rest, call.cache, None, object()))
        return np.concatenate([head, tail])

    def _features(self, audio: np.ndarray, *, first: bool, last: bool) -> dict[str, Any]:
        started = time.perf_counter()
        inputs = self._processor(
            audio,
            sampling_rate=_RATE,
            is_streaming=True,
            is_first_audio_chunk=first,
            is_last_audio_chunk=last,
            return_tensors="pt",
        )
        self._clock(time.perf_counter() - started)
        return {"input_features": inputs.input_features, "attention_mask": inputs.attention_mask}

    def _probabilities(self, call: _Call) -> np.ndarray:
        assert call.probabilities is not None
        valid = int(call.mask.sum())  # the frames of real audio
        return call.probabilities[:valid]

    def _clock(self, seconds: float) -> None:
        with self._guard:
            self.seconds += seconds

    def _submit(
        self, features: dict[str, Any], cache: Any, lookahead: int | None, key: object
    ) -> _Call:
        """Run one call, batched with the calls others submit while the model is busy:
        whoever gets the model runs every waiting call that shares its key."""
        call = _Call(features["input_features"], features["attention_mask"], cache, lookahead, key)
        with self._guard:
            self._waiting.append(call)
        with self._calling:
            if not call.done:
                with self._guard:
                    batch = [each for each in self._waiting if each.key == call.key]
                    self._waiting = [each for each in self._waiting if each.key != call.key]
                self.merged_calls += len(batch) > 1
                self._run(batch)
        if call.error is not None:
            raise call.error
        return call

    def _run(self, batch: list[_Call]) -> None:
        try:
            self._forward(batch)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            error = TransientError("GPU out of memory in the diarizer")
            for call in batch:
                call.error = error
        except Exception as error:
            if len(batch) == 1:
                batch[0].error = error
            else:  # find the recording that breaks the model: each alone
                for call in batch:
                    self._run([call])
        finally:
            for call in batch:
                call.done = True

    @torch.inference_mode()
    def _forward(self, batch: list[_Call]) -> None:
        started = time.perf_counter()
        try:
            device, dtype = self._model.device, self._model.dtype
            first_step = batch[0].cache is None and batch[0].lookahead is not None
            output = self._model(
                input_features=torch.cat([call.features for call in batch]).to(device, dtype),
                attention_mask=torch.cat([call.mask for call in batch]).to(device),
                speaker_cache=self._new_cache() if first_step else self._stacked(batch),
                num_lookahead_frames=batch[0].lookahead,
            )
            probabilities = output.logits.float().sigmoid().cpu().numpy()
        finally:
            self._clock(time.perf_counter() - started)
        for index, call in enumerate(batch):
            call.probabilities = probabilities[index]
            call.cache = self._part(output.speaker_cache, index, len(batch))

    # The speaker cache has one row per stream of a batch. Streams in the same state (their
    # calls' key says so) are stacked into one cache and split again after the call; this
    # knows the cache's tensors by name (transformers' Nemotron3DiarizationSpeakerCache).
    _CACHE_TENSORS = ("embeds", "probs", "fifo")

    def _stacked(self, batch: list[_Call]) -> Any:
        if len(batch) == 1:
            return batch[0].cache
        merged = copy.copy(batch[0].cache)  # counts and flags: the same for all
        for name in self._CACHE_TENSORS:
            setattr(merged, name, torch.cat([getattr(call.cache, name) for call in batch]))
        return merged

    def _part(self, cache: Any, index: int, size: int) -> Any:
        if size == 1 or cache is None:
            return cache
        part = copy.copy(cache)
        for name in self._CACHE_TENSORS:
            setattr(part, name, getattr(cache, name)[index : index + 1].clone())
        return part

    def _new_cache(self) -> Any:
        from transformers.models.nemotron3_diarization.modeling_nemotron3_diarization import (
            Nemotron3DiarizationSpeakerCache,
        )

        return Nemotron3DiarizationSpeakerCache(
            self._config.streaming_config,
            fifo_length=self._config.fifo_length,
            speaker_cache_update_period=self._config.speaker_cache_update_period,
        )


class DiarizerStream:
    """One recording through the shared diarizer: holds the audio of one step at most."""

    def __init__(self, diarizer: Diarizer) -> None:
        self.speakers = diarizer.speakers
        self._diarizer = diarizer
        self._blocks: list[np.ndarray] = []
        self._held = 0
        self._cache: Any = None
        self._first = True

    @property
    def held_samples(self) -> int:
        """Audio held for the next step (less than one step's worth)."""
        return self._held

    def feed(self, audio: np.ndarray) -> np.ndarray:
        """Add audio; the probabilities of the frames it completes."""
        self._blocks.append(audio)
        self._held += len(audio)
        found = []
        diarizer = self._diarizer
        while self._held >= (diarizer.first_samples if self._first else diarizer.step_samples):
            held = self._joined()
            size = diarizer.first_samples if self._first else diarizer.step_samples
            probabilities, self._cache = diarizer.step(held[:size], self._cache, self._first)
            found.append(probabilities)
            advance = diarizer.first_advance if self._first else diarizer.step_advance
            self._blocks, self._held, self._first = [held[advance:]], self._held - advance, False
        return np.concatenate(found) if found else np.zeros((0, self.speakers), np.float32)

    def finish(self) -> np.ndarray:
        """The probabilities of every frame not yet given."""
        if not self._held:
            return np.zeros((0, self.speakers), np.float32)
        held, self._blocks, self._held = self._joined(), [], 0
        return self._diarizer.last_step(held, self._cache, self._first)

    def _joined(self) -> np.ndarray:
        return np.concatenate(self._blocks) if len(self._blocks) != 1 else self._blocks[0]


def _check_transformers() -> None:
    """The streaming API this module uses (Nemotron3DiarizationProcessor's chunk sizes and
    streaming modes) is in recent transformers only."""
    import inspect

    import transformers

    processor = getattr(transformers, "Nemotron3DiarizationProcessor", None)
    if (
        processor is None
        or not hasattr(processor, "audio_chunk_start")
        or ("streaming_modes" not in inspect.signature(processor.__init__).parameters)
    ):
        raise ModelError(
            f"speaker labels need a newer transformers than {transformers.__version__} "
            "(5.24 is tested): pip install -U transformers"
        )


def _check_features(folder: Any, processor: Any) -> None:
    """The labels assume 16 kHz audio and one frame per 10 ms."""
    features = getattr(processor, "feature_extractor", None)
    rate, hop = getattr(features, "sampling_rate", None), getattr(features, "hop_length", None)
    if (rate, hop) != (_RATE, FRAME_SAMPLES):
        raise ModelError(
            f"the diarizer in {folder} expects {rate} Hz audio in steps of {hop} samples; "
            f"only {_RATE} Hz in steps of {FRAME_SAMPLES} (10 ms) is supported"
        )
