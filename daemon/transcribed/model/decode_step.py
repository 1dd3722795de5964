"""One decoding step for a batch of rows that each sit at their own position.

transformers' `StaticCache` keeps one write position for the whole batch, so a row that
ends cannot be replaced by a new chunk while the others go on. Here the KV cache is ours:
one tensor per layer for K and one for V, `[slots, kv_heads, length, head_dim]`, allocated
once at the batch ceiling; each slot holds one row at its own position. A step reads the
text model's own modules (transformers' Qwen3 layers and weights) and:

- writes each row's new K and V at that row's position, in place (no cache is copied);
- attends with the query heads grouped under their shared K/V head (GQA: 16 query heads
  over 8 K/V heads read each K/V once; `repeat_kv` would copy them to 16 every step);
- looks at the first `length` positions only (a few length steps keep the read short).

Every shape is fixed by (rows, length), so on CUDA a step is captured once as a graph per
shape and replayed (`StepGraphs`); on any failure to capture, the same step runs eagerly.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from transcribed.logs import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class TextParts:
    """The pieces of transformers' Qwen3 text model a step needs."""

    layers: list[Any]
    norm: Any
    rotary: Any
    embed: Any
    head: Any
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, network: Any) -> "TextParts":
        text = network.model.language_model
        config = network.config.get_text_config()
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        return cls(
            list(text.layers),
            text.norm,
            text.rotary_emb,
            text.embed_tokens,
            network.lm_head,
            int(config.num_key_value_heads),
            int(head_dim),
        )

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * dtype.itemsize


