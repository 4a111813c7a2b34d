"""Decoders for tests/test_verdict.py (import paths ``verdict_models:<name>``; pytest puts tests/
on sys.path): one linear layer K = 8 -> 784 logits, seeded, whose weight scale sets how peaked
the posterior is, and so how degenerate the prior proposal's importance weights are."""

from __future__ import annotations

import torch
from torch import nn

K = 8


class Linear(nn.Module):
    latent_dim, output = K, "logits"

    def __init__(self, scale: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.net = nn.Linear(K, 784)
        with torch.no_grad():
            self.net.weight.copy_(torch.randn(784, K, generator=g) * scale)
            self.net.bias.zero_()

    def forward(self, z):
        return self.net(z)


def sharp_k8():
    """Logits of a few units per unit of z: p(x|z) peaks in a tiny region of the prior."""
    return Linear(3.0)


def gentle_k8():
    """Logits that barely depend on z: the posterior is close to the prior."""
    return Linear(0.01)
