"""The audio encoder's forward pass, run by us over transformers' own modules and weights.

transformers' `Qwen3ASREncoder` convolves every padded one-second piece of every chunk at
once (about 184 MB of activations per 30 s chunk: ~47 GB for 256 chunks), and without
flash attention runs each attention window as its own call, reading the window lengths
back from the GPU in every layer (6,144 calls for 64 chunks). Here, as in vLLM's Qwen3-ASR:

- only the pieces that hold audio are convolved, a slice of them at a time;
- attention runs over all windows at once: flash attention's variable-length kernel when
  `flash_attn` imports and gives the right answer on this GPU (tried at load), else one
  SDPA call over the windows padded to the longest, the padding masked out.

The result is what transformers' encoder and projector give (the suite checks it), packed
in the order the processor's audio placeholders expect.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn import functional

from transcribed.logs import get_logger

log = get_logger(__name__)

# One-second pieces convolved at once: about 6 MB each in bf16 through the first two
# convolutions, so a slice holds well under 1 GB whatever the batch.
CONV_SLICE = 128


@dataclass(frozen=True)
class Windows:
    """Where each attention window lies in the packed sequence of audio positions."""

    lengths: tuple[int, ...]

    @property
    def longest(self) -> int:
        return max(self.lengths)

    def cumulative(self, device: torch.device) -> torch.Tensor:
        edges = np.concatenate([[0], np.cumsum(self.lengths)])
        return torch.tensor(edges, dtype=torch.int32, device=device)


# Attention over the windows of one encoder call: (q, k, v, scale) -> out, each [positions,
# heads, head_dim].
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def output_lengths(frames: np.ndarray, window: int) -> np.ndarray:
    """Audio positions after the three stride-2 convolutions, for `frames` mel frames (as
    transformers counts them: whole 2*window pieces give 13 each, the rest by formula)."""
    piece = window * 2
    rest = frames % piece
    after = (rest - 1) // 2 + 1
    lengths: np.ndarray = ((after - 1) // 2 + 1 - 1) // 2 + 1 + (frames // piece) * 13
    return lengths


def piece_lengths(frames: np.ndarray) -> np.ndarray:
    """Positions each convolved piece keeps (zero for a piece of padding only)."""
    lengths = frames.copy()
    for _ in range(3):
        lengths = np.where(lengths > 0, (lengths - 1) // 2 + 1, 0)
    return lengths


def attention_windows(piece_frames: np.ndarray, sample_frames: np.ndarray, config: Any) -> Windows:
    """Each sample's positions cut into windows of `n_window_infer` frames' worth, as
    transformers' `get_audio_cu_seqlens` cuts them."""
    window = int(config.n_window)
    longest_piece = int(output_lengths(piece_frames, window).max())
    size = longest_piece * (int(config.n_window_infer) // (window * 2))
    lengths: list[int] = []
    for positions in output_lengths(sample_frames, window).tolist():
        lengths += [size] * (positions // size) + ([positions % size] if positions % size else [])
    return Windows(tuple(lengths))


class AudioEncoder:
    """Mel features of a batch of chunks -> the text model's audio embeddings, packed."""

    def __init__(self, tower: Any, projector: Any, attention: "WindowAttention") -> None:
        self._tower = tower
        self._projector = projector
        self.attention = attention

    @torch.inference_mode()
    def __call__(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`features` [batch, mel, frames] and `mask` [batch, frames] as the processor gives
        them -> [positions, text width]: every sample's positions, sample after sample."""
        tower = self._tower
        batch, mel, frames = features.shape
        piece = int(tower.config.n_window) * 2
        pieces = frames // piece
        per_piece = mask.view(batch, pieces, piece).sum(-1).reshape(-1).cpu().numpy()
        windows = attention_windows(per_piece, per_piece.reshape(batch, -1).sum(-1), tower.config)
        kept = np.flatnonzero(per_piece > 0)
        chunked = features.view(batch, mel, pieces, piece).permute(0, 2, 1, 3)
        chunked = chunked.reshape(batch * pieces, 1, mel, piece)
        hidden = torch.cat(
            [
                self._convolve(chunked, kept[start : start + CONV_SLICE], per_piece)
                for start in range(0, len(kept), CONV_SLICE)
            ]
        )
        attend = self.attention.prepare(windows, features.device)
        for layer in tower.layers:
            hidden = self._layer(layer, hidden, attend)
        return self._projector(tower.ln_post(hidden))  # type: ignore[no-any-return]

    def _convolve(
        self, chunked: torch.Tensor, which: np.ndarray, frames: np.ndarray
    ) -> torch.Tensor:
        """The convolution stack over the pieces `which`; the positions that hold audio,
        packed. A slice at a time: the activations of every piece at once are what fills
        a GPU."""
        tower = self._tower
        pieces = chunked.index_select(0, torch.from_numpy(which).to(chunked.device))
        keep = piece_lengths(frames[which])
        out: torch.Tensor = functional.gelu(tower.conv2d1(pieces))
        out = functional.gelu(tower.conv2d2(out))
        out = functional.gelu(tower.conv2d3(out))
        count, channels, bins, steps = out.shape
        out = tower.conv_out(out.permute(0, 3, 1, 2).reshape(count, steps, channels * bins))
        out = out + tower.positional_embedding.positional_embedding[:steps].to(out.dtype)
        valid = torch.from_numpy(np.flatnonzero(np.arange(steps)[None, :] < keep[:, None])).to(
            out.device
        )
        return out.reshape(count * steps, -1).index_select(0, valid)

    def _layer(self, layer: Any, hidden: torch.Tensor, attend: Attend) -> torch.Tensor:
        residual = hidden
        hidden = layer.self_attn_layer_norm(hidden)
        hidden = residual + _attention(layer.self_attn, hidden, attend)
        residual = hidden
        hidden = layer.final_layer_norm(hidden)
        hidden = layer.fc2(layer.activation_fn(layer.fc1(hidden)))
        return residual + hidden


def _attention(attention: Any, hidden: torch.Tensor, attend: Attend) -> torch.Tensor:
    """One encoder layer's self-attention (transformers' `Qwen3ASRAudioAttention` weights)."""
    positions = hidden.shape[0]
    heads = int(attention.num_heads)
    q, k, v = (
        projection(hidden).reshape(positions, heads, -1)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj)
    )
    out = attend(q, k, v, float(attention.scaling))
    return attention.out_proj(out.reshape(positions, -1))  # type: ignore[no-any-return]


class WindowAttention(Protocol):
    """A way to attend within windows: `prepare` once per encoder call, then per layer."""

    name: str

    def prepare(self, windows: Windows, device: torch.device) -> Attend: ...


class PaddedSdpa:
    """PyTorch's SDPA over all windows at once, each padded to the longest, the padding
    masked out of the keys (a padded query's output is dropped)."""

    name = "sdpa"

    def prepare(self, windows: Windows, device: torch.device) -> Attend:
        longest = windows.longest
        lengths = torch.tensor(windows.lengths, device=device)
        slots = torch.arange(longest, device=device)
        valid = slots[None, :] < lengths[:, None]  # [windows, longest]
        starts = torch.cumsum(lengths, 0) - lengths
        gather = torch.where(valid, starts[:, None] + slots[None, :], 0).reshape(-1)
        keep = valid.reshape(-1).nonzero().squeeze(-1)
        mask = valid[:, None, None, :]
        count = len(windows.lengths)

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            heads, width = q.shape[1], q.shape[2]
            q, k, v = (
                t.index_select(0, gather).view(count, longest, heads, width).transpose(1, 2)
                for t in (q, k, v)
            )
            out = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
            return out.transpose(1, 2).reshape(count * longest, heads, width).index_select(0, keep)

        return attend


class FlashVarlen:
    """flash-attn's variable-length kernel: the windows packed, no padding at all."""

    name = "flash-varlen"

    def __init__(self, function: Callable[..., torch.Tensor]) -> None:
        self._function = function

    def prepare(self, windows: Windows, device: torch.device) -> Attend:
        edges = windows.cumulative(device)
        longest = windows.longest

        def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
            return self._function(
                q, k, v, edges, edges, longest, longest, softmax_scale=scale, causal=False
            )

        return attend


def choose_attention(device: torch.device, dtype: torch.dtype) -> WindowAttention:
    """flash attention's variable-length kernel on a GPU when it imports and agrees with
    SDPA there (a wheel built for another CUDA or GPU fails here, not in the first
    recording); else SDPA. The log says which, and why."""
    if device.type != "cuda":
        log.info("encoder.attention", kind=PaddedSdpa.name, reason="not a CUDA device")
        return PaddedSdpa()
    return tried_flash(device, dtype)


def tried_flash(device: torch.device, dtype: torch.dtype) -> WindowAttention:
    sdpa = PaddedSdpa()
    try:
        from flash_attn import flash_attn_varlen_func

        flash = FlashVarlen(flash_attn_varlen_func)
        agrees = _agree(flash, sdpa, device, dtype)
    except Exception as error:  # ImportError, a missing symbol, a kernel for another GPU
        log.info("encoder.attention", kind=sdpa.name, flash_attn=f"{type(error).__name__}: {error}")
        return sdpa
    if not agrees:
        log.warning("encoder.attention", kind=sdpa.name, flash_attn="gives wrong results here")
        return sdpa
    log.info("encoder.attention", kind=flash.name)
    return flash


def _agree(
    one: WindowAttention, other: WindowAttention, device: torch.device, dtype: torch.dtype
) -> bool:
    """Both attend the same on two windows of random data (within bf16 rounding)."""
    windows = Windows((7, 3))
    generator = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(10, 2, 64, generator=generator).to(device, dtype) for _ in range(3))
    results = [way.prepare(windows, device)(q, k, v, 0.125).float() for way in (one, other)]
    return bool(torch.allclose(results[0], results[1], atol=3e-2, rtol=3e-2))
