"""Is a model folder complete, and the right kind? Judged from its files alone (no torch, no
weights read), so that `run` refuses and `doctor` fails on exactly the same folders, and an
interrupted download is named in a second rather than after importing the model stack.

The one check both use: `checked_folder` (the files), then `load_processor` (the tokenizer and
feature extractor, which need transformers). The weights themselves are loaded by `run` only.
"""

import json
import os
import re
from pathlib import Path
from typing import Any

from transcribed.errors import ModelError
from transcribed.settings import ModelSettings

# safetensors itself refuses headers larger than this.
_HEADER_LIMIT = 100 << 20
# Qwen's repositories by name, with or without the organisation and the -hf suffix: only
# Qwen/<name>-hf is the layout transformers loads correctly (the others, GBs, for nothing).
_QWEN_NAME = re.compile(
    r"(?:qwen/)?(qwen3-(?:asr-(?:1\.7b|0\.6b)|forcedaligner-0\.6b))(-hf)?", re.IGNORECASE
)
_CANONICAL = {
    name.lower(): name for name in ("Qwen3-ASR-1.7B", "Qwen3-ASR-0.6B", "Qwen3-ForcedAligner-0.6B")
}
_PROCESSOR_CONFIGS = ("processor_config.json", "preprocessor_config.json")


class _Broken(Exception):
    """One file of the model folder is missing or incomplete (the reason, without the name)."""


def check_before_loading(settings: ModelSettings, *, model_on_disk: bool) -> None:
    """The model's and the aligner's files, checked before anything imports torch; the
    model's only when it is on disk here (`model_on_disk`: not when servers hold it)."""
    if model_on_disk:
        check_repository(settings.model)
    if settings.aligner is not None:
        check_repository(settings.aligner, "aligner")
    if settings.allow_download:
        return  # what is missing may yet be fetched: the loader checks after fetching
    if model_on_disk:  # otherwise `model` names what the servers serve
        checked_folder(settings.model, allow_download=False)
    if settings.aligner is not None:
        checked_folder(settings.aligner, allow_download=False, recognizer=False, setting="aligner")
    if settings.diarizer is not None:
        diarizer_folder(settings.diarizer, allow_download=False)


def loadable_repository(model: str) -> str | None:
    """The hub id of the checkpoint the daemon loads that `model` means, when `model` names
    one of Qwen's in another form (no organisation, the original layout without -hf); None
    for anything else (a folder, another repository, the right id)."""
    match = _QWEN_NAME.fullmatch(model.strip())
    if match is None or _is_folder(model):
        return None
    repository = f"Qwen/{_CANONICAL[match.group(1).lower()]}-hf"
    return None if model == repository else repository


def check_repository(model: str, setting: str = "model") -> None:
    """Refuse a Qwen repository the daemon cannot load (before a download of GBs), naming
    the one it can."""
    if (meant := loadable_repository(model)) is None:
        return
    if "/" not in model:
        why = "names no organisation"
    elif not model.lower().endswith("-hf"):
        why = "is the original qwen-asr layout, which transformers loads but turns into garbage"
    else:
        why = "is not spelt as on the hub"
    raise ModelError(
        f"{setting} = {model!r} {why}: set {setting} = {meant!r} and fetch it once while "
        f"online: `hf download {meant}`"
    )


def checked_folder(
    model: str,
    allow_download: bool,
    *,
    recognizer: bool = True,
    tokenizer: bool = True,
    setting: str = "model",
) -> Path:
    """The local folder of `model` (a folder, or a hub id in the Hugging Face cache), after
    checking it holds a complete checkpoint (with its tokenizer, for models that write text);
    for the recognizer, also that it is Qwen3-ASR in the layout transformers can use.
    ModelError says what is wrong and how to mend it, naming `setting`."""
    check_repository(model, setting)
    folder = resolve_model_folder(model, allow_download, setting)
    try:
        config = _config(folder)
        if recognizer:
            check_layout(folder, config)
        _check_weights(folder)
        if tokenizer:
            _check_tokenizer(folder)
    except _Broken as broken:
        named = _named(model, folder, setting)
        raise ModelError(f"{named}: {broken}; {_how_to_refetch(model)}") from None
    return folder


def resolve_model_folder(model: str, allow_download: bool, setting: str = "model") -> Path:
    """A local folder holding the model: `model` itself, or its hub-cache snapshot.
    `setting` names the setting that asked for it, in the error."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        return folder
    if model.startswith((".", "/", "~")):
        raise ModelError(f"{setting} folder {model} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=not allow_download))
    except Exception as error:  # the hub raises many types; all mean "not available here"
        raise ModelError(
            f"{setting} {model!r} is not in the local Hugging Face cache. Fetch it once while "
            f"online: `hf download {model}` (or set allow_download = true for one run), "
            f"or set {setting} to a local folder"
        ) from error


def check_layout(folder: Path, config: dict[str, Any] | None = None) -> None:
    """Refuse the original qwen-asr layout (transformers loads it silently and outputs
    garbage) and models that are not Qwen3-ASR."""
    config = _config(folder) if config is None else config
    if "thinker_config" in config or any(name.startswith("thinker.") for name in _names(folder)):
        converted = f"Qwen/Qwen3-ASR-{_size_of(config)}-hf"
        raise ModelError(
            f"{folder} is the original qwen-asr checkpoint layout (thinker.* weights), which "
            f"transformers cannot use correctly. Use the converted checkpoint {converted}: "
            f"`hf download {converted}`"
        )
    if config.get("model_type") != "qwen3_asr":
        raise ModelError(
            f"{folder} holds a {config.get('model_type')!r} model, not Qwen3-ASR; "
            "use Qwen/Qwen3-ASR-1.7B-hf (`hf download Qwen/Qwen3-ASR-1.7B-hf`)"
        )


def _size_of(config: dict[str, Any]) -> str:
    """0.6B or 1.7B, from the text model's width (1024 or 2048) in either layout."""
    outer = config.get("thinker_config", config)
    text = outer.get("text_config", {}) if isinstance(outer, dict) else {}
    return "0.6B" if isinstance(text, dict) and text.get("hidden_size") == 1024 else "1.7B"


