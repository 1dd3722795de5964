"""A stand-in vLLM server for tests: vLLM's chat-completion API with the tiny real checkpoint
behind it (real processor, chat template and tokenizer), and faults to inject.

The request's messages are rendered by the checkpoint's own processor exactly as vLLM renders
them (system text, `input_audio` as audio, `add_generation_prompt` /
`continue_final_message`), the tiny model generates greedily, and the answer carries the raw
text, per-token log-probabilities and `finish_reason` as vLLM's does.

In-process: `FakeVllm(model_dir, name).start()`. As its own process (for killing it, or in a
network namespace): `python tests/support/vllm_server.py --model DIR --name NAME --host H --port P`.
"""

import argparse
import base64
import contextlib
import io
import json
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transcribed.servers.pool_sim import ApiHandler, ApiServer, chat_answer


@dataclass
class Faults:
    """What the next requests suffer. Counts go down as requests use them up."""

    latency: float = 0.0  # seconds added to every answer
    errors: int = 0  # next requests answered 503
    resets: int = 0  # next requests: connection reset, no answer
    hangs: int = 0  # next requests: no answer until the server stops

    def take(self, name: str) -> bool:
        left = getattr(self, name)
        if left > 0:
            setattr(self, name, left - 1)
            return True
        return False


class TinyModel:
    """The tiny checkpoint generating like vLLM does (one request at a time)."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoProcessor, Qwen3ASRForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        self.model = Qwen3ASRForConditionalGeneration.from_pretrained(folder).eval()
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos) if isinstance(eos, list) else {eos}
        self.lock = threading.Lock()
        self.prompts: list[str] = []  # every rendered prompt, for tests to compare

    def answer(self, request: dict[str, Any], name: str) -> dict[str, Any]:
        import soundfile
        import torch

        conversation = []
        for message in request["messages"]:
            content = message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            parts = []
            for part in content:
                if part["type"] == "input_audio":
                    data = base64.b64decode(part["input_audio"]["data"])
                    audio, _rate = soundfile.read(io.BytesIO(data), dtype="float32")
                    parts.append({"type": "audio", "audio": audio})
                else:
                    parts.append(part)
            conversation.append({"role": message["role"], "content": parts})
        continuing = bool(request.get("continue_final_message"))
        with self.lock, torch.inference_mode():
            inputs = self.processor.apply_chat_template(
                [conversation],
                tokenize=True,
                return_dict=True,
                add_generation_prompt=request.get("add_generation_prompt", True),
                continue_final_message=continuing,
            )
            self.prompts.append(self.processor.tokenizer.decode(inputs["input_ids"][0]))
            limit = int(request["max_tokens"])
            out = self.model.generate(
                **inputs,
                max_new_tokens=limit,
                min_new_tokens=int(request.get("min_tokens", 0)),
                do_sample=False,
                output_scores=True,
                return_dict_in_generate=True,
            )
        ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
        logprobs = []
        for step, token in enumerate(ids):
            row = torch.log_softmax(out.scores[step][0].float(), dim=-1)
            logprobs.append((self.processor.tokenizer.decode([token]), float(row[token])))
        ended = any(token in self.eos for token in ids)
        if ended:  # vLLM leaves the stop token out of the answer
            cut = next(i for i, token in enumerate(ids) if token in self.eos)
            ids, logprobs = ids[:cut], logprobs[:cut]
        text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
        return chat_answer(name, text, "stop" if ended else "length", logprobs)


class _FaultyHandler(ApiHandler):
    server: "FakeServer"

    def do_POST(self) -> None:  # noqa: N802
        faults = self.server.faults
        self.server.received += 1
        if faults.take("resets"):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            linger = struct.pack("ii", 1, 0)  # close with RST, not FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            self.connection.close()
            self.close_connection = True
            return
        if faults.take("hangs"):
            self.server.stopping.wait()
            self.close_connection = True
            return
        if faults.take("errors"):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_json(503, {"error": {"message": "injected failure"}})
            return
        time.sleep(faults.latency)
        super().do_POST()


class FakeServer(ApiServer):
    def __init__(
        self, address: tuple[str, int], name: str, model: TinyModel, api_key: str | None
    ) -> None:
        super().__init__(address, name, lambda request: model.answer(request, name), api_key)
        self.RequestHandlerClass = _FaultyHandler
        self.faults = Faults()
        self.received = 0
        self.stopping = threading.Event()
        self.connections: set[socket.socket] = set()

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """As a dead server's: the open keep-alive connections end too."""
        for connection in list(self.connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class FakeVllm:
    """One fake server on a thread of this process."""

    def __init__(
        self,
        model: TinyModel,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.model = model
        self.host = host
        self.server = FakeServer((host, port), name, model, api_key)
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*map(str, tls))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.faults = self.server.faults
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return f"{self.scheme}://{self.host}:{port}"

    def start(self) -> "FakeVllm":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.server.drop_connections()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--api-key-file", type=Path)
    parser.add_argument("--cert", type=Path)
    parser.add_argument("--key", type=Path)
    args = parser.parse_args()
    key = args.api_key_file.read_text().strip() if args.api_key_file else None
    tls = (args.cert, args.key) if args.cert and args.key else None
    fake = FakeVllm(TinyModel(args.model), args.name, args.host, args.port, key, tls)
    fake.faults.latency = args.latency
    fake.start()
    print(json.dumps({"url": fake.url}), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
