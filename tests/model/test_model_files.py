"""Model folders that are incomplete: `run` (Engine.load) and `doctor` refuse exactly the same
ones, each with a message that names the file and how to get it again."""

import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from safetensors.numpy import save_file

from transcribed.commands import doctor
from transcribed.errors import ModelError
from transcribed.model.engine import Engine
from transcribed.model.model_files import checked_folder
from transcribed.settings import Settings


def _copy(tiny_model: Path, folder: Path) -> Path:
    shutil.copytree(tiny_model, folder)
    return folder


def _truncated(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _no_tokenizer_config(folder: Path) -> None:
    (folder / "tokenizer_config.json").unlink()


def _no_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").unlink()


def _unparseable_tokenizer(folder: Path) -> None:
    # Every file is there; only loading the tokenizer finds the damage.
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": ')


def _missing_shard(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    names = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    weights.rename(folder / "model-00001-of-00002.safetensors")
    index = {name: "model-00001-of-00002.safetensors" for name in names if name != "__metadata__"}
    index["extra.weight"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))


BROKEN = {
    "truncated weights": (_truncated, "model.safetensors is cut short"),
    "no weights": (_no_weights, "no weights (model.safetensors is missing)"),
    "no tokenizer_config.json": (_no_tokenizer_config, "tokenizer_config.json"),
    "no tokenizer.json": (_no_tokenizer, "tokenizer files missing: tokenizer.json"),
    "unparseable tokenizer": (_unparseable_tokenizer, "cannot load the tokenizer"),
    "a shard missing": (_missing_shard, "model-00002-of-00002.safetensors is missing"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_doctor_fails_exactly_the_folders_run_refuses(case, tiny_model, tmp_path, folders) -> None:
    breaks, words = BROKEN[case]
    model = _copy(tiny_model, tmp_path / "model")
    breaks(model)
    with pytest.raises(ModelError) as refused:
        Engine.load(str(model), "cpu", allow_download=False, batch_size=1)
    assert words in str(refused.value) and str(model) in str(refused.value)
    found = _doctor_model(folders, model)
    assert found.level == "fail" and found.message == str(refused.value)


def test_doctor_passes_the_folder_run_loads(tiny_model, folders) -> None:
    Engine.load(str(tiny_model), "cpu", allow_download=False, batch_size=1)
    assert _doctor_model(folders, tiny_model).level == "ok"


def _doctor_model(folders, model: Path) -> doctor.Finding:
    settings = Settings(
        inbox=folders.inbox,
        outbox=folders.outbox,
        archive_dir=folders.archive,
        failed_dir=folders.failed,
        state_dir=folders.state,
        model=str(model),
        device="cpu",
    )
    [found] = [f for f in doctor.diagnose(settings) if f.check == "model"]
    return found


def test_a_half_downloaded_hub_snapshot_says_to_fetch_it_again(tmp_path, monkeypatch) -> None:
    # What an interrupted `hf download` leaves: the snapshot folder with config.json only.
    repo = tmp_path / "hub" / "models--Qwen--Qwen3-ASR-0.6B-hf"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen3_asr"}))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as refused:
        checked_folder("Qwen/Qwen3-ASR-0.6B-hf", allow_download=False)
    assert "no weights" in str(refused.value)
    assert "hf download Qwen/Qwen3-ASR-0.6B-hf" in str(refused.value)


def test_thinker_weights_in_the_file_itself_are_refused(tiny_model, tmp_path) -> None:
    original = _copy(tiny_model, tmp_path / "Qwen3-ASR-1.7B")
    thinker = {"thinker.lm_head.weight": np.zeros((2, 2), np.float32)}
    save_file(thinker, original / "model.safetensors")
    with pytest.raises(ModelError, match=r"original qwen-asr checkpoint layout"):
        checked_folder(str(original), allow_download=False)


@pytest.mark.parametrize(
    ("written", "loadable"),
    [
        ("Qwen/Qwen3-ASR-0.6B", "Qwen/Qwen3-ASR-0.6B-hf"),
        ("Qwen/Qwen3-ASR-1.7B", "Qwen/Qwen3-ASR-1.7B-hf"),
        ("Qwen3-ASR-1.7B-hf", "Qwen/Qwen3-ASR-1.7B-hf"),
        ("Qwen3-ASR-0.6B", "Qwen/Qwen3-ASR-0.6B-hf"),
        ("Qwen/Qwen3-ForcedAligner-0.6B", "Qwen/Qwen3-ForcedAligner-0.6B-hf"),
    ],
)
def test_a_qwen_name_the_daemon_cannot_load_is_answered_with_the_hf_repository(
    written, loadable, tmp_path, monkeypatch
) -> None:
    """The hint names the -hf repository `run` loads, never a download it would refuse."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelError) as refused:
        checked_folder(written, allow_download=False)
    said = str(refused.value)
    assert f"`hf download {loadable}`" in said and f"= '{loadable}'" in said
    assert f"`hf download {written}`" not in said


def test_the_right_repository_and_a_folder_are_not_second_guessed(tiny_model, tmp_path) -> None:
    """Only Qwen's names are corrected: a folder called Qwen3-ASR-1.7B loads as it is."""
    from transcribed.model.model_files import loadable_repository

    assert loadable_repository("Qwen/Qwen3-ASR-1.7B-hf") is None
    assert loadable_repository("someone/Qwen3-ASR-1.7B-finetuned") is None
    folder = _copy(tiny_model, tmp_path / "Qwen3-ASR-1.7B")
    assert loadable_repository(str(folder)) is None
    assert checked_folder(str(folder), allow_download=False) == folder


def test_the_original_layout_on_disk_names_the_converted_repository_of_its_size(
    tiny_model, tmp_path
) -> None:
    """A 0.6B original layout is pointed at Qwen/Qwen3-ASR-0.6B-hf, not the 1.7B."""
    original = _copy(tiny_model, tmp_path / "original")
    config = json.loads((original / "config.json").read_text())
    config["thinker_config"] = {"text_config": {"hidden_size": 1024}}
    (original / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as refused:
        checked_folder(str(original), allow_download=False)
    assert "`hf download Qwen/Qwen3-ASR-0.6B-hf`" in str(refused.value)
