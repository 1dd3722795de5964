"""Running the real `transcribed web` as a subprocess, and the one browser the tests share."""

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from support.running import CLI, NET_GUARD

# Debian's chromium, never a browser downloaded by playwright. The flags keep it from
# reaching for Google's services (there is no network here) and from needing a sandbox as root.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


class WebPage:
    """One `transcribed web --port 0` process; `url` is where it listens."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        env = {**env, "PYTHONPATH": f"{NET_GUARD}:{env.get('PYTHONPATH', '')}"}
        with log_path.open("a") as log:
            self.process = subprocess.Popen(
                [*CLI, "web", "--port", "0", *args], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self.url = self._wait_listening(30)
        except BaseException:
            self.process.kill()
            self.process.wait(10)
            raise

    def _wait_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == "web.listening":
                    return str(event["url"]).rstrip("/")
            assert self.process.poll() is None, f"the page exited: {self.log_path.read_text()}"
            time.sleep(0.1)
        raise AssertionError(f"the page did not start: {self.log_path.read_text()}")

    def events(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError("the page did not stop on SIGTERM") from None


@contextmanager
def chromium() -> Iterator[Any]:
    """One headless Debian chromium, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot_folder(fallback: Path) -> Path:
    """Where screenshots are kept: $TRANSCRIBED_SCREENSHOTS, or a folder of this test run."""
    folder = Path(os.environ.get("TRANSCRIBED_SCREENSHOTS") or fallback)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
