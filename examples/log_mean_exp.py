"""The log-mean-exp that research code writes, as an outside estimator for lvm-bench.

    lvm-bench run --estimator log_space,log_mean_exp:log_mean_exp ...   (with examples/ on PYTHONPATH)

It draws with ``lvm.draw(model, n, seed=seed)``: the suite's own draws for that seed, so the
float64 replay that separates rounding error from Monte Carlo error sees the same z.
"""

import math

import torch

import lvm


def log_mean_exp(model, x, n_samples, *, dtype, device="cpu", seed=0):
    z = lvm.draw(model, n_samples, seed=seed)
    ll = model.log_likelihood(x.to(device), z.to(device), dtype)
    return torch.logsumexp(ll, dim=-1) - math.log(n_samples)
