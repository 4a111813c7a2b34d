"""Seeded draws of z, and the one per-digit loop that turns a chunk of them into decoder terms.

Draws z are float64 from a seeded stream, made in fixed blocks (:data:`BLOCK`) so the chunk
size never changes them, then cast to the working dtype by the caller. Replaying the same
seed at float64 separates rounding error from Monte Carlo error.

A chunk of draws is a :class:`Drawn`: z [c, K] from the prior, one set for every digit, or
z [B, c, K] from a proposal, each digit b its own draws of q(z|x_b), with log p(z) and
log q(z|x_b) [B, c]. :func:`digit_terms` is the one loop over digits: it runs the decoder's
terms once for prior draws, or once per digit on that digit's draws, and stacks them;
:func:`proposal_terms` walks a source of chunks (:class:`Draws`, or the encoder's per-digit
streams) through it. The estimators' kernels, the shared pass, the reference's importance
sampling and the encoder's bounds all get their per-digit terms here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from . import rng
from .errors import check_int
from .likelihoods import std_normal_log_prob

BLOCK = 4096  # draws per seeded block: fixed, so results never depend on chunk_size


@dataclass(frozen=True)
class Drawn:
    """A chunk of float64 draws: z [c, K] from the prior (``log_p`` and ``log_q`` None), or
    z [B, c, K] from a proposal with log p(z) and log q(z|x_b), [B, c] each."""

    z: torch.Tensor
    log_p: torch.Tensor | None = None
    log_q: torch.Tensor | None = None

    @property
    def per_digit(self) -> bool:
        """Whether each digit has draws of its own (a proposal) rather than the prior's shared ones."""
        return self.log_q is not None

    @property
    def log_ratio(self) -> torch.Tensor | None:
        """log p(z) - log q(z|x_b), [B, c] in float64: the importance correction (None for the prior)."""
        return None if self.log_q is None else self.log_p - self.log_q

    def part(self, lo: int, hi: int) -> Drawn:
        """Draws lo to hi of every digit."""
        if not self.per_digit:
            return Drawn(self.z[lo:hi])
        return Drawn(self.z[:, lo:hi], self.log_p[:, lo:hi], self.log_q[:, lo:hi])

    def rows(self, idx: torch.Tensor) -> Drawn:
        """The draws of the digits ``idx`` (proposal draws only)."""
        return Drawn(self.z[idx], self.log_p[idx], self.log_q[idx])

    @staticmethod
    def cat(parts: list[Drawn]) -> Drawn:
        """Consecutive chunks of the same digits' draws, joined."""
        z = torch.cat([d.z for d in parts], dim=-2)
        if not parts[0].per_digit:
            return Drawn(z)
        return Drawn(z, *(torch.cat([getattr(d, f) for d in parts], dim=-1) for f in ("log_p", "log_q")))


class Source(Protocol):
    """Anything that yields chunks of draws: :class:`Draws`, the encoder's per-digit streams."""

    def chunks(self, chunk_size: int) -> Iterator[Drawn]: ...


class Draws:
    """Seeded float64 draws from the prior (or a proposal), in fixed blocks.

    ``take(start, stop)`` and ``chunks(c)`` give :class:`Drawn`: z [c, K] from the prior, or
    [B, c, K] from a proposal with log p(z) and log q(z|x) [B, c] in float64.
    """

    def __init__(self, model, n: int, seed: int, proposal=None):
        self.model, self.n, self.seed, self.proposal = model, n, check_int("seed", seed), proposal
        self._cache: tuple[int, Drawn] | None = None

    def _block(self, b: int) -> Drawn:
        if self._cache is not None and self._cache[0] == b:
            return self._cache[1]
        size = min(BLOCK, self.n - b * BLOCK)
        g = rng.generator(self.seed, b)  # block b of this seed's stream
        if self.proposal is None:
            block = Drawn(self.model.sample_prior(size, g))
        else:
            z = self.proposal.sample(size, g)
            log_prior = getattr(self.model, "log_prior", std_normal_log_prob)
            block = Drawn(z, log_prior(z), self.proposal.log_prob(z))
        self._cache = (b, block)
        return block

    def take(self, start: int, stop: int) -> Drawn:
        """Draws start to stop of the stream."""
        return Drawn.cat([self._block(b).part(max(start - b * BLOCK, 0), min(stop - b * BLOCK, BLOCK))
                          for b in range(start // BLOCK, (stop - 1) // BLOCK + 1)])

    def chunks(self, chunk_size: int) -> Iterator[Drawn]:
        for start in range(0, self.n, chunk_size):
            yield self.take(start, min(start + chunk_size, self.n))


def draw(model, n_samples: int, *, seed: int = 0, proposal=None) -> torch.Tensor:
    """The exact float64 draws an estimator with this seed uses (for replays)."""
    return Draws(model, n_samples, seed, proposal).take(0, n_samples).z


Terms = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | dict[str, torch.Tensor]"]


def digit_terms(terms: Terms, x: torch.Tensor, drawn: Drawn):
    """The decoder's terms of a chunk of draws, [B, c] (or a dict of them, as ``terms`` gives).

    ``terms(x_rows, z)`` gives [b, c] for b rows of x and c draws z [c, K] (or a dict of such).
    Prior draws serve every digit: one call on all of x. Proposal draws are each digit's own:
    one call per digit b on ``x[b:b + 1]`` and ``z[b]``, the rows stacked. The correction
    log p(z) - log q(z|x) is the caller's to apply (``drawn.log_ratio``), in its own dtype.
    """
    if not drawn.per_digit:
        return terms(x, drawn.z)
    rows = [terms(x[b:b + 1], drawn.z[b]) for b in range(len(x))]
    if isinstance(rows[0], dict):
        return {k: torch.stack([r[k][0] for r in rows]) for k in rows[0]}
    return torch.stack([r[0] for r in rows])


def proposal_terms(source: Source, x: torch.Tensor, chunk_size: int,
                   terms: Terms) -> Iterator[tuple[Drawn, object]]:
    """For each chunk of ``source``'s draws: (the draws, their :func:`digit_terms`)."""
    for drawn in source.chunks(chunk_size):
        yield drawn, digit_terms(terms, x, drawn)
