"""Neural-network layer of dreamer-core: distributions, layers, encoders/decoders and the RSSM.

Imports only torch, gymnasium and its own modules (never anything above nets/ in
dreamer_core; see docs/architecture.md).
"""

from dreamer_core.nets.distributions import (
    BernoulliDist,
    BoundedNormal,
    GaussianLatent,
    MSEDist,
    OneHotDist,
    SymlogMSEDist,
    TwoHotDist,
    kl_categorical,
    kl_gaussian,
    symexp,
    symexp_bins,
    symlog,
    two_hot,
)
from dreamer_core.nets.encoders import MultiDecoder, MultiEncoder, preprocess_image
from dreamer_core.nets.layers import MLP, BlockLinear, init_weights, zero_init
from dreamer_core.nets.rssm import RSSM, RSSMConfig, RSSMState

__all__ = [
    "MLP",
    "RSSM",
    "BernoulliDist",
    "BlockLinear",
    "BoundedNormal",
    "GaussianLatent",
    "MSEDist",
    "MultiDecoder",
    "MultiEncoder",
    "OneHotDist",
    "RSSMConfig",
    "RSSMState",
    "SymlogMSEDist",
    "TwoHotDist",
    "init_weights",
    "kl_categorical",
    "kl_gaussian",
    "preprocess_image",
    "symexp",
    "symexp_bins",
    "symlog",
    "two_hot",
    "zero_init",
]
