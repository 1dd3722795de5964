"""The vLLM client runs where torch may be absent or slow to import: it must not need it."""

import subprocess
import sys


def test_importing_the_vllm_client_does_not_import_torch() -> None:
    """Importing transcribed.servers.vllm_engine leaves torch unimported (it once took 2.2 s of
    its 2.4 s for a two-line token budget)."""
    probe = "import sys, transcribed.servers.vllm_engine; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "False"
