"""The engine on the tiny real checkpoint: same loading path as the real model."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from transcribed.errors import ModelError
from transcribed.model.engine import (
    Engine,
    batch_ceiling,
    resolve_device,
    token_budget,
)
from transcribed.model.model_files import check_layout, resolve_model_folder


@pytest.fixture(scope="module")
def engine(tiny_model: Path) -> Engine:
    return Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=3)


def _noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(
        np.float32
    )


def test_results_come_back_in_input_order_whatever_the_batching(engine: Engine) -> None:
    chunks = [_noise(seconds, seed) for seed, seconds in enumerate([2, 7, 1, 5, 3])]
    batched = engine.transcribe(chunks)
    one_by_one = [engine.transcribe([chunk])[0] for chunk in chunks]
    assert [r.text for r in batched] == [r.text for r in one_by_one]
    assert all(result.text for result in batched)  # the tiny model writes visible characters
    assert engine.info.device == "cpu" and engine.info.dtype == "float32"


def test_a_forced_language_is_reported_as_its_code(engine: Engine) -> None:
    [result] = engine.transcribe([_noise(2, 0)], language="zh")
    assert (result.language, result.language_name, result.language_confidence) == (
        "zh",
        "Chinese",
        None,  # forced, not detected: no confidence to report
    )
    assert engine.language_code("Chinese") == "zh" and engine.language_code(None) is None
    assert engine.language_name("en") == "English" and engine.language_name("Klingon") == "Klingon"


def test_a_detected_language_is_parsed_and_scored_from_the_generated_tokens(
    engine: Engine,
) -> None:
    """The random model never writes a language, so feed the real processor a row shaped like
    the real model's output, with the per-step scores the recorder would have kept."""
    tokenizer = engine._processor.tokenizer
    ids = tokenizer.encode("language English<asr_text>hello world", add_special_tokens=False)
    marker = ids.index(tokenizer.convert_tokens_to_ids("<asr_text>"))
    eos = sorted(engine.loop._backend.eos)[0]  # type: ignore[attr-defined]
    scores = [math.log(0.9)] * marker + [0.0] * (len(ids) + 1 - marker)
    result = engine._parse([*ids, eos], scores, None)
    assert (result.language, result.language_name) == ("en", "English")
    assert result.language_confidence == round(0.9**marker, 4)
    assert result.text == "hello world" and not result.truncated


def test_budget_grows_with_length_and_truncation_is_flagged(engine: Engine) -> None:
    assert token_budget(120) > 512 > token_budget(30)
    [result] = engine.transcribe([_noise(1, 0)])
    assert result.truncated  # random weights never emit end-of-text within the budget


def test_the_original_thinker_layout_is_refused_by_name(tiny_model: Path, tmp_path: Path) -> None:
    original = tmp_path / "Qwen3-ASR-1.7B"
    shutil.copytree(tiny_model, original)
    config = json.loads((original / "config.json").read_text())
    (original / "config.json").write_text(json.dumps({**config, "thinker_config": {}}))
    with pytest.raises(ModelError, match=r"Qwen/Qwen3-ASR-1\.7B-hf"):
        check_layout(original)


def test_a_missing_model_says_how_to_fetch_it_and_stays_offline() -> None:
    with pytest.raises(ModelError, match=r"hf download Qwen/Qwen3-ASR-0\.6B-hf"):
        resolve_model_folder("Qwen/Qwen3-ASR-0.6B-hf", allow_download=False)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model_folder("/nonexistent/model", allow_download=False)


def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    if resolve_device("auto").type == "cuda":
        pytest.skip("this machine has a GPU; the no-GPU error cannot be provoked")
    reason = "CPU-only build" if torch.version.cuda is None else "no usable CUDA GPU"
    with pytest.raises(ModelError, match=reason):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_the_models_no_speech_answer_and_loops_are_handled(engine: Engine) -> None:
    tokenizer = engine._processor.tokenizer
    eos = sorted(engine.loop._backend.eos)[0]  # type: ignore[attr-defined]

    def parse(text: str):
        ids = tokenizer.encode(text, add_special_tokens=False)
        return engine._parse([*ids, eos], [0.0] * (len(ids) + 1), None)

    silence = parse("language None<asr_text>thank you for watching")
    assert (silence.text, silence.no_speech, silence.language) == ("", True, None)
    loop = parse("language English<asr_text>" + "ha" * 40)
    assert (loop.text, loop.repetition_fixed, loop.no_speech) == ("ha", True, False)


