"""A tiny random Qwen3-ASR checkpoint built with transformers' own classes.

Weights cannot be downloaded on build machines, so tests (and anyone trying the daemon without
the real model) use this: it loads through exactly the same code path as Qwen/Qwen3-ASR-*-hf.
Its text is random; it proves structure, never words.

    python -m transcribed.model.synthetic /tmp/tiny-qwen3-asr
"""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|audio_start|>",
    "<|audio_pad|>",
    "<|audio_end|>",
]

# The shape of Qwen3-ASR's chat template: system turn (context), user turn (audio), assistant.
_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "language English<asr_text>the quick brown fox jumps over the lazy dog",
    "language Chinese<asr_text>你好世界 今天天气很好",
    "language German<asr_text>guten Morgen",
]


# The aligner's template puts a start and an end <timestamp> slot after every word; the model
# classifies each slot into a time bin (timestamp_segment_time ms each).
_ALIGNER_TEMPLATE = (
    "<|im_start|>system\n<|im_end|>\n"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}<timestamp><timestamp>{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}"
)
_TIME_BINS = 5000  # the real aligner's classes: 5000 bins of 80 ms


def build_tiny_checkpoint(folder: Path, seed: int = 0, for_vllm: bool = False) -> Path:
    """Write a tiny random Qwen3-ASR model, tokenizer and processor to `folder`. `for_vllm`:
    the variant vLLM's CPU build can serve (attention heads of 32, the audio encoder's
    output as wide as the text model)."""
    import torch
    from transformers import Qwen3ASRForConditionalGeneration

    tokenizer = _tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIAL_TOKENS}
    config = _config(tokenizer, *(_VLLM_SIZES if for_vllm else ()))
    torch.manual_seed(seed)
    model = Qwen3ASRForConditionalGeneration(config)
    with torch.no_grad():
        # Zero the (tied) embeddings of special and whitespace-only tokens so random logits
        # favour visible text: transcripts then hold characters, as a real model's would.
        invisible = [i for i in range(len(tokenizer)) if not _visible(tokenizer.decode([i]))]
        model.get_input_embeddings().weight[[*ids.values(), *invisible]] = 0
    _save(folder, model, tokenizer, _CHAT_TEMPLATE)
    return folder


def build_tiny_aligner(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random Qwen3-ForcedAligner (token classification over time bins)."""
    import torch
    from transformers import Qwen3ASRForTokenClassification

    tokenizer = _tokenizer(extra_tokens=("<timestamp>",))
    config = _config(
        tokenizer,
        num_labels=_TIME_BINS,
        timestamp_token_id=tokenizer.convert_tokens_to_ids("<timestamp>"),
    )
    torch.manual_seed(seed)
    _save(folder, Qwen3ASRForTokenClassification(config), tokenizer, _ALIGNER_TEMPLATE)
    return folder


def _save(folder: Path, model: Any, tokenizer: Any, template: str) -> None:
    from transformers import Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor = Qwen3ASRProcessor(
        feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer, chat_template=template
    )
    processor.save_pretrained(folder)
    _readable_like_config(folder)


def _readable_like_config(folder: Path) -> None:
    """The weights as readable as the rest. Transformers writes `config.json` by the umask
    but the safetensors file 0600, so a daemon running as another user (the systemd unit's
    own) could read the model's configuration and not its weights."""
    mode = (folder / "config.json").stat().st_mode & 0o777
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(mode)


def _tokenizer(extra_tokens: tuple[str, ...] = ()) -> Any:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=_SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    # <asr_text> is an ordinary added token in the real tokenizer: decoding keeps it, so the
    # processor's parser can split "language X<asr_text>text".
    bpe.add_tokens([AddedToken("<asr_text>", special=False)])
    bpe.add_special_tokens([AddedToken(token, special=True) for token in extra_tokens])
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",  # noqa: S106 (a token name, not a password)
        pad_token="<|endoftext|>",  # noqa: S106
        extra_special_tokens={
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    )


_TINY_AUDIO = {
    "encoder_layers": 1,
    "encoder_attention_heads": 2,
    "encoder_ffn_dim": 32,
    "d_model": 16,
    "output_dim": 32,
    "downsample_hidden_size": 8,
}
_TINY_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 16,
}
# vLLM's CPU attention has no kernel for heads of 16, and it feeds the audio encoder's output
# straight into the text model: heads of 32, and output_dim equal to hidden_size.
_VLLM_SIZES: tuple[dict[str, int], dict[str, int]] = (
    _TINY_AUDIO | {"d_model": 64, "encoder_ffn_dim": 64, "output_dim": 64},
    _TINY_TEXT | {"hidden_size": 64, "intermediate_size": 128, "head_dim": 32},
)
# The published architectures: the audio encoder (AuT) and the Qwen3 text model of each size.
# 1.7B matches transformers' Qwen3ASRConfig defaults (its output_dim set to the text width);
# 0.6B is the Qwen3-0.6B text model with the smaller encoder of Qwen/Qwen3-ASR-0.6B-hf.
FULL_SIZES: dict[str, tuple[dict[str, int], dict[str, int]]] = {
    "1.7b": (
        {
            "encoder_layers": 24,
            "encoder_attention_heads": 16,
            "encoder_ffn_dim": 4096,
            "d_model": 1024,
            "output_dim": 2048,
            "downsample_hidden_size": 480,
        },
        {
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
        },
    ),
    "0.6b": (
        {
            "encoder_layers": 18,
            "encoder_attention_heads": 14,
            "encoder_ffn_dim": 3584,
            "d_model": 896,
            "output_dim": 1024,
            "downsample_hidden_size": 480,
        },
        {
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
        },
    ),
}
_FULL_VOCAB = 151_936