def quiet_loading() -> None:
    """No progress bars while weights load: they would garble the JSON log lines. Said to
    transformers directly: HF_HUB_DISABLE_PROGRESS_BARS is read once, when it is imported."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def load_processor(folder: Path) -> Any:
    """The model's processor (tokenizer, feature extractor, chat template)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(folder, local_files_only=True)
    except Exception as error:  # OSError, ValueError, AttributeError, …: all mean unusable files
        raise ModelError(
            f"cannot load the tokenizer and processor from {folder}: {type(error).__name__}: "
            f"{first_line(error)}"
        ) from error


def first_line(error: BaseException) -> str:
    """transformers' messages run to paragraphs; the first line says what went wrong."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def _config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelError(f"{folder} has no config.json; is it a model folder?") from None
    except (OSError, ValueError) as error:
        raise _Broken(f"config.json is unreadable ({error})") from None
    if not isinstance(config, dict):
        raise _Broken("config.json is not a model configuration")
    return config


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files the checkpoint consists of (listed by its index when sharded)."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return [folder / "model.safetensors"]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise _Broken(f"{index.name} is unreadable") from None


def _check_weights(folder: Path) -> None:
    files = _weight_files(folder)
    if not any(path.is_file() for path in files):
        raise _Broken(f"no weights ({files[0].name} is missing)")
    for path in files:
        safetensors_header(path)


def _names(folder: Path) -> list[str]:
    """Every tensor name in the checkpoint (from the file headers; no data is read)."""
    names: list[str] = []
    for path in _weight_files(folder):
        if path.is_file():
            names += [name for name in safetensors_header(path) if name != "__metadata__"]
    return names


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a .safetensors file, after checking the file holds every byte its
    header promises (an interrupted download is cut short). Raises _Broken."""
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            if not 0 < length <= _HEADER_LIMIT:
                raise _Broken(f"{path.name} is not a complete safetensors file")
            header = json.loads(handle.read(length))
            size = os.fstat(handle.fileno()).st_size
        tensors = [entry for key, entry in header.items() if key != "__metadata__"]
        end = max((int(entry["data_offsets"][1]) for entry in tensors), default=0)
    except FileNotFoundError:
        raise _Broken(f"{path.name} is missing") from None
    except OSError as error:
        raise _Broken(f"{path.name} cannot be read ({error.strerror})") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise _Broken(f"{path.name} has an unreadable header") from None
    expected = 8 + length + end
    if size < expected:
        raise _Broken(f"{path.name} is cut short ({_size(size)} of {_size(expected)})")
    return dict(header)


def _check_tokenizer(folder: Path) -> None:
    """The files AutoProcessor reads; without tokenizer_config.json the tokenizer loads but
    lacks the audio tokens (an AttributeError deep in transformers)."""
    has = {name for name in os.listdir(folder) if (folder / name).is_file()}
    missing = [] if "tokenizer_config.json" in has else ["tokenizer_config.json"]
    if "tokenizer.json" not in has and not {"vocab.json", "merges.txt"} <= has:
        missing.append("tokenizer.json")
    if not has & set(_PROCESSOR_CONFIGS):
        missing.append(_PROCESSOR_CONFIGS[0])
    if missing:
        raise _Broken(f"tokenizer files missing: {', '.join(missing)}")


def _is_folder(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def _named(model: str, folder: Path, setting: str = "model") -> str:
    if _is_folder(model):
        return f"{setting} folder {model}"
    return f"{setting} {model} (Hugging Face cache: {folder})"


def _how_to_refetch(model: str) -> str:
    if _is_folder(model):
        return "copy or download the whole model folder again"
    return f"an interrupted download? fetch it again: `hf download {model}`"


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} bytes"


DIARIZER_TYPE = "nemotron3_diarization"  # the one speaker diarizer supported


def diarizer_folder(model: str, allow_download: bool) -> Path:
    """The diarizer's local folder, its weights complete and its config a diarizer's: what
    `run` checks before loading, and `doctor` too."""
    folder = checked_folder(
        model, allow_download, recognizer=False, tokenizer=False, setting="diarizer"
    )
    _check_diarizer_config(folder)
    return folder


def _check_diarizer_config(folder: Any) -> None:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelError(
            f"the diarizer folder {folder} has no readable config.json; is it a model folder?"
        ) from error
    if config.get("model_type") != DIARIZER_TYPE:
        raise ModelError(
            f"the diarizer folder {folder} holds a {config.get('model_type')!r} model, not a "
            "speaker diarizer; use nvidia/Nemotron-3-Diarization"
        )
