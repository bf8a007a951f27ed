"""The pieces of the training loss: ranking pairs, Gumbel keep decisions, the policy attention mask."""
import math

import pytest
import torch

from sdtp_kernels.hf.masked import keep_policy
from sdtp_kernels.config import SDTPConfig
from sdtp_kernels.train.attention import POLICY_EPS, policy_attention_mask
from sdtp_kernels.train.gumbel import gumbel_noise, hard_gumbel_keep, next_alive
import sdtp_kernels.train.losses as losses
from sdtp_kernels.train.losses import keep_ratio_loss, masked_mse, ranking_loss
from sdtp_kernels.train.schedule import keep_fractions, protected_tokens


def test_ranking_loss_all_pairs_by_hand():
    scores = torch.tensor([[2.0, 0.0, 1.0, 5.0]])
    saliency = torch.tensor([[3.0, 1.0, 1.0, 9.0]])
    candidates = torch.tensor([[True, True, True, False]])
    # Ordered candidate pairs with different saliency: (0,1), (1,0), (0,2), (2,0); tokens 1 and 2 tie.
    expected = (2 * math.log1p(math.exp(-2.0)) + 2 * math.log1p(math.exp(-1.0))) / 4
    assert ranking_loss(scores, saliency, candidates, max_pairs=16).item() == pytest.approx(expected)


def test_ranking_loss_sampled_pairs_estimate_all_pairs():
    g = torch.Generator().manual_seed(0)
    scores, saliency = torch.randn(2, 40, generator=g), torch.randn(2, 40, generator=g)
    candidates = torch.rand(2, 40, generator=g) < 0.7
    exact = ranking_loss(scores, saliency, candidates, max_pairs=40 * 40)
    sampled = ranking_loss(scores, saliency, candidates, max_pairs=20000, generators=[g, g])
    assert sampled.item() == pytest.approx(exact.item(), rel=0.03)
    nothing = torch.zeros(2, 40, dtype=torch.bool)  # a batch without candidates: no pairs, no loss, no error
    assert ranking_loss(scores, saliency, nothing, max_pairs=100, generators=[g, g]).item() == 0


def test_ranking_pairs_are_every_candidate_pair_once_while_they_fit():
    # 200 tokens, 100 candidates: 9,900 ordered pairs fit in 16,384, although 200 * 200 do not.
    candidates = torch.zeros(1, 200, dtype=torch.bool)
    candidates[0, ::2] = True
    i, j, usable = losses._pairs(candidates, 16384, [torch.Generator().manual_seed(0)])
    pairs = {(a, b) for a, b in zip(i[usable].tolist(), j[usable].tolist())}
    assert usable.all() and i.shape[1] == len(pairs) == 100 * 99
    assert all(a % 2 == 0 and b % 2 == 0 and a != b for a, b in pairs)
    # One more candidate than fits: sampled, max_pairs draws among the candidates only.
    i, j, usable = losses._pairs(candidates, 100 * 99 - 1, [torch.Generator().manual_seed(0)])
    assert i.shape[1] == 100 * 99 - 1 and bool((i % 2 == 0).all() and (j % 2 == 0).all())


def test_masked_mse_compares_shapes_over_candidates_only():
    scores = torch.tensor([[1.0, 2.0, 3.0, 100.0], [0.0, 0.0, 5.0, 5.0]])
    saliency = torch.tensor([[-1.0, 0.0, 1.0, -50.0], [1.0, 1.0, 1.0, 1.0]])
    candidates = torch.tensor([[True, True, True, False], [True, True, False, False]])
    # Row 0 is saliency + 2 on its candidates, row 1 a constant on its candidates: no error either way.
    assert masked_mse(scores, saliency, candidates).item() == 0
    # Any per-row shift of the scores (the keep-ratio term's business) leaves the loss unchanged.
    g = torch.Generator().manual_seed(0)
    scores, saliency = torch.randn(3, 30, generator=g), torch.randn(3, 30, generator=g)
    candidates = torch.rand(3, 30, generator=g) < 0.6
    shifted = scores + torch.tensor([[5.0], [-3.0], [0.5]])
    unshifted = masked_mse(scores, saliency, candidates).item()
    assert masked_mse(shifted, saliency, candidates).item() == pytest.approx(unshifted)
    centred = [(scores[r][candidates[r]] - scores[r][candidates[r]].mean())
               - (saliency[r][candidates[r]] - saliency[r][candidates[r]].mean()) for r in range(3)]
    assert unshifted == pytest.approx(torch.cat(centred).pow(2).mean().item())


