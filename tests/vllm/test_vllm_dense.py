"""keep_ratio 1.0 (set at load time through hf_overrides) is plain vLLM, token for token and bit for bit in the
log-probabilities: no request has anything removed, so no step is touched (docs/ARCHITECTURE.md §7.3)."""
import gc
import os

import pytest

from engine import generate, start
from tiny import MAX_TOKENS, prompts, write_exported_model


@pytest.mark.slow
def test_keep_ratio_one_is_plain_vllm(tmp_path):
    folder = write_exported_model(tmp_path)
    llm = start(folder, hf_overrides={"sdtp_keep_ratio": 1.0})
    sdtp = generate(llm, prompts(), MAX_TOKENS)
    del llm
    gc.collect()
    llm = start(os.path.join(tmp_path, "model"), enforce_eager=True)  # as SDTP runs (§7.4)
    plain = generate(llm, prompts(), MAX_TOKENS)
    assert sdtp == plain
