"""On a GPU, the recordings at once and the chunks each hands over follow from the batch
ceiling measured at load, unless the config sets them."""

from pathlib import Path

from transcribed.model.engine import gpu_defaults
from transcribed.output.transcript import ModelInfo
from transcribed.service import fit_to_ceiling
from transcribed.settings import Settings


class _Shared:
    def __init__(self, device: str, ceiling: int) -> None:
        self.info = ModelInfo("m", device, "bfloat16")
        self.ceiling = ceiling
        self.batch_size = 8


def _settings(tmp_path: Path, **values: object) -> Settings:
    folders = {name: tmp_path / name for name in ("inbox", "outbox", "failed", "archive")}
    return Settings(
        inbox=folders["inbox"],
        outbox=folders["outbox"],
        failed_dir=folders["failed"],
        archive_dir=folders["archive"],
        state_dir=tmp_path / "state",
        **values,
    )


def test_the_defaults_cover_the_ceiling_three_times() -> None:
    assert gpu_defaults(256) == (32, 24)
    assert gpu_defaults(40) == (32, 4)  # at least as many as on a CPU
    assert gpu_defaults(10_000)[1] == 32  # at most what the setting allows
    batch, jobs = gpu_defaults(128)
    assert batch * jobs >= 3 * 128


def test_unset_values_follow_the_gpu_and_set_ones_are_kept(tmp_path: Path) -> None:
    shared = _Shared("cuda:0", 256)
    sized = fit_to_ceiling(_settings(tmp_path), shared)  # type: ignore[arg-type]
    assert (sized.batch_size, sized.jobs_at_once, shared.batch_size) == (32, 24, 32)
    shared = _Shared("cuda:0", 256)
    kept = fit_to_ceiling(_settings(tmp_path, jobs_at_once=6, batch_size=4), shared)  # type: ignore[arg-type]
    assert (kept.batch_size, kept.jobs_at_once, shared.batch_size) == (4, 6, 8)
    cpu = fit_to_ceiling(_settings(tmp_path), _Shared("cpu", 8))  # type: ignore[arg-type]
    assert (cpu.batch_size, cpu.jobs_at_once) == (8, 4)
