"""What several verbs do the same way: print a result, find the state folder, keep the hub
client offline, and check the model files and the device before anything heavy loads."""

import argparse
import json
import os
from typing import TypeVar

from transcribed.settings import ModelSettings, StateSettings, load_settings
from transcribed.settings.access import check_state_access

StateT = TypeVar("StateT", bound=StateSettings)


def print_result(data: object, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if as_json else text)


def state_settings(args: argparse.Namespace, kind: type[StateT]) -> StateT:
    """The settings naming the state folder: --state-dir, else the config and environment."""
    overrides = {"state_dir": args.state_dir} if args.state_dir else {}
    settings = load_settings(args.config, kind, **overrides)
    check_state_access(settings.state_dir)
    return settings


def offline_unless(allowed: bool) -> None:
    """Make the hub client refuse network access before anything imports it."""
    if not allowed:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def check_model_files(settings: ModelSettings) -> None:
    from transcribed.engines import engine_kind
    from transcribed.model.model_files import check_before_loading

    check_before_loading(settings, model_on_disk=engine_kind(settings).model_on_disk)


def check_device(device: str) -> None:
    """A GPU asked for but not usable is refused before anything starts (and logs)."""
    if device.startswith("cuda"):
        from transcribed.model.device import resolve_device

        resolve_device(device)
