"""The vLLM engine's settings: validated at load with one clear line each; the key file read
without ever showing the key."""

import contextlib
import threading
from pathlib import Path

import pytest

from transcribed.errors import ConfigError
from transcribed.servers.server_pool import ServerPool
from transcribed.servers.vllm_engine import RemoteEngine, pool_settings, recording_batch
from transcribed.settings import ModelSettings, load_settings


@pytest.mark.parametrize(
    ("servers", "says"),
    [
        ('["gpu1:8000"]', "must look like https://gpu1:8000"),
        ('["https://gpu1:8000/v1"]', "without a path like /v1"),
        ('["https://me:pw@gpu1:8000"]', "no user, query or fragment"),
        ('["https://gpu1:8000", "https://gpu1:8000/"]', "listed twice"),
        ("[]", 'engine = "vllm" needs vllm_servers'),
    ],
)
def test_bad_server_lists_are_refused_with_what_to_do(
    servers: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'engine = "vllm"\nvllm_servers = {servers}\n')
    with pytest.raises(ConfigError, match=says):
        load_settings(config, ModelSettings)


def test_server_addresses_are_normalised() -> None:
    settings = ModelSettings(
        engine="vllm", vllm_servers=["https://gpu1:8000/", "http://10.0.0.5", "https://[fd00::1]"]
    )
    assert settings.vllm_servers == [
        "https://gpu1:8000",
        "http://10.0.0.5:80",
        "https://[fd00::1]:443",
    ]


def test_key_and_ca_files_are_checked_and_the_key_never_shown(tmp_path: Path) -> None:
    def pool(**files: Path) -> object:
        return pool_settings(ModelSettings(engine="vllm", vllm_servers=["https://a:1"], **files))

    with pytest.raises(ConfigError, match="cannot read vllm_api_key_file"):
        pool(vllm_api_key_file=tmp_path / "missing")
    (tmp_path / "two.key").write_text("secret one\nsecret two\n")
    with pytest.raises(ConfigError, match="one key on one line") as refused:
        pool(vllm_api_key_file=tmp_path / "two.key")
    assert "secret" not in str(refused.value)
    (tmp_path / "ca.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cannot use vllm_ca_file"):
        pool(vllm_ca_file=tmp_path / "ca.pem")
    (tmp_path / "good.key").write_text("s3cret\n")
    made = pool(vllm_api_key_file=tmp_path / "good.key")
    assert "s3cret" not in repr(made) and made.api_key == "s3cret"  # type: ignore[attr-defined]


def test_each_recording_keeps_enough_in_flight_to_keep_every_server_full() -> None:
    two = ModelSettings(engine="vllm", vllm_servers=["https://a:1", "https://b:1"])
    assert recording_batch(two, jobs_at_once=4) == 48  # 1.5 x 2 servers x 64 / 4 recordings
    assert recording_batch(two.model_copy(update={"batch_size": 100}), 4) == 100
    eight = two.model_copy(update={"vllm_servers": [f"https://s{n}:1" for n in range(8)]})
    assert recording_batch(eight, jobs_at_once=1) == 768  # all of it, for one recording


def test_the_last_recordings_of_a_backlog_take_the_whole_share() -> None:
    """Fewer recordings running: each keeps more in flight, so the servers stay full to the
    end."""
    two = ModelSettings(engine="vllm", vllm_servers=["https://a:1", "https://b:1"])
    pool = ServerPool(pool_settings(two))  # not started: no server is asked anything
    engine = RemoteEngine(pool, recording_batch(two, 4), threading.Event())
    with contextlib.ExitStack() as running:
        for _ in range(4):
            running.enter_context(engine.job())
        assert engine.window == 48  # 192 in flight wanted, 4 recordings
        running.enter_context(engine.job())
        assert engine.window == 48  # never below the share of a full house
    with engine.job(), engine.job():
        assert engine.window == 96
    with engine.job():
        assert engine.window == 192
    pool.close()


def test_servers_in_the_environment_may_be_a_plain_comma_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRANSCRIBED_ENGINE", "vllm")
    monkeypatch.setenv("TRANSCRIBED_VLLM_SERVERS", "https://gpu1:8000, https://gpu2:8000")
    settings = load_settings(None, ModelSettings)
    assert settings.vllm_servers == ["https://gpu1:8000", "https://gpu2:8000"]
