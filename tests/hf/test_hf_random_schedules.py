"""Random schedules, prompts and decoding on every family: the other integration tests run one schedule over one
prompt layout; here each family and attention implementation gets schedules drawn at random (stages that prune
nothing, keep ratios down to 0.01, more sinks than tokens), rows of 1 to 48 tokens, windows of 2 to 50 tokens and
decoding strategies, and every case must equal the masked simulation (docs/ARCHITECTURE.md §4.4), or, for a
continuation, the same tokens decoded one by one.

Each case is drawn from its test id's seed, so a run draws the same cases and a failure names the one to rerun: two
float paths are compared (the native ops in the pruned forward, python_ref's in the simulation), and a near-tie at
the kept/dropped boundary could legitimately fall either way. SDTP_RANDOM_CASES=n draws n cases per family and
attention implementation instead of one."""
import copy
import dataclasses
import os
import random

import pytest
import torch
from hf_tiny import LAYERS, VARIANTS, VOCAB, WINDOWED, spread_predictors, tiny_model
from masked_reference import assert_kept_as_simulated, masked_forward, masked_generate, reference_decide

from sdtp_kernels.config import SDTPConfig
from sdtp_kernels.hf import apply_sdtp, prefill_prunes, protected_tail, sdtp_predictors
from sdtp_kernels.hf.masked import MaskedPruning
from sdtp_kernels.hf.model_call import output_cache

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
CASES = [(name, attn, seed) for name, attn in VARIANTS for seed in range(int(os.environ.get("SDTP_RANDOM_CASES", "1")))]


@dataclasses.dataclass
class Case:
    name: str
    attn: str
    window: dict  # the model's sliding-window settings (empty: the family's default)
    config: SDTPConfig
    ids: torch.Tensor  # [B, W], left-padded with 0
    mask: torch.Tensor  # [B, W]
    new_tokens: int
    seed: int
    draw: random.Random  # for what a test draws on top

    @classmethod
    def drawn(cls, name: str, attn: str, seed: int, test: str) -> "Case":
        r = random.Random(f"{test}/{name}/{attn}/{seed}")
        window = {}
        # Windows of one token are left out: transformers' own cached decoding disagrees with its uncached forward
        # there (seen on transformers 5.24).
        if name in WINDOWED and r.random() < 0.6:
            window = WINDOWED[name](r.randint(2, 50))
        start, step = r.randint(1, LAYERS - 1), r.randint(1, 4)
        fit = len(range(start, LAYERS, step))
        config = SDTPConfig(
            start_layer=start, layer_step=step, num_stages=r.choice([None, r.randint(1, fit)]),
            keep_ratio=r.choice([0.01, 0.1, 0.5, 0.7, 0.9, 0.99, 1.0, round(r.uniform(0.01, 1.0), 3)]),
            num_sink=r.randint(0, 6), local_ratio=r.choice([0.0, 0.1, 0.5, round(r.uniform(0.0, 1.0), 3)]))
        width = r.randint(1, 48)
        lengths = [r.randint(1, width) for _ in range(r.randint(1, 4))]
        lengths[r.randrange(len(lengths))] = width  # one row fills the batch
        # No token twice in a row: a run of one token gives its positions equal hidden states, an exact tie of scores
        # that rounding breaks one way in the native ops and the other in the reference.
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, length in enumerate(lengths):
            token = r.randrange(1, VOCAB)
            for column in range(width - length, width):
                ids[row, column] = token = 1 + (token + r.randrange(VOCAB - 2)) % (VOCAB - 1)
            mask[row, width - length:] = 1
        return cls(name, attn, window, config, ids, mask, r.randint(1, 8), seed, r)

    def tokens(self, count: int) -> torch.Tensor:
        """[B, count] random tokens, drawn from the case's generator (for a continuation or a next turn)."""
        return torch.tensor([[self.draw.randrange(1, VOCAB) for _ in range(count)] for _ in range(self.ids.shape[0])])

    def model(self):
        # tiny_model seeds torch's generator, which then also draws the predictors and their noise
        model = apply_sdtp(tiny_model(self.name, self.attn, seed=self.seed, **self.window), self.config)
        return spread_predictors(model, 0.5)


@pytest.fixture(params=CASES, ids=lambda c: "-".join(map(str, c)))
def case(request) -> Case:
    """A case for each (family, attention, seed), drawn anew for each test."""
    name, attn, seed = request.param
    return Case.drawn(name, attn, seed, request.node.originalname)


def test_prefill_and_greedy_decoding_equal_the_masked_simulation(case):
    model = case.model()
    with torch.no_grad():
        pruned = model(case.ids, attention_mask=case.mask, use_cache=True)
    simulated, alive = masked_forward(model, case.config, sdtp_predictors(model), case.ids, case.mask, use_cache=True)
    assert_kept_as_simulated(output_cache(pruned), alive)
    torch.testing.assert_close(pruned.logits[:, -1], simulated.logits[:, -1], atol=1e-4, rtol=1e-4)
    expected, _ = masked_generate(model, case.config, sdtp_predictors(model), case.ids, case.mask,
                                  max_new_tokens=case.new_tokens, do_sample=False)
    with torch.no_grad():
        got = model.generate(case.ids, attention_mask=case.mask, max_new_tokens=case.new_tokens, do_sample=False)
    assert torch.equal(got, expected)


