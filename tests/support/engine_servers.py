"""Helpers for tests of the vLLM engine: test certificates and a remote engine to talk to
fake servers."""

import subprocess
import threading
from pathlib import Path
from typing import Any

from transcribed.servers.vllm_engine import RemoteEngine
from transcribed.settings import ModelSettings


def make_certificates(folder: Path, addresses: tuple[str, ...] = ("127.0.0.1",)) -> Path:
    """A test CA (`ca.pem`) and a server certificate for `addresses` (`server.pem`,
    `server.key`) in `folder`, made with the openssl program."""
    folder.mkdir(parents=True, exist_ok=True)
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca = [
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]
    names = ",".join(f"IP:{address}" for address in addresses)
    (folder / "ext.cnf").write_text(
        f"subjectAltName={names}\nbasicConstraints=CA:FALSE\n"
        "authorityKeyIdentifier=keyid\nextendedKeyUsage=serverAuth\n"
    )
    authority = ["req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]
    request = ["req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=x"]
    sign = ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days"]
    for command in (
        [*authority, "-subj", "/CN=transcribed-test-ca", *ca],
        request,
        [*sign, "2", "-CAcreateserial", "-out", "server.pem", "-extfile", "ext.cnf"],
    ):
        subprocess.run(["openssl", *command], cwd=folder, check=True, capture_output=True)
    return folder


def remote_engine(
    urls: list[str], model: str = "tiny", batch_size: int = 8, **settings: Any
) -> RemoteEngine:
    """A connected engine for these servers (close its pool at the end)."""
    config = ModelSettings(engine="vllm", vllm_servers=urls, model=model, **settings)
    return RemoteEngine.connect(config, batch_size, threading.Event())
