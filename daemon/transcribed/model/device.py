"""Which torch device a model runs on: what `auto` picks, why CUDA is unusable, and saying so.

Its own module, below the models that use it (the engine, the aligner, the diarizer), so none
of them imports another for it.
"""

import torch

from transcribed.errors import ModelError
from transcribed.logs import get_logger

log = get_logger(__name__)


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