def build_full_size_checkpoint(folder: Path, size: str, seed: int = 0, device: str = "cpu") -> Path:
    """The full-size architecture (`1.7b` or `0.6b`) with random bf16 weights, for measuring
    speed without downloading anything. Its vocabulary is full size (the output layer costs
    what the real one does); the tokenizer is the tiny one, so its text is meaningless.
    Built once: a folder that exists is complete (see `_built_once`). `device`: where the
    random weights are drawn (a GPU draws 2 billion in a moment; a CPU takes a minute)."""
    return _built_once(folder, lambda partial: _build_full_size(partial, size, seed, device))


def _build_full_size(folder: Path, size: str, seed: int, device: str) -> None:
    import torch

    audio, text = FULL_SIZES[size]
    tokenizer = _tokenizer()
    config = _config(tokenizer, audio=audio, text=text | {"vocab_size": _FULL_VOCAB})
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = _network_class()(config)
    finally:
        torch.set_default_dtype(previous)
    _save(folder, model, tokenizer, _CHAT_TEMPLATE)
    del model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()  # else the engine loaded next finds 4 GB less free


def _network_class() -> Any:
    from transformers import Qwen3ASRForConditionalGeneration

    return Qwen3ASRForConditionalGeneration


def build_synthetic(folder: Path, size: str, device: str = "cpu") -> Path:
    """Random weights of `size`: `tiny` (seconds to build, for dry runs) or a published
    architecture (`FULL_SIZES`), built once into `folder`."""
    if size == "tiny":
        return _built_once(folder, _build_tiny)
    return build_full_size_checkpoint(folder, size, device=device)


def _build_tiny(folder: Path) -> None:
    build_tiny_checkpoint(folder)


SYNTHETIC_SIZES = ("tiny", *sorted(FULL_SIZES))


def synthetic_folder(size: str) -> Path:
    """Where random weights of `size` are kept between runs: $XDG_CACHE_HOME/transcribed."""
    import os

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "transcribed" / f"synthetic-{size}"


