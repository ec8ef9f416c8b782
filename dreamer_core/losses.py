"""Pure loss functions over tensors: KL terms of the three Dreamer generations.

Each function returns per-element losses (``[B, T]``) and leaves reduction and scaling to
the caller, so the world model can report every term before weighting it.

Stop-gradients follow the papers:
- DreamerV3 (eq. 5): dynamics loss ``max(free, KL(sg(post) || prior))`` trains the prior,
  representation loss ``max(free, KL(post || sg(prior)))`` trains the encoder/posterior;
  free nats are clipped per element, after summing over the S latents.
- DreamerV2 (KL balancing): ``alpha * KL(sg(post) || prior) + (1 - alpha) * KL(post || sg(prior))``.
- DreamerV1: one ``KL(post || prior)`` between diagonal Gaussians, with free nats.

Imports: torch only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def kl_categorical(post_logits: Tensor, prior_logits: Tensor) -> Tensor:
    """KL(post || prior) of independent categoricals, summed over the latents.

    Shapes:
        post_logits, prior_logits: [..., S, K] (log-probabilities or unnormalised logits)
        returns: [...]
    """
    post_log = F.log_softmax(post_logits, -1)
    prior_log = F.log_softmax(prior_logits, -1)
    return (post_log.exp() * (post_log - prior_log)).sum((-2, -1))


def kl_gaussian(post_mean: Tensor, post_std: Tensor, prior_mean: Tensor, prior_std: Tensor) -> Tensor:
    """KL(post || prior) of diagonal Gaussians, summed over the last axis.

    Shapes:
        all inputs: [..., S]      returns: [...]
    """
    var_ratio = (post_std / prior_std) ** 2
    mean_term = ((post_mean - prior_mean) / prior_std) ** 2
    return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


def kl_v3(post_logits: Tensor, prior_logits: Tensor, free_nats: float = 1.0) -> tuple[Tensor, Tensor]:
    """DreamerV3 dynamics and representation losses (unscaled; the paper scales 0.5 and 0.1).

    Returns:
        (dyn, rep), each ``[...]``; their values are equal, their gradients are not.
    """
    dyn = kl_categorical(post_logits.detach(), prior_logits)  # trains the prior (sg: post)
    rep = kl_categorical(post_logits, prior_logits.detach())  # trains the posterior (sg: prior)
    return dyn.clamp(min=free_nats), rep.clamp(min=free_nats)


def kl_v2(post_logits: Tensor, prior_logits: Tensor, alpha: float = 0.8, free_nats: float = 0.0) -> Tensor:
    """DreamerV2 KL balancing: the prior moves toward the posterior ``alpha`` of the way."""
    prior_term = kl_categorical(post_logits.detach(), prior_logits)
    post_term = kl_categorical(post_logits, prior_logits.detach())
    return alpha * prior_term.clamp(min=free_nats) + (1 - alpha) * post_term.clamp(min=free_nats)


def kl_v1(post_mean: Tensor, post_std: Tensor, prior_mean: Tensor, prior_std: Tensor,
          free_nats: float = 3.0) -> Tensor:
    """DreamerV1: one Gaussian KL with free nats (gradients reach both sides)."""
    return kl_gaussian(post_mean, post_std, prior_mean, prior_std).clamp(min=free_nats)