def test_hard_gumbel_keep_is_straight_through():
    logits = torch.randn(3, 50, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
    real = torch.ones(3, 50, dtype=torch.bool)
    real[1, :7] = False  # a left-padded row draws over its own tokens only

    def noise():
        return gumbel_noise(logits, real, [torch.Generator().manual_seed(row) for row in range(3)])

    keep = hard_gumbel_keep(logits, tau=0.5, noise=noise())
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(keep, hard_gumbel_keep(logits, tau=0.5, noise=noise()))
    alone = gumbel_noise(logits[1:2, 7:], real[1:2, 7:], [torch.Generator().manual_seed(1)])
    assert torch.equal(noise()[1, 7:], alone[0]) and not noise()[1, :7].any()  # independent of the padding
    keep.sum().backward()
    # d(soft keep)/d(logits): positive for KEEP, negative for DROP (0 where the softmax saturates in float32).
    assert torch.all(logits.grad[..., 0] >= 0) and torch.all(logits.grad[..., 1] <= 0)
    assert (logits.grad[..., 0] > 0).float().mean() > 0.9


def test_next_alive_keeps_protected_and_never_revives():
    alive = torch.tensor([[False, True, True, True, True, False]])
    protected = torch.tensor([[False, True, False, False, False, False]])
    drop_all = torch.tensor([0.0, 50.0]).expand(1, 6, 2)  # DROP wins whatever the noise
    after = next_alive(drop_all, alive, protected, tau=1.0)
    assert after.tolist() == [[0.0, 1.0, 0.0, 0.0, 0.0, 0.0]]
    keep_all = torch.tensor([50.0, 0.0]).expand(1, 6, 2)
    assert next_alive(keep_all, after, protected, 1.0).tolist() == after.tolist()


def test_protected_tokens_and_keep_fractions():
    config = SDTPConfig(num_sink=2, local_ratio=0.2, keep_ratio=0.5)
    # Row: 2 padding, a 10-token prompt, a 2-token answer.
    prompt = torch.tensor([[False] * 2 + [True] * 10 + [False] * 2])
    real = torch.tensor([[False] * 2 + [True] * 12])
    expected = [False] * 2 + [True] * 2 + [False] * 6 + [True] * 2 + [True] * 2
    assert protected_tokens(config, prompt, real).tolist() == [expected]
    # Stage 1 keeps ceil(0.5 * 10) = 5, stage 2 ceil(0.25 * 10) = 3, raised to the 4 protected.
    torch.testing.assert_close(keep_fractions(config, prompt, 2), torch.tensor([[0.5], [0.4]]))
    assert keep_ratio_loss(torch.tensor([[0.7], [0.4]]), torch.tensor([[0.5], [0.4]])).item() == pytest.approx(0.02)


def test_policy_mask_is_softmax_with_policy():
    """softmax(scores + mask) is DynamicViT's softmax_with_policy, exp(s) * policy / sum(exp(s) * policy), up to
    POLICY_EPS: in value and in its gradient with respect to the keep decisions."""
    g = torch.Generator().manual_seed(0)
    B, N = 2, 7
    scores = torch.randn(B, 1, N, N, generator=g, dtype=torch.float64)
    real = torch.ones(B, N, dtype=torch.bool)
    real[1, :2] = False
    keep = torch.tensor([[1.0, 0, 1, 1, 0, 1, 1], [0.0, 0, 1, 0, 1, 1, 1]], dtype=torch.float64, requires_grad=True)
    policy = keep_policy(keep * real, N)  # causal, padding and dropped keys 0; a token always sees itself

    ours = (scores + policy_attention_mask(policy, real, torch.float64)).softmax(-1)
    weights = scores.exp() * policy
    dynamic_vit = weights / weights.sum(-1, keepdim=True)
    torch.testing.assert_close(ours, dynamic_vit, rtol=0, atol=10 * POLICY_EPS)
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    assert torch.all(ours[..., ~causal] == 0) and torch.all(ours[1, ..., :2][..., 2:, :] == 0)  # exact zeros

    target = torch.randn(B, 1, N, N, generator=g, dtype=torch.float64)
    (grad_ours,) = torch.autograd.grad((ours * target).sum(), keep, retain_graph=True)
    (grad_ref,) = torch.autograd.grad((dynamic_vit * target).sum(), keep)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-4, atol=10 * POLICY_EPS)
    assert grad_ours[0, 1].abs() > 1e-3  # a dropped key's decision learns


def test_the_training_mask_keeps_a_sliding_window_structural():
    """Outside a sliding window a key is masked as transformers masks it (the dtype's minimum), not as a dropped
    decision (log eps): no gradient flows to decisions the window already excludes."""
    policy = keep_policy(torch.ones(1, 6), 6, window=2)
    mask = policy_attention_mask(policy, torch.ones(1, 6, dtype=torch.bool), torch.float32, window=2)
    minimum = torch.finfo(torch.float32).min
    assert mask[0, 0, 5, 3] == minimum and abs(mask[0, 0, 5, 4]) < 1e-5 and mask[0, 0, 2, 0] == minimum


def _saved_bytes(fn, inputs):
    """Bytes of the distinct tensors autograd saves for the backward of fn() (outside checkpointed regions), beyond
    the storages of `inputs`, which exist anyway."""
    own = {t.untyped_storage().data_ptr() for t in inputs}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(saved.values())


@pytest.mark.parametrize("task", ["lm", "kl"])
def test_task_losses_keep_no_float32_copy_of_the_logits(task, monkeypatch):
    """Chunked over positions and recomputed in the backward, the task losses give the unchunked values and
    gradients, while the float32 logits they make live one chunk at a time: beyond the logits themselves they save
    next to nothing for the backward (unchunked: float32 copies, 2x (lm) to 4x (kl) the bf16 logits' size)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 24, 1000, generator=g).bfloat16().requires_grad_(True)
    teacher = torch.randn(2, 24, 1000, generator=g).bfloat16()
    targets = torch.randint(0, 1000, (2, 24), generator=g)
    targets[0, :5] = -100
    size = logits.numel() * logits.element_size()

    def loss():
        if task == "lm":
            return losses.lm_loss_rows(logits, targets).sum()
        return losses.kl_rows(logits, teacher, targets).sum()

    whole, whole_bytes = _saved_bytes(loss, (logits, teacher, targets))
    (whole_grad,) = torch.autograd.grad(whole, logits)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 2 * 1000 * 5)  # chunks of 5 positions
    chunked, chunked_bytes = _saved_bytes(loss, (logits, teacher, targets))
    (chunked_grad,) = torch.autograd.grad(chunked, logits)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked_grad, whole_grad, rtol=0, atol=0)
    assert whole_bytes >= 2 * size
    assert chunked_bytes < size / 100
