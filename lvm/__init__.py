"""lvm: latent variable models, Monte Carlo estimators of log p(x), and ground truth."""

from . import (
    checkpoint,
    data,
    draws,
    encoder,
    estimators,
    numerics,
    reductions,
    reference,
    rng,
    runtime,
    train,
    zoo,
)
from .draws import draw
from .encoder import EncoderProposal, GaussianEncoder, has_encoder
from .errors import InputError
from .estimators import log_space, prob_space
from .model import BernoulliLVM, LinearGaussianLVM, seed_decoder
from .numerics import DTYPES, dtype_facts, logsumexp
from .protocol import LatentVariableModel
from .reductions import Estimate
from .reference import Reference, log_marginal

__version__ = "0.1.0"

__all__ = [
    "BernoulliLVM", "DTYPES", "EncoderProposal", "Estimate", "GaussianEncoder", "InputError",
    "LatentVariableModel", "LinearGaussianLVM", "Reference", "checkpoint", "data", "draw", "dtype_facts",
    "draws", "encoder", "estimators", "has_encoder", "log_marginal", "log_space", "logsumexp", "numerics",
    "prob_space", "reductions", "reference", "rng", "runtime", "seed_decoder", "train", "zoo",
]
