"""The PyTorch MNIST example's VAE (784 -> 400 ReLU -> (mu, logvar), K = 20; 20 -> 400 ReLU -> 784,
the sigmoid inside), untrained and seeded: the model of the diagnose benchmark with an encoder.
Untrained weights time the same work as trained ones; the benchmark does not judge the numbers."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class VAE(nn.Module):
    def __init__(self, latent_dim: int = 20, hidden: int = 400, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.fc1 = nn.Linear(784, hidden)
            self.fc21 = nn.Linear(hidden, latent_dim)
            self.fc22 = nn.Linear(hidden, latent_dim)
            self.fc3 = nn.Linear(latent_dim, hidden)
            self.fc4 = nn.Linear(hidden, 784)
        self.latent_dim, self.output = latent_dim, "probs"

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))


def vae() -> VAE:
    return VAE().eval()
