"""Async scheduling, which vLLM turns on wherever its executor supports it (CUDA machines included): the scheduler
plans step n + 1 while step n runs, and the runner feeds decodes the token it sampled on the device. vLLM's CPU
platform turns it off (`CpuPlatform.check_and_update_config`), so these tests turn it back on after that hook, with
the engine core in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so that the patch reaches it. Under it the
pruned steps give apply_sdtp's tokens and log-probabilities, with requests preempted and recomputed too."""
import gc

import pytest

from engine import assert_same_generation, generate, hf_reference, preemptions, start
from tiny import MAX_TOKENS, PREEMPTING_ENGINE, preempting_batch, prompts, write_exported_model

pytestmark = pytest.mark.slow


@pytest.fixture
def async_engine(monkeypatch):
    """start() with async scheduling on; checks that the engine runs the async scheduler and runner."""
    from vllm.platforms.cpu import CpuPlatform

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    turns_it_off = CpuPlatform.check_and_update_config.__func__

    def turn_it_on(cls, vllm_config):
        turns_it_off(cls, vllm_config)
        vllm_config.scheduler_config.async_scheduling = True

    monkeypatch.setattr(CpuPlatform, "check_and_update_config", classmethod(turn_it_on))
    engines = []

    def async_start(folder, **overrides):
        llm = start(folder, **overrides)
        engines.append(llm)
        core = llm.llm_engine.engine_core.engine_core
        assert type(core.scheduler).__name__ == "AsyncScheduler"
        assert core.model_executor.driver_worker.worker.model_runner.use_async_scheduling
        return llm

    yield async_start
    engines.clear()
    gc.collect()


def test_greedy_tokens_and_logprobs_equal_apply_sdtp(tmp_path, async_engine):
    folder = write_exported_model(tmp_path)
    tokens, logprobs = generate(async_engine(folder), prompts(), MAX_TOKENS)
    assert_same_generation(prompts(), tokens, logprobs, hf_reference(folder, prompts(), MAX_TOKENS))


def test_recomputed_requests_equal_apply_sdtp(tmp_path, async_engine):
    folder = write_exported_model(tmp_path)
    batch, max_tokens = preempting_batch()
    llm = async_engine(folder, **PREEMPTING_ENGINE)
    tokens, logprobs = generate(llm, batch, max_tokens)
    assert preemptions(llm) > 0, "the test meant to preempt requests, and none was"
    assert_same_generation(batch, tokens, logprobs, hf_reference(folder, batch, max_tokens))
