"""The attention masks of pruned layers (sdtp_kernels.hf.masks) and of the masked simulation
(sdtp_kernels.hf.masked)."""
import pytest
import torch

from sdtp_kernels.hf.masked import keep_policy
from sdtp_kernels.hf.masks import format_mask, slot_mask


def test_slot_mask_is_causal_in_unpruned_columns_and_empty_slots_see_only_each_other():
    slots = torch.tensor([[-1, 3, 7], [0, 2, 5]])
    allowed = slot_mask(slots, slots)[:, 0]
    assert allowed[0].tolist() == [[True, False, False], [False, True, False], [False, True, True]]
    assert allowed[1].tolist() == [[True, False, False], [True, True, False], [True, True, True]]


def test_slot_mask_of_a_decode_step_hides_padded_keys():
    keys = torch.tensor([[-1, 3, 7, 9]])  # an empty slot, two kept prompt tokens, the new token (column 9)
    real = torch.tensor([[True, False, True, True]])  # column 3 is padding
    assert slot_mask(torch.tensor([[9]]), keys, real)[0, 0].tolist() == [[False, False, True, True]]


def test_format_mask():
    allowed = torch.tensor([[[[True, False]]]])
    assert format_mask(allowed, "sdpa", torch.float16) is allowed
    eager = format_mask(allowed, "eager", torch.float16)
    assert eager.dtype == torch.float16 and eager.tolist() == [[[[0.0, torch.finfo(torch.float16).min]]]]
    with pytest.raises(NotImplementedError, match="'flash_attention_2'"):
        format_mask(allowed, "flash_attention_2", torch.float16)


def test_keep_policy_hides_dropped_keys_from_later_queries_but_not_from_themselves():
    keep = torch.tensor([[True, False, True, True]])
    policy = keep_policy(keep, num_queries=4)[0, 0]
    assert policy.tolist() == [
        [True, False, False, False],
        [True, True, False, False],  # the dropped token still sees itself: no empty row
        [True, False, True, False],
        [True, False, True, True],
    ]
    assert keep_policy(keep, num_queries=1)[0, 0].tolist() == [[True, False, True, True]]


def test_keep_policy_of_soft_decisions_is_differentiable_and_agrees_when_hard():
    hard = torch.tensor([[1.0, 0.0, 1.0, 1.0]], requires_grad=True)
    policy = keep_policy(hard, num_queries=4)
    assert torch.equal(policy.bool(), keep_policy(hard.detach().bool(), num_queries=4))
    policy.sum().backward()
    # Key j is seen by the queries after it: d(sum)/d(keep_j) = number of later queries.
    assert hard.grad.tolist() == [[3.0, 2.0, 1.0, 0.0]]
