"""The other families the plugin serves (docs/ARCHITECTURE.md §7.3): Mistral (its own decoder layer and weight
loader), Qwen2 (biases on q/k/v) and Qwen3 (RMSNorm on q and k), each exported with `sdtp export`, give in vLLM the
greedy tokens and log-probabilities of apply_sdtp + generate(). One engine per family; prompts within one KV block
and across two and three."""
import gc

import pytest

from engine import TOLERANCE, assert_same_generation, generate, hf_reference, served_classes, start
from tiny import MAX_TOKENS, PROMPT_LENGTHS, prompts, write_exported_model

from sdtp_kernels.vllm.architectures import SDTP_ARCHITECTURES

pytestmark = pytest.mark.slow
CHOSEN = [PROMPT_LENGTHS.index(n) for n in (5, 127, 129, 333)]


@pytest.mark.parametrize("family, architecture", [("mistral", "MistralForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
                                                  ("qwen3", "Qwen3ForCausalLM")])
def test_greedy_tokens_and_logprobs_equal_apply_sdtp(tmp_path, family, architecture):
    folder = write_exported_model(tmp_path, family=family)
    batch = [prompts()[i] for i in CHOSEN]
    max_tokens = [MAX_TOKENS[i] for i in CHOSEN]
    llm = start(folder)
    try:
        assert served_classes(llm) == [SDTP_ARCHITECTURES[architecture]]
        tokens, logprobs = generate(llm, batch, max_tokens)
    finally:
        del llm
        gc.collect()
    reference = hf_reference(folder, batch, max_tokens)
    assert_same_generation(batch, tokens, logprobs, reference)
    # Not the equality of two dense runs: pruning moves the first log-probability of every prompt it prunes.
    dense = hf_reference(folder, batch, max_tokens, pruned=False)
    moved = [abs(d[1][0] - r[1][0]) for d, r in zip(dense, reference)]
    assert max(moved) > 10 * TOLERANCE, moved
