"""Preemption by recompute: a request that lost its blocks comes back as one first pass over its prompt and the
tokens it had generated; SDTP prunes the prompt exactly as before and never the generated tokens, so the result
is that of a run without preemption; a request that asks for its prompt's log-probabilities stays unpruned
(docs/ARCHITECTURE.md §7.3)."""
import pytest

from engine import assert_same_generation, generate, hf_reference, preemptions, start
from tiny import PREEMPTING_ENGINE, preempting_batch, write_exported_model

pytestmark = pytest.mark.slow


def test_recomputed_requests_equal_apply_sdtp(tmp_path):
    folder = write_exported_model(tmp_path)
    batch, max_tokens = preempting_batch()
    llm = start(folder, **PREEMPTING_ENGINE)
    tokens, logprobs = generate(llm, batch, max_tokens)
    preempted = preemptions(llm)
    assert preempted > 0, "the test meant to preempt requests, and none was"
    assert_same_generation(batch, tokens, logprobs, hf_reference(folder, batch, max_tokens))
    # Requests that ask for their prompt's log-probabilities run unpruned, also when recomputed after preemption.
    tokens, logprobs = generate(llm, batch, max_tokens, prompt_logprobs=1)
    assert preemptions(llm) > preempted, "the test meant to preempt requests, and none was"
    assert_same_generation(batch, tokens, logprobs, hf_reference(folder, batch, max_tokens, pruned=False))

