"""The decode loop against transformers' `generate` on the tiny model (fp32, CPU): the same
tokens for every row, whatever the batch shape, however rows end, with rows refilled."""

import itertools
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from transcribed import faults
from transcribed.model.decoding import (
    Answer,
    Row,
    bucket_ladder,
    length_ladder,
)
from transcribed.model.engine import Engine
from transcribed.model.token_budget import token_budget

SECONDS = [2, 7, 1, 5, 3, 0.5, 4, 6, 2.5]


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


class Recorded:
    """A feed over a list of rows that keeps every answer."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = list(rows)
        self.answers: dict[int, Answer] = {}
        self.taken: list[int] = []

    def take(self, count: int) -> list[Row]:
        taken, self.rows = self.rows[:count], self.rows[count:]
        self.taken.append(len(taken))
        return taken

    def done(self, row: Row, answer: Answer) -> None:
        assert isinstance(row.tag, int)
        self.answers[row.tag] = answer

    def failed(self, row: Row, error: BaseException) -> None:
        raise AssertionError(f"row {row.tag} failed: {error}")


def reference(engine: Engine, audio: np.ndarray, eos: list[int]) -> list[int]:
    """What `generate` writes for this chunk alone, greedy, within the chunk's own budget,
    up to and including its end-of-text token."""
    inputs = engine._processor.apply_transcription_request(audio=[audio])
    with torch.inference_mode():
        out = engine._model.generate(
            **inputs,
            max_new_tokens=token_budget(len(audio) / 16000),
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos[0],
        )
    tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
    ends = [i for i, token in enumerate(tokens) if token in eos]
    return tokens[: ends[0] + 1] if ends else tokens


@pytest.fixture(scope="module")
def chunks() -> list[np.ndarray]:
    return [_noise(seconds, seed) for seed, seconds in enumerate(SECONDS)]


@pytest.fixture(scope="module")
def stop_token(tiny_model: Path, chunks: list[np.ndarray]) -> int:
    """A token the random model writes first at different steps of different rows and never
    in others: made an end-of-text token, it ends rows at different lengths, and others at
    their budget (the random model never writes the real end-of-text tokens)."""
    engine = _livelier(Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=2))
    eos = sorted(engine.loop._backend.eos)  # type: ignore[attr-defined]
    rows = [reference(engine, chunk, eos) for chunk in chunks]

    def spread(token: int) -> tuple[int, int]:
        firsts = [row.index(token) for row in rows if token in row]
        if not firsts or min(firsts) < 1 or len(firsts) == len(rows):
            return (0, 0)
        return (len(set(firsts)), -token)

    return max({token for row in rows for token in row}, key=spread)


@pytest.fixture(scope="module")
def expected(tiny_model: Path, chunks: list[np.ndarray], stop_token: int) -> list[list[int]]:
    """`generate`'s tokens for each chunk alone, with the stop token ending rows."""
    engine, eos = _engine(tiny_model, 1, stop_token)
    return [reference(engine, chunk, eos) for chunk in chunks]


def _livelier(engine: Engine) -> Engine:
    """The tiny model repeats one token for ever; with its layer's outputs scaled up it
    changes token within a row, so an end-of-text token can come at any step."""
    layer = engine._model.model.language_model.layers[0]
    with torch.no_grad():
        for weights in (layer.mlp.down_proj.weight, layer.self_attn.o_proj.weight):
            weights.mul_(20)
    return engine


def _engine(tiny_model: Path, slots: int, stop: int) -> tuple[Engine, list[int]]:
    engine = _livelier(Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=slots))
    backend = engine.loop._backend  # type: ignore[attr-defined]
    backend.eos = frozenset({*backend.eos, stop})
    return engine, sorted(backend.eos)


@pytest.mark.parametrize("slots", [1, 3, 4, 16])
def test_the_loop_writes_what_generate_writes_row_by_row(
    tiny_model: Path,
    chunks: list[np.ndarray],
    stop_token: int,
    expected: list[list[int]],
    slots: int,
) -> None:
    """Token for token, with 1, 3, 4 and 16 slots for 9 rows: rows refilled into freed
    slots (1, 3, 4), padded batch sizes (16), rows ending at an end-of-text token at
    different steps and rows ending at their budget."""
    engine, eos = _engine(tiny_model, slots, stop_token)
    feed = Recorded([Row(chunk, tag=index) for index, chunk in enumerate(chunks)])
    engine.loop.run(feed)
    assert [feed.answers[index].tokens for index in range(len(chunks))] == expected
    lengths = {len(tokens) for tokens in expected if tokens[-1] in eos}
    assert len(lengths) >= 2, "rows should end by themselves at different lengths"
    assert any(not feed.answers[i].ended for i in range(len(chunks)))  # some hit the budget
    assert all(feed.answers[i].ended == (expected[i][-1] in eos) for i in range(len(chunks)))
    if slots < len(chunks):
        assert engine.counters.prefills > 1  # freed slots were refilled while others decoded


def test_rows_with_a_fixed_count_end_there_and_are_not_cut_short(
    tiny_model: Path, chunks: list[np.ndarray]
) -> None:
    """Random weights in the benchmark: a row that wrote its fixed count has ended."""
    engine = Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=4)
    engine.fixed_tokens_per_second = 4
    texts = engine.transcribe(chunks)
    assert not any(text.truncated for text in texts)
    feed = Recorded([Row(chunk, tag=i) for i, chunk in enumerate(chunks)])
    engine.loop.run(feed)
    assert [len(feed.answers[i].tokens) for i in range(len(chunks))] == [
        int(np.ceil(seconds * 4)) for seconds in SECONDS
    ]


def test_the_batch_sizes_are_finer_than_powers_of_two() -> None:
    ladder = bucket_ladder(256)
    assert ladder[:8] == [1, 2, 3, 4, 6, 8, 12, 16]
    assert {160, 192, 224, 256} <= set(ladder)
    assert all(b / a <= 1.5 for a, b in itertools.pairwise(ladder[4:]))
    assert bucket_ladder(100)[-1] == 100 and max(bucket_ladder(5)) == 5
    assert length_ladder(640) == [128, 256, 384, 512, 640]
    assert length_ladder(700)[-1] == 700


def test_out_of_memory_mid_call_frees_the_failed_call_before_the_halves_run(
    tiny_model: Path, chunks: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An out-of-memory after the encoder ran (its output alive in the failed call's
    frames): when the rows are tried again with half the slots, nothing the failed call
    made is still alive, and every row is answered."""
    engine = Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=4)
    backend = engine.loop._backend  # type: ignore[attr-defined]
    encode = backend._encoder
    made: list[weakref.ref[torch.Tensor]] = []
    alive_at_each_call: list[int] = []

    def watched(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        alive_at_each_call.append(sum(ref() is not None for ref in made))
        out = encode(features, mask)
        made.append(weakref.ref(out))
        return out

    backend._encoder = watched
    monkeypatch.setattr(faults, "_rules", faults._parse("model.batch@1=oom"))
    texts = engine.transcribe(chunks[:4])
    assert len(texts) == 4 and all(text.text for text in texts)
    assert engine.loop.capacity == 2  # halved
    assert len(alive_at_each_call) >= 3 and not any(alive_at_each_call), alive_at_each_call
