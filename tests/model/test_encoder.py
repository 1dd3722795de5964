"""Our run of the audio encoder: what transformers' encoder and projector give, with the
convolutions in slices and the windows attended at once; flash attention only when it
imports and gives the right answer."""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention

from transcribed.model import encoder as encoder_module
from transcribed.model.encoder import AudioEncoder, FlashVarlen, PaddedSdpa, Windows, tried_flash
from transcribed.model.engine import Engine


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=2)


def test_the_encoder_gives_what_transformers_gives_in_slices(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 30, 2.5, 17.3 and 0.3 s (a partial last window, a chunk shorter than one
    convolved piece, padding pieces), convolved 7 pieces at a time."""
    rng = np.random.default_rng(0)
    audio = [
        (0.1 * rng.standard_normal(int(s * 16000))).astype(np.float32) for s in (30, 2.5, 17.3, 0.3)
    ]
    batch = engine._processor.apply_transcription_request(audio=audio)
    model = engine._model.model
    with torch.inference_mode():
        expected = model.get_audio_features(batch["input_features"], batch["input_features_mask"])
    monkeypatch.setattr(encoder_module, "CONV_SLICE", 7)
    ours = AudioEncoder(model.audio_tower, model.multi_modal_projector, PaddedSdpa())
    got = ours(batch["input_features"], batch["input_features_mask"])
    assert got.shape == expected.pooler_output.shape
    assert torch.allclose(got, expected.pooler_output, atol=1e-5)
    placeholders = int((batch["input_ids"] == engine._model.config.audio_token_id).sum())
    assert got.shape[0] == placeholders


def _varlen(q, k, v, edges_q, edges_k, longest_q, longest_k, softmax_scale, causal):  # type: ignore[no-untyped-def]
    """A correct stand-in for flash_attn_varlen_func, one window at a time."""
    out = []
    for start, end in zip(edges_q[:-1].tolist(), edges_q[1:].tolist(), strict=True):
        window = [t[start:end].transpose(0, 1) for t in (q, k, v)]
        out.append(scaled_dot_product_attention(*window, scale=softmax_scale).transpose(0, 1))
    return torch.cat(out)


def _fake_flash(monkeypatch: pytest.MonkeyPatch, function) -> None:  # type: ignore[no-untyped-def]
    module = types.ModuleType("flash_attn")
    module.flash_attn_varlen_func = function  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flash_attn", module)


def test_flash_attention_is_used_only_when_it_imports_and_agrees(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flash_attn that is missing, raises, or answers wrong: SDPA, said in the log. One
    that answers right: the variable-length kernel. Never a failed load."""
    cpu = torch.device("cpu")
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # not installed
    assert tried_flash(cpu, torch.float32).name == "sdpa"

    def broken(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("no kernel image is available for execution on the device")

    _fake_flash(monkeypatch, broken)
    assert tried_flash(cpu, torch.float32).name == "sdpa"
    _fake_flash(monkeypatch, lambda q, *args, **kwargs: torch.zeros_like(q))
    assert tried_flash(cpu, torch.float32).name == "sdpa"
    _fake_flash(monkeypatch, _varlen)
    assert tried_flash(cpu, torch.float32).name == "flash-varlen"
    log = capsys.readouterr().out
    assert "no kernel image" in log and "gives wrong results here" in log


def test_both_ways_of_attending_agree_on_uneven_windows() -> None:
    windows = Windows((104, 104, 37, 5))
    q, k, v = (torch.randn(250, 2, 16) for _ in range(3))
    padded = PaddedSdpa().prepare(windows, torch.device("cpu"))(q, k, v, 0.25)
    packed = FlashVarlen(_varlen).prepare(windows, torch.device("cpu"))(q, k, v, 0.25)
    assert torch.allclose(padded, packed, atol=1e-5)
