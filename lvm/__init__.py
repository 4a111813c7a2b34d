"""lvm: latent variable models, Monte Carlo estimators of log p(x), and ground truth."""

from . import checkpoint, data, encoder, estimators, numerics, reference, rng, runtime, train, zoo
from .encoder import EncoderProposal, GaussianEncoder, has_encoder
from .errors import InputError
from .estimators import Estimate, draw, log_space, prob_space
from .model import BernoulliLVM, LatentVariableModel, LinearGaussianLVM, seed_decoder
from .numerics import DTYPES, dtype_facts, logsumexp
from .reference import Reference, log_marginal

__version__ = "0.1.0"

__all__ = [
    "BernoulliLVM", "DTYPES", "EncoderProposal", "Estimate", "GaussianEncoder", "InputError",
    "LatentVariableModel", "LinearGaussianLVM", "Reference", "checkpoint", "data", "draw", "dtype_facts",
    "encoder", "estimators", "has_encoder", "log_marginal", "log_space", "logsumexp", "numerics",
    "prob_space", "reference", "rng", "runtime", "seed_decoder", "train", "zoo",
]