class KvSlots:
    """The persistent KV cache, and the per-slot inputs and outputs of a step (fixed
    addresses: a captured graph reads and writes exactly these tensors)."""

    def __init__(
        self, parts: TextParts, slots: int, length: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape = (slots, parts.kv_heads, length, parts.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in parts.layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in parts.layers]
        self.slots, self.length = slots, length
        self.tokens = torch.zeros(slots, dtype=torch.long, device=device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)
        self.next_tokens = torch.zeros(slots, dtype=torch.long, device=device)
        self.log_probs = torch.zeros(slots, dtype=torch.float32, device=device)
        self.rows = torch.arange(slots, device=device)
        self.places = torch.arange(length, device=device)

    def write(
        self,
        layer: int,
        slots: torch.Tensor,
        places: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        """K and V `[n, kv_heads, tokens, head_dim]` for the slots `[n]` at the places
        `[n, tokens]` (a prefill)."""
        target = (slots[:, None], slice(None), places)
        self.keys[layer][target] = keys.transpose(1, 2)
        self.values[layer][target] = values.transpose(1, 2)

    def move(self, source: int, target: int) -> None:
        """A row from one slot to another (rows are kept in the lowest slots)."""
        for tensors in (self.keys, self.values):
            for layer in tensors:
                layer[target].copy_(layer[source])
        for tensor in (self.tokens, self.positions):
            tensor[target] = tensor[source]

    def start(self, slots: list[int], tokens: list[int], positions: list[int]) -> None:
        """Give the slots their first input token and the place it goes in the cache."""
        index = torch.tensor(slots, device=self.tokens.device)
        self.tokens[index] = torch.tensor(tokens, device=self.tokens.device)
        self.positions[index] = torch.tensor(positions, device=self.tokens.device)


def decode_step(parts: TextParts, cache: KvSlots, rows: int, length: int) -> None:
    """The next token of the first `rows` slots (greedy) and its log-probability, into
    `cache.next_tokens` and `cache.log_probs`; the tokens then become the next inputs and
    the positions advance. Keys beyond `length` are not read."""
    positions = cache.positions[:rows].clamp(max=cache.length - 1)
    hidden = parts.embed(cache.tokens[:rows])
    cos, sin = parts.rotary(hidden, positions[:, None])  # [rows, 1, head_dim]
    visible = cache.places[None, :length] <= positions[:, None]  # [rows, length]
    for index, layer in enumerate(parts.layers):
        hidden = hidden + _attention(
            parts, cache, index, layer, hidden, (cos, sin), positions, visible
        )
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    logits = parts.head(parts.norm(hidden)).float()
    chosen = logits.max(-1)
    cache.next_tokens[:rows] = chosen.indices
    cache.log_probs[:rows] = chosen.values - torch.logsumexp(logits, -1)
    cache.tokens[:rows] = chosen.indices
    cache.positions[:rows] += 1


def _attention(
    parts: TextParts,
    cache: KvSlots,
    index: int,
    layer: Any,
    hidden: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    positions: torch.Tensor,
    visible: torch.Tensor,
) -> torch.Tensor:
    """One layer's self-attention for one new token per row, as transformers' Qwen3Attention
    computes it, over the slots' cache."""
    attention = layer.self_attn
    rows, width = hidden.shape[0], parts.head_dim
    normed = layer.input_layernorm(hidden)
    query = attention.q_norm(attention.q_proj(normed).view(rows, -1, width))
    key = attention.k_norm(attention.k_proj(normed).view(rows, parts.kv_heads, width))
    value = attention.v_proj(normed).view(rows, parts.kv_heads, width)
    cos, sin = rope
    query, key = query * cos + _rotate_half(query) * sin, key * cos + _rotate_half(key) * sin
    cache.keys[index][cache.rows[:rows], :, positions] = key
    cache.values[index][cache.rows[:rows], :, positions] = value
    length = visible.shape[1]
    grouped = query.view(rows, parts.kv_heads, -1, width)  # query heads under their K/V head
    out = functional.scaled_dot_product_attention(
        grouped,
        cache.keys[index][:rows, :, :length],
        cache.values[index][:rows, :, :length],
        attn_mask=visible[:, None, None, :],
        scale=float(attention.scaling),
    )
    return attention.o_proj(out.reshape(rows, -1))  # type: ignore[no-any-return]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


Step = Callable[[int, int], None]


class EagerSteps:
    """Runs each step as ordinary PyTorch calls: the CPU, and the fallback on CUDA."""

    graphs = False

    def __init__(self, step: Step) -> None:
        self._step = step

    def run(self, rows: int, length: int) -> None:
        self._step(rows, length)


class StepGraphs:
    """Each (rows, length) step captured once as a CUDA graph, then replayed: one launch
    instead of ~1,400 kernels from Python. A shape that fails to capture, and every shape
    after it, runs eagerly, with a warning: a slower start, never a failed one."""

    def __init__(self, step: Step, cache: KvSlots) -> None:
        self._step = step
        self._cache = cache
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._pool: Any = None
        self.graphs = True

    def run(self, rows: int, length: int) -> None:
        if not self.graphs:
            self._step(rows, length)
            return
        graph = self._graphs.get((rows, length))
        if graph is None:
            graph = self._capture(rows, length)
            if graph is None:
                self._step(rows, length)
                return
        graph.replay()

    @property
    def shapes(self) -> list[tuple[int, int]]:
        return sorted(self._graphs)

    def prepare(self, shapes: list[tuple[int, int]]) -> None:
        """Capture these shapes now (at start) rather than at their first step. With no
        row live the warm-up steps only write into free slots. The graphs share one memory
        pool: each only reads what it wrote in the same replay, and steps never overlap."""
        for rows, length in shapes:
            if not self.graphs:
                return
            if (rows, length) not in self._graphs:
                self._capture(rows, length)

    def _capture(self, rows: int, length: int) -> torch.cuda.CUDAGraph | None:
        """Warm the step up on a side stream, then capture it. The warm-up writes the same
        K and V the real step will, and the inputs it advances are put back."""
        cache = self._cache
        saved = cache.tokens.clone(), cache.positions.clone()
        try:
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._step(rows, length)
            torch.cuda.current_stream().wait_stream(side)
            cache.tokens.copy_(saved[0])
            cache.positions.copy_(saved[1])
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(rows, length)
        except Exception as error:  # capture is fragile: any kernel that syncs breaks it
            cache.tokens.copy_(saved[0])
            cache.positions.copy_(saved[1])
            self.graphs = False
            log.warning(
                "decode.graphs_off",
                rows=rows,
                length=length,
                error=f"{type(error).__name__}: {error}",
                hint="decoding runs eagerly: slower, same results",
            )
            return None
        self._graphs[(rows, length)] = graph
        return graph
