import torch
import torch.nn.functional as F


def saliency_score(hidden, norm_weight, w1, b1, w2, b2, eps=1e-6, compute_dtype=torch.float32):
    """gelu_erf(rmsnorm(hidden) * norm_weight @ w1.T + b1) @ w2 + b2, unfused, every step in `compute_dtype`
    (float32 for the contract, float64 as the exact reference, the input dtype to measure plain PyTorch's error).
    Returns float32 of shape hidden.shape[:-1]."""
    x = hidden.to(compute_dtype)
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.to(compute_dtype)
    h = F.gelu(F.linear(normed, w1.to(compute_dtype), b1.to(compute_dtype)))
    b2 = torch.as_tensor(b2, device=hidden.device).to(compute_dtype).reshape(())
    return (h @ w2.to(compute_dtype) + b2).float()
