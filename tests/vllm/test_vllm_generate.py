"""vLLM + SDTP against transformers + apply_sdtp on the same exported folder (docs/ARCHITECTURE.md §7): greedy
tokens and their log-probabilities, prompts of 1 to 333 tokens (across KV blocks) with different numbers of new
tokens, so that steps mix first passes and decodes; kept counts read back from the engine; state freed."""
import pytest

from engine import TOLERANCE, assert_same_generation, generate, greedy, hf_reference, start
from tiny import MAX_TOKENS, SCHEDULE, prompts, write_exported_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_exported_model(tmp_path_factory.mktemp("sdtp"))


@pytest.fixture(scope="module")
def llm(folder):
    engine = start(folder)
    yield engine
    del engine


@pytest.fixture(scope="module")
def reference(folder):
    return hf_reference(folder, prompts(), MAX_TOKENS)


def test_greedy_tokens_and_logprobs_equal_apply_sdtp(llm, reference):
    assert_same_generation(prompts(), *generate(llm, prompts(), MAX_TOKENS), reference)


def test_pruning_changes_the_result(folder, reference):
    """The equality above is not that of two dense runs: pruning moves the log-probabilities."""
    dense = hf_reference(folder, prompts(), MAX_TOKENS, pruned=False)
    moved = [abs(d[1][0] - r[1][0]) for d, r, p in zip(dense, reference, prompts()) if len(p) >= 17]
    assert min(moved) > 20 * TOLERANCE, moved


def _kept_counts(worker):
    runner = worker.model_runner
    return runner.get_model().sdtp_kept_counts(runner)


def test_kept_counts_read_back_equal_the_schedule_and_are_freed(llm):
    engine = llm.llm_engine
    for i, (prompt, m) in enumerate(zip(prompts(), MAX_TOKENS)):
        engine.add_request(f"r{i}", {"prompt_token_ids": prompt}, greedy(m + 32))
    # The engine core runs in its own process, may take the requests over more than one step and runs ahead of
    # this loop: read the counts after every step until each request has had its first pass. Each request lives
    # 33 steps or more, so that a busy machine cannot finish one (and free its counts) before it is read; and the loop
    # ends with the requests, since a step with none left would wait for output forever.
    seen = {}
    try:
        for _ in range(40):
            if not engine.has_unfinished_requests():
                break
            engine.step()
            (held,) = llm.collective_rpc(_kept_counts)
            seen.update(held)
            if len(seen) == len(prompts()):
                break
        by_prompt = {counts[0]: counts for counts in seen.values() if counts is not None}
        stages = len(SCHEDULE.stage_layers(8))
        for prompt in prompts():
            n = len(prompt)
            expected = [n] + [SCHEDULE.kept_count(n, s) for s in range(1, stages + 1)]
            if expected[-1] == n:  # nothing to remove: the request runs as without SDTP
                assert n not in by_prompt
            else:
                assert by_prompt[n] == expected
        assert len(seen) == len(prompts())
    finally:  # the next test shares the engine
        while engine.has_unfinished_requests():
            engine.step()
    (held,) = llm.collective_rpc(_kept_counts)
    assert held == {}


def test_prompt_logprobs_run_unpruned(llm, folder):
    """A request that asks for the prompt's log-probabilities needs every prompt token at the last layer: it runs
    as the dense model, beside pruned requests in the same step."""
    prompt = prompts()[7]
    ((want, want_lp),) = hf_reference(folder, [prompt], [4], pruned=False)
    outputs = llm.generate([{"prompt_token_ids": prompt}, {"prompt_token_ids": prompts()[6]}],
                           [greedy(4, logprobs=1, prompt_logprobs=1), greedy(4)], use_tqdm=False)
    got = outputs[0].outputs[0]
    assert list(got.token_ids) == want
    assert abs(got.logprobs[0][want[0]].logprob - want_lp[0]) < TOLERANCE
    assert len(outputs[0].prompt_logprobs) == len(prompt)
