"""The decode loop's backend on the model itself: encode and prefill rows into KV slots,
then step them (a CUDA graph per shape on a GPU).

The prefill is transformers' own text model over the prompts (the audio placeholders
filled with our encoder's output), left-padded as `generate` pads them, with positions
counted from each row's first real token as `generate` counts them; each row's K and V
are then written into its slot without the padding.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from transcribed import faults
from transcribed.errors import ModelError
from transcribed.model.decode_step import EagerSteps, KvSlots, StepGraphs, TextParts, decode_step
from transcribed.model.decoding import First, Row
from transcribed.model.encoder import AudioEncoder


class TorchBackend:
    """`decoding.Backend` over Qwen3ASRForConditionalGeneration's modules."""

    def __init__(
        self,
        network: Any,
        processor: Any,
        encoder: AudioEncoder,
        cache: KvSlots,
        *,
        prefill_rows: int,
        graphs: bool,
    ) -> None:
        self._network = network
        self._processor = processor
        self._encoder = encoder
        self._parts = TextParts.of(network)
        self.cache = cache
        self.slots, self.length = cache.slots, cache.length
        self.prefill_rows = prefill_rows
        self.eos = frozenset(_eos_ids(network))
        self._audio_token = int(network.config.audio_token_id)
        self._device = network.device

        def step(rows: int, length: int) -> None:
            with torch.inference_mode():
                decode_step(self._parts, cache, rows, length)

        self.steps: EagerSteps | StepGraphs = (
            StepGraphs(step, cache) if graphs else EagerSteps(step)
        )
        self._host = _HostCopies(cache, self._device)

    def inputs(self, rows: Sequence[Row]) -> Any:
        """The processor's batch for rows of one language and context, on the device."""
        first = rows[0]
        return self._processor.apply_transcription_request(
            audio=[row.audio for row in rows],
            language=first.language,  # forced: the processor pre-fills "language X<asr_text>"
            prompt=[first.context] * len(rows) if first.context else None,
            # Log-mel features are computed where the model runs (the GPU), not on the CPU.
            processor_kwargs={"audio_kwargs": {"device": str(self._device)}},
        ).to(self._device)

    @torch.inference_mode()
    def prefill(self, rows: Sequence[Row], slots: Sequence[int]) -> list[First]:
        batch = self.inputs(rows)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        audio = self._encoder(
            batch["input_features"].to(self._network.dtype), batch["input_features_mask"]
        )
        faults.point("model.batch", f"{len(rows)} chunks")  # mid-call: tensors are alive
        embeds = self._parts.embed(ids)
        placeholders = (ids == self._audio_token)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(placeholders, audio.to(embeds.dtype))
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        out = self._network.model.language_model(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True
        )
        logits = self._parts.head(out.last_hidden_state[:, -1]).float()
        chosen = logits.max(-1)
        scores = chosen.values - torch.logsumexp(logits, -1)
        lengths = mask.sum(-1)
        self._keep(out, slots, lengths, ids.shape[1])
        tokens, prompts = chosen.indices.tolist(), lengths.tolist()
        self.cache.start(list(slots), tokens, prompts)
        return [
            First(token, score, prompt)
            for token, score, prompt in zip(tokens, scores.tolist(), prompts, strict=True)
        ]

    def _keep(self, out: Any, slots: Sequence[int], lengths: torch.Tensor, padded: int) -> None:
        """Each row's K and V into its slot, from place 0, the left padding left out (its
        entries go to the last place, which a row only reads after writing it)."""
        longest = int(lengths.max())
        if longest > self.length - 2:
            raise ModelError(
                f"a prompt of {longest} tokens leaves no room in the model's cache of "
                f"{self.length}: shorten the folder's context"
            )
        layers = _layers(getattr(out, "cache", None) or out.past_key_values)
        places = torch.arange(padded, device=lengths.device)[None, :] - (padded - lengths)[:, None]
        places = torch.where(places >= 0, places, self.length - 1)
        index = torch.tensor(list(slots), device=lengths.device)
        for layer, (keys, values) in enumerate(layers):
            self.cache.write(layer, index, places, keys, values)

    def step(self, rows: int, length: int) -> "_Pending":
        self.steps.run(rows, length)
        return self._host.after_step(rows)

    def move(self, source: int, target: int) -> None:
        self.cache.move(source, target)


class _HostCopies:
    """A step's tokens and scores, copied to the host without waiting on a GPU: two pinned
    buffers in turn, so the next step can start before this one is read."""

    def __init__(self, cache: KvSlots, device: torch.device) -> None:
        self._cache = cache
        self._cuda = device.type == "cuda"
        pinned = self._cuda
        self._buffers = [
            (
                torch.zeros(cache.slots, dtype=torch.long, pin_memory=pinned),
                torch.zeros(cache.slots, dtype=torch.float32, pin_memory=pinned),
            )
            for _ in range(2)
        ]
        self._turn = 0
        self._rows = 0
        self._event: Any = None

    def after_step(self, rows: int) -> "_Pending":
        tokens, scores = self._buffers[self._turn]
        tokens[:rows].copy_(self._cache.next_tokens[:rows], non_blocking=self._cuda)
        scores[:rows].copy_(self._cache.log_probs[:rows], non_blocking=self._cuda)
        if self._cuda:
            self._event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            self._event.record()
        pending = _Pending(tokens[:rows], scores[:rows], self._event)
        self._turn ^= 1
        return pending


class _Pending:
    def __init__(self, tokens: torch.Tensor, scores: torch.Tensor, event: Any) -> None:
        self._tokens, self._scores, self._event = tokens, scores, event

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        if self._event is not None:
            self._event.synchronize()
        return self._tokens.numpy().copy(), self._scores.numpy().copy()


def _layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of transformers' DynamicCache, old layout or new."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys, layer.values) for layer in layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _eos_ids(network: Any) -> set[int]:
    eos = network.generation_config.eos_token_id
    return set(eos) if isinstance(eos, list | tuple) else {int(eos)}