def test_beam_search_and_sampling_equal_the_masked_simulation(case):
    strategy = case.draw.choice(["beam", "sample"])
    model = case.model()
    options = dict(num_beams=3, do_sample=False) if strategy == "beam" else dict(do_sample=True, top_k=20)
    torch.manual_seed(case.seed)
    expected, _ = masked_generate(model, case.config, sdtp_predictors(model), case.ids, case.mask,
                                  max_new_tokens=case.new_tokens, **options)
    torch.manual_seed(case.seed)
    with torch.no_grad():
        got = model.generate(case.ids, attention_mask=case.mask, max_new_tokens=case.new_tokens, **options)
    assert torch.equal(got, expected)


def test_protected_tails_survive_and_equal_the_masked_simulation(case):
    """What a harness log-likelihood runs: each row's last tails[b] tokens kept at every stage."""
    model = case.model()
    lengths = case.mask.sum(1).tolist()
    tails = [case.draw.randint(0, n) for n in lengths]
    with torch.no_grad(), protected_tail(model, tails):
        pruned = model(case.ids, attention_mask=case.mask, use_cache=True)
    decide = reference_decide(case.config, sdtp_predictors(model), tails=tails)
    with torch.no_grad(), MaskedPruning(model, case.config, decide) as simulation:
        simulated = model(input_ids=case.ids, attention_mask=case.mask)
    assert_kept_as_simulated(output_cache(pruned), simulation.alive)
    width = case.ids.shape[1]
    for row, tail in enumerate(tails):
        last = max(tail, 1)  # the last token is always kept
        columns = torch.arange(width - last, width)  # left padding: the row's last tokens
        assert simulation.alive[-1][row, columns].all(), f"row {row} lost part of its tail of {tail}"
        # The kept tokens' logits come back right-aligned: the tail's are each row's last columns.
        torch.testing.assert_close(pruned.logits[row, -last:], simulated.logits[row, columns], atol=1e-4, rtol=1e-4)


def test_right_padded_prefill_gives_each_rows_last_token_the_simulations_logits(case):
    model = case.model()
    lengths = case.mask.sum(1)
    ids, mask = case.ids.clone(), case.mask.clone()
    for row, length in enumerate(lengths.tolist()):  # the same rows, padded on the right
        ids[row] = torch.roll(case.ids[row], length)
        mask[row] = torch.roll(case.mask[row], length)
    with torch.no_grad():
        pruned = model(ids, attention_mask=mask).logits
    simulated, _ = masked_forward(model, case.config, sdtp_predictors(model), ids, mask)
    rows = torch.arange(len(lengths))
    # A prefill that prunes returns right-aligned logits; one that prunes nothing keeps the input's layout.
    last = pruned[:, -1] if prefill_prunes(model, lengths.tolist()) else pruned[rows, lengths - 1]
    torch.testing.assert_close(last, simulated.logits[rows, lengths - 1], atol=1e-4, rtol=1e-4)


def test_a_continuation_over_a_pruned_cache_equals_its_tokens_decoded_one_by_one(case):
    """A multi-token forward over a pruned cache (a chat's next turn reusing the cache) runs as a decode of several
    tokens: the same logits as feeding them one at a time, and the same cache for the token after."""
    model = case.model()
    turn = case.tokens(case.new_tokens)
    mask = torch.cat([case.mask, torch.ones_like(turn)], 1)
    width = case.ids.shape[1]
    with torch.no_grad():
        at_once_cache = output_cache(model(case.ids, attention_mask=case.mask, use_cache=True))
        one_by_one_cache = copy.deepcopy(at_once_cache)
        at_once = model(turn, attention_mask=mask, past_key_values=at_once_cache).logits
        one_by_one = torch.cat([
            model(turn[:, i:i + 1], attention_mask=mask[:, :width + i + 1], past_key_values=one_by_one_cache).logits
            for i in range(case.new_tokens)], 1)
        torch.testing.assert_close(at_once, one_by_one, atol=1e-4, rtol=1e-4)
        last = case.tokens(1)
        mask = torch.cat([mask, torch.ones_like(last)], 1)
        torch.testing.assert_close(model(last, attention_mask=mask, past_key_values=at_once_cache).logits,
                                   model(last, attention_mask=mask, past_key_values=one_by_one_cache).logits,
                                   atol=1e-4, rtol=1e-4)


def test_a_next_turn_generated_over_the_pruned_cache_equals_greedy_decoding_by_hand(case):
    """generate() given the pruned cache of an earlier generate() (a chat's next turn) feeds the tokens the cache
    lacks as one decode, then decodes greedily: the same tokens as those forwards made by hand."""
    model = case.model()
    with torch.no_grad():
        first = model.generate(case.ids, attention_mask=case.mask, max_new_tokens=case.new_tokens, do_sample=False,
                               return_dict_in_generate=True)
        cache = output_cache(first)
        by_hand_cache = copy.deepcopy(cache)
        turn = case.tokens(3)
        sequence = torch.cat([first.sequences, turn], 1)
        mask = torch.cat([case.mask, torch.ones_like(first.sequences[:, case.ids.shape[1]:]), torch.ones_like(turn)], 1)
        got = model.generate(sequence, attention_mask=mask, past_key_values=cache, max_new_tokens=case.new_tokens,
                             do_sample=False)[:, sequence.shape[1]:]
        inputs = sequence[:, by_hand_cache.get_seq_length():]
        tokens = []
        for _ in range(case.new_tokens):
            positions = (mask.cumsum(1) - 1).clamp(min=0)[:, -inputs.shape[1]:]  # as generate() derives them
            logits = model(inputs, attention_mask=mask, position_ids=positions, past_key_values=by_hand_cache).logits
            inputs = logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(inputs)
            mask = torch.cat([mask, torch.ones_like(inputs)], 1)
    assert torch.equal(got, torch.cat(tokens, 1))
