"""Tensor parallelism (docs/ARCHITECTURE.md §7.3): two ranks score replicated hidden states and keep rank 0's
selection, and give the greedy tokens and log-probabilities of apply_sdtp + generate(), prompts across KV blocks."""
import os

import pytest

from engine import assert_same_generation, generate, hf_reference, served_classes, start
from tiny import MAX_TOKENS, prompts, write_exported_model

pytestmark = pytest.mark.slow


def test_two_ranks_equal_apply_sdtp(tmp_path, monkeypatch):
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("tensor parallelism on vLLM's CPU build needs a CPU per rank")
    # vLLM's CPU build binds each rank to a NUMA node of its own unless told which CPUs to use: half each here.
    half = len(cpus) // 2
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(",".join(map(str, part))
                                                             for part in (cpus[:half], cpus[half:2 * half])))
    folder = write_exported_model(tmp_path)
    llm = start(folder, tensor_parallel_size=2, distributed_executor_backend="mp")
    assert served_classes(llm) == ["SDTPLlamaForCausalLM"] * 2
    tokens, logprobs = generate(llm, prompts(), MAX_TOKENS)
    assert_same_generation(prompts(), tokens, logprobs, hf_reference(folder, prompts(), MAX_TOKENS))