def test_context_goes_into_the_prompt(engine: Engine) -> None:
    inputs = engine._processor.apply_transcription_request(
        audio=[_noise(1, 0)], prompt=["Kubernetes Grafana"]
    )
    prompt = engine._processor.tokenizer.decode(inputs["input_ids"][0])
    assert "Kubernetes Grafana" in prompt
    [result] = engine.transcribe([_noise(1, 0)], context="Kubernetes Grafana")
    assert "Kubernetes Grafana" not in result.text


def test_the_gpu_batch_ceiling_follows_free_memory() -> None:
    gib, mib = 1 << 30, 1 << 20
    # 85% of 10 GiB, less 1 GiB fixed, in 100 MiB chunks.
    assert batch_ceiling(10 * gib, 1 * gib, 100 * mib) == int((8.5 - 1) * 1024 / 100)
    assert batch_ceiling(20 * gib, 1 * gib, 100 * mib) > batch_ceiling(10 * gib, 1 * gib, 100 * mib)
    assert batch_ceiling(1 * gib, 2 * gib, 100 * mib) == 1  # nothing fits: still one at a time
    assert batch_ceiling(1000 * gib, 0, 1 * mib) == 256  # at most 256


def test_a_step_that_cannot_be_captured_runs_eagerly_with_a_warning(
    engine: Engine, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CUDA graphs asked for where capturing fails (here: no CUDA at all): the same text,
    decoded eagerly, and the log says so; the engine still starts and answers."""
    graphed = Engine(engine._model, engine._processor, engine.info, 3, graphs=True)
    chunks = [_noise(seconds, seed) for seed, seconds in enumerate([2, 7, 1])]
    assert [r.text for r in graphed.transcribe(chunks)] == [
        r.text for r in engine.transcribe(chunks)
    ]
    assert "decode.graphs_off" in capsys.readouterr().out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_ceiling_is_measured_and_graphs_decode_as_eager_steps_do(
    tiny_model: Path,
) -> None:
    """The graphed steps replay the eager kernels: the same text, rows refilled."""
    gpu = Engine.load(str(tiny_model), "cuda", allow_download=False, batch_size=4)
    assert gpu.info.dtype == "bfloat16" and gpu.ceiling >= 4  # a tiny model fits often
    gpu.warm_up()
    chunks = [_noise(seconds, seed) for seed, seconds in enumerate([2, 7, 1, 5, 3])]
    graphed = [r.text for r in gpu.transcribe(chunks)]
    steps = gpu.loop._backend.steps  # type: ignore[attr-defined]
    assert steps.graphs, "capturing failed on this GPU (see decode.graphs_off)"
    steps.graphs = False
    assert [r.text for r in gpu.transcribe(chunks)] == graphed


def test_a_context_too_long_for_the_cache_is_refused_clearly(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The cache holds a full chunk's prompt, 128 tokens of context and its budget: a
    longer context first shortens the budget (with a warning), then is refused by name."""
    chunk = _noise(1, 0)
    room = (
        engine.cache_length
        - engine._processor.apply_transcription_request(audio=[chunk])["input_ids"].shape[1]
    )
    per_word = len(engine._processor.tokenizer.encode("fox " * 100)) / 100
    [squeezed] = engine.transcribe([chunk], context="fox " * int((room - 8) / per_word))
    assert squeezed.truncated and "decode.prompt_too_long" in capsys.readouterr().out
    with pytest.raises(ModelError, match="shorten the folder's context"):
        engine.transcribe([chunk], context="word " * 2000)


def test_the_rows_that_fit_leave_a_prefill_group_its_share() -> None:
    """Ceilings for 1.7B (a slot ~100 MiB, a prefill row ~70 MiB, 1.2 GiB fixed) on an
    80 GB, a 24 GB and an 8 GB card: the large one caps at 256 rows with groups of 64, the
    small ones keep a third for prefills rather than a ceiling of one."""
    from transcribed.model.engine import rows_that_fit

    gib, mib = 1 << 30, 1 << 20
    base, row, slot = int(1.2 * gib), 70 * mib, 100 * mib
    assert rows_that_fit(74 * gib, base, row, slot) == (256, 64)
    ceiling, group = rows_that_fit(19 * gib, base, row, slot)
    assert 90 <= ceiling <= 120 and group == 64
    ceiling, group = rows_that_fit(3 * gib, base, row, slot)
    assert 5 <= ceiling <= 15 and 3 <= group <= ceiling
    assert rows_that_fit(1 * gib, base, row, slot) == (1, 1)  # nothing fits: one at a time
