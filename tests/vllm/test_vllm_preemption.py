"""Preemption by recompute: a request that lost its blocks comes back as one first pass over its prompt and the
tokens it had generated; SDTP prunes the prompt exactly as before and never the generated tokens, so the result
is that of a run without preemption; a request that asks for its prompt's log-probabilities stays unpruned
(docs/ARCHITECTURE.md §7.3)."""
import pytest

from engine import assert_same_generation, generate, hf_reference, start
from tiny import prompts, write_exported_model

pytestmark = pytest.mark.slow


def test_recomputed_requests_equal_apply_sdtp(tmp_path):
    folder = write_exported_model(tmp_path)
    # Four prompts that each fill most of a 128-token block, then grow into a second: 8 blocks wanted, 5 there.
    batch = [p[:120] for p in prompts()[7:]] + [prompts()[7][100:220], prompts()[8][50:170]]
    max_tokens = [20] * len(batch)
    llm = start(folder, num_gpu_blocks_override=5, max_model_len=512, disable_log_stats=False)
    tokens, logprobs = generate(llm, batch, max_tokens)
    preemptions = _preemptions(llm)
    assert preemptions > 0, "the test meant to preempt requests, and none was"
    assert_same_generation(batch, tokens, logprobs, hf_reference(folder, batch, max_tokens))
    # Requests that ask for their prompt's log-probabilities run unpruned, also when recomputed after preemption.
    tokens, logprobs = generate(llm, batch, max_tokens, prompt_logprobs=1)
    assert _preemptions(llm) > preemptions, "the test meant to preempt requests, and none was"
    assert_same_generation(batch, tokens, logprobs, hf_reference(folder, batch, max_tokens, pruned=False))


def _preemptions(llm) -> float:
    return sum(m.value for m in llm.get_metrics() if m.name == "vllm:num_preemptions")