def _complete(folder: Path) -> bool:
    """A configuration and weights: what a finished build leaves."""
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _built_once(folder: Path, build: Callable[[Path], None]) -> Path:
    """`folder` as `build` makes it, made in a temporary folder beside it and renamed when
    complete: a build cut short (a killed run, a full disk) leaves no `folder` for the next
    run to trust, only a partial one that the next run removes."""
    import os
    import shutil

    if _complete(folder):
        return folder
    shutil.rmtree(folder, ignore_errors=True)  # left by an older build that was cut short
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.partial-*"):
        shutil.rmtree(stale, ignore_errors=True)
    partial = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    try:
        build(partial)
        os.rename(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _config(
    tokenizer: Any,
    audio: dict[str, int] | None = None,
    text: dict[str, int] | None = None,
    **extra: Any,
) -> Any:
    from transformers import Qwen3ASRConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIAL_TOKENS}
    return Qwen3ASRConfig(
        audio_config=audio or _TINY_AUDIO,
        text_config={"vocab_size": len(tokenizer), **(text or _TINY_TEXT)}
        | {"max_position_embeddings": 65536 if text else 8192},
        audio_token_id=ids["<|audio_pad|>"],
        pad_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|endoftext|>"], ids["<|im_end|>"]],
        **extra,
    )


def _visible(text: str) -> bool:
    # Byte-level pieces of multi-byte characters decode to U+FFFD on their own.
    return bool(text.strip()) and "\ufffd" not in text


# A tiny Nemotron 3 Diarization: the published schedule and speaker cache (8 speakers, 128 mel
# bins, 27.2 s steps), with a 1-layer encoder of width 32 and a head of width 16.
_TINY_DIARIZER_AUDIO = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_mel_bins": 128,
}
_TINY_DIARIZER_HEAD = {"hidden_size": 16, "num_speakers": 8, "audio_hidden_size": 32}


def build_tiny_diarizer(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random Nemotron 3 Diarization model and its processor to `folder`. Its
    speaker labels are random; it proves structure, never who spoke."""
    return _build_diarizer(folder, seed, _TINY_DIARIZER_AUDIO, _TINY_DIARIZER_HEAD)


def build_full_size_diarizer(folder: Path, seed: int = 0) -> Path:
    """The published Nemotron 3 Diarization architecture (transformers' defaults) with random
    weights: what the diarizer costs, without downloading it. Built once, like the model."""

    def build(partial: Path) -> None:
        _build_diarizer(partial, seed, {}, {})

    return _built_once(folder, build)


def _build_diarizer(folder: Path, seed: int, audio: dict[str, int], head: dict[str, int]) -> Path:
    import torch
    from transformers import (
        Nemotron3DiarizationConfig,
        Nemotron3DiarizationForAudioFrameClassification,
        Nemotron3DiarizationProcessor,
        NemotronAsrStreamingFeatureExtractor,
    )

    config = Nemotron3DiarizationConfig(audio_config=audio or None, head_config=head or None)
    torch.manual_seed(seed)
    model = Nemotron3DiarizationForAudioFrameClassification(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    features = NemotronAsrStreamingFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
    Nemotron3DiarizationProcessor(
        features, subsampling_factor=config.audio_config.subsampling_factor
    ).save_pretrained(folder)
    _readable_like_config(folder)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m transcribed.model.synthetic",
        description="Write a tiny random Qwen3-ASR checkpoint to FOLDER, to try the daemon or "
        "run the tests without downloading a model. Its transcripts are random text.",
    )
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--aligner", action="store_true", help="a tiny random forced aligner")
    kind.add_argument("--diarizer", action="store_true", help="a tiny random speaker diarizer")
    kind.add_argument(
        "--vllm", action="store_true", help="a tiny checkpoint vLLM's CPU build can serve"
    )
    kind.add_argument(
        "--full",
        choices=sorted(FULL_SIZES),
        metavar="SIZE",
        help="the full-size architecture (1.7b or 0.6b) with random weights, for `bench`",
    )
    parser.add_argument("folder", type=Path, metavar="FOLDER", help="created if missing")
    args = parser.parse_args(argv)
    if args.aligner:
        print(build_tiny_aligner(args.folder))
    elif args.diarizer:
        print(build_tiny_diarizer(args.folder))
    elif args.vllm:
        print(build_tiny_checkpoint(args.folder, for_vllm=True))
    elif args.full:
        print(build_full_size_checkpoint(args.folder, args.full))
    else:
        print(build_tiny_checkpoint(args.folder))


if __name__ == "__main__":
    main()
