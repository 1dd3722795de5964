"""`doctor`'s checks of the vLLM engine: the key file, then each server in turn: reachable,
its TLS certificate valid, the key accepted, serving the configured Qwen3-ASR model, and
its vLLM version. Reads only; nothing but a model listing and a version is asked for."""

import stat
from collections.abc import Iterator
from typing import Any

import httpx

from transcribed.commands.findings import Finding, Level
from transcribed.servers.server_pool import MODELS_PATH, read_api_key, served_models, tls_context
from transcribed.settings import ModelSettings

# vLLM loads the -hf checkpoints from 0.26 on (docs/design.md §9).
OLDEST_VERSION = (0, 26)


def check_engine(settings: ModelSettings) -> Iterator[Finding]:
    try:
        key = read_api_key(settings.vllm_api_key_file)
        verify = tls_context(settings.vllm_ca_file)
    except ValueError as error:
        yield Finding("engine", "fail", str(error), "fix the file or the setting")
        return
    yield from _key_file(settings)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx.Timeout(settings.vllm_connect_seconds * 2)
    with httpx.Client(verify=verify, headers=headers, timeout=timeout, trust_env=False) as client:
        for url in settings.vllm_servers:
            yield _server(client, url, settings.model, key is not None)


def _key_file(settings: ModelSettings) -> Iterator[Finding]:
    path = settings.vllm_api_key_file
    if path is None:
        yield Finding(
            "engine",
            "warn",
            "no vllm_api_key_file: any program that reaches the servers can use them",
            "start the servers with --api-key and put the key in a file (docs/vllm.md)",
        )
    elif path.stat().st_mode & (stat.S_IRWXO):
        yield Finding(
            "engine",
            "warn",
            f"vllm_api_key_file {path} is readable by other users",
            f"chmod 0640 {path} (owner root, group of the service user)",
        )


def _server(client: httpx.Client, url: str, model: str, keyed: bool) -> Finding:
    name = f"server {url}"
    try:
        listing = client.get(url + MODELS_PATH)
        version = _version(client, url)
    except httpx.HTTPError as error:  # unreachable, reset, a bad Content-Encoding…
        if "CERTIFICATE_VERIFY_FAILED" in str(error):
            return Finding(
                "engine",
                "fail",
                f"{name}: its TLS certificate is not valid: {error}",
                "give it a certificate for this name or address, signed by the CA in "
                "vllm_ca_file (or a CA the system trusts)",
            )
        return Finding(
            "engine",
            "fail",
            f"{name} cannot be reached: {type(error).__name__}: {error}",
            "is `vllm serve` running there, and is the port open to this machine?",
        )
    if listing.status_code in (401, 403):
        return Finding(
            "engine",
            "fail",
            f"{name} rejected the API key (HTTP {listing.status_code})",
            "put the key the server was started with (--api-key) in vllm_api_key_file"
            if keyed
            else "the server wants a key: set vllm_api_key_file",
        )
    if listing.status_code != 200:
        return Finding("engine", "fail", f"{name} answered HTTP {listing.status_code}", "")
    try:
        served = listing.json()
    except ValueError:
        return Finding(
            "engine",
            "fail",
            f"{name} answered GET {MODELS_PATH} with something that is not JSON",
            "is a proxy or another program answering at that address instead of vLLM?",
        )
    return _serves(name, url, served, model, version)


def _serves(name: str, url: str, listing: Any, model: str, version: str | None) -> Finding:
    served = served_models(listing)
    if model not in served:
        return Finding(
            "engine",
            "fail",
            f"{name} serves {', '.join(served) or 'nothing'}, not {model}",
            f"set model to the name the server serves, or serve {model} there",
        )
    roots = [str(entry.get("root", "")) for entry in listing["data"] if isinstance(entry, dict)]
    looks_asr = any("qwen3-asr" in t.lower().replace("_", "-") for t in [model, *roots])
    level: Level = "ok" if looks_asr else "warn"
    notes = [] if looks_asr else ["its name does not say Qwen3-ASR"]
    if version is None or _too_old(version):
        level = "warn"
        notes.append(f"vLLM {version or 'of unknown version'} (0.26 or later loads -hf models)")
    if url.startswith("http://"):
        level = "warn"
        notes.append("plain http: audio crosses the network unencrypted")
    message = f"{name} serves {model} with vLLM {version or '?'}"
    return Finding(
        "engine",
        level,
        message + (f"; {'; '.join(notes)}" if notes else ""),
        "serve Qwen/Qwen3-ASR-1.7B-hf with vLLM 0.26 or later, over https (docs/vllm.md)",
    )


def _version(client: httpx.Client, url: str) -> str | None:
    response = client.get(url + "/version")
    try:
        answer = response.json() if response.status_code == 200 else None
    except ValueError:
        return None
    version = answer.get("version") if isinstance(answer, dict) else None
    return str(version)[:40] if version is not None else None


def _too_old(version: str) -> bool:
    try:
        numbers = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False  # a development build: not known to be old
    return numbers < OLDEST_VERSION
