"""`SaliencyPredictor`: the paper's per-stage token scorer, RMSNorm -> Linear(D, H) -> GELU -> Linear(H, 2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import saliency_score


class SaliencyPredictor(nn.Module):
    """Two-way classifier of every token: logit KEEP against logit DROP (DynamicViT's order: index 0 keeps).

    `logits(x)` is the differentiable form for training; `score(x)` is the keep-minus-drop log-odds through the fused
    `saliency_score` op for inference. Both compute in float32 whatever the dtype of x or of the weights."""

    KEEP = 0
    DROP = 1
    EPS = 1e-6

    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.norm_weight = nn.Parameter(torch.ones(hidden_size))
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, 2)

    @property
    def hidden_size(self) -> int:
        return self.norm_weight.shape[0]

    @property
    def mlp_hidden(self) -> int:
        return self.fc1.out_features

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[..., 2] float32 logits (KEEP, DROP)."""
        x = x.to(self.norm_weight.device, torch.float32)
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.EPS) * self.norm_weight.float()
        h = F.gelu(F.linear(normed, self.fc1.weight.float(), self.fc1.bias.float()))
        return F.linear(h, self.fc2.weight.float(), self.fc2.bias.float())

    @classmethod
    def log_odds(cls, logits: torch.Tensor) -> torch.Tensor:
        """The keep-minus-drop score of `logits(x)`: what `score(x)` returns, differentiable."""
        return logits[..., cls.KEEP] - logits[..., cls.DROP]

    def score_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """(norm_weight, w1, b1, w2, b2, eps) of `saliency_score`: the second layer folded into one keep-minus-drop
        row, so the score is logits[KEEP] - logits[DROP] (the difference taken in float32, as `logits` computes)."""
        fc2_weight, fc2_bias = self.fc2.weight.float(), self.fc2.bias.float()
        w2 = fc2_weight[self.KEEP] - fc2_weight[self.DROP]
        b2 = fc2_bias[self.KEEP] - fc2_bias[self.DROP]
        return self.norm_weight, self.fc1.weight, self.fc1.bias, w2, b2, self.EPS

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 keep-minus-drop log-odds of shape x.shape[:-1], on the predictor's device."""
        # The op reads float32, float16 and bfloat16; any other floating x (float64) is read as float32, as logits do.
        op_dtypes = (torch.float32, torch.float16, torch.bfloat16)
        x = x.to(self.norm_weight.device, x.dtype if x.dtype in op_dtypes else torch.float32)
        return saliency_score(x, *self.score_params())

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, mlp_hidden={self.mlp_hidden}"
