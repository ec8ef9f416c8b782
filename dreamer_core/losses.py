"""Pure loss functions over tensors: KL terms of the three Dreamer generations, and the
return targets of the actor-critic (lambda-returns in imagination and on replayed data).

Each function returns per-element losses (``[B, T]``) and leaves reduction and scaling to
the caller, so the world model can report every term before weighting it.

Stop-gradients follow the papers:
- DreamerV3 (eq. 5): dynamics loss ``max(free, KL(sg(post) || prior))`` trains the prior,
  representation loss ``max(free, KL(post || sg(prior)))`` trains the encoder/posterior;
  free nats are clipped per element, after summing over the S latents.
- DreamerV2 (KL balancing): ``alpha * KL(sg(post) || prior) + (1 - alpha) * KL(post || sg(prior))``.
- DreamerV1: one ``KL(post || prior)`` between diagonal Gaussians, with free nats.

Return targets (DreamerV3 eq. 7, Sutton & Barto 12.3)::

    R_h = r_{h+1} + disc_h * ((1 - lam) * v_{h+1} + lam * R_{h+1}),   R_H = v_H

where ``r_{h+1}`` is the reward predicted at the state reached by action ``a_h`` (rewards
arrive with the state they lead to, as in data/schema.py) and ``disc_h = gamma * cont_{h+1}``.

The closed-form KL divergences themselves live in nets/distributions.py (one implementation,
upcasting half precision); this module only combines them.

Imports: torch, nets.distributions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from dreamer_core.nets.distributions import kl_categorical, kl_gaussian

Tensor = torch.Tensor


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


# --- actor-critic targets ----------------------------------------------------------------------


def lambda_return(reward: Tensor, value: Tensor, disc: Tensor, lam: float) -> Tensor:
    """TD(lambda) targets computed backwards over the horizon (DreamerV3 eq. 7).

    Args:
        reward: ``r_{h+1}``, the reward of the transition out of state h.
        value: critic values of the states 0..H (the last one bootstraps).
        disc: ``gamma * cont_{h+1}``: the discount applied after the transition out of h.
        lam: lambda in [0, 1]; 0 gives one-step TD targets, 1 Monte-Carlo returns + bootstrap.

    Shapes:
        reward, disc: [N, H]      value: [N, H + 1]      returns: [N, H]
    """
    N, H = reward.shape
    assert value.shape == (N, H + 1) and disc.shape == (N, H), (reward.shape, value.shape, disc.shape)
    # Precompute the part that does not depend on the recursion, so the loop is one FMA per step.
    interm = reward + disc * (1 - lam) * value[:, 1:]  # [N, H]
    returns = [value[:, -1]]
    for h in reversed(range(H)):
        returns.append(interm[:, h] + disc[:, h] * lam * returns[-1])
    return torch.stack(returns[1:][::-1], 1)  # [N, H]


def replay_lambda_return(reward: Tensor, is_terminal: Tensor, is_last: Tensor, boot: Tensor,
                         gamma: float, lam: float) -> Tensor:
    """Lambda-returns along a replayed window of real data (the DreamerV3 2025 "repval" target).

    Row t of the window holds the reward and terminal flag received on arriving at obs t
    (data/schema.py). ``boot[t]`` is a value estimate for state t (the imagined return that
    starts there). The return of row t follows the real transition t -> t+1 and bootstraps
    from ``boot`` with weight ``1 - lam``; at the window's last row, and at an episode's last
    row (``is_last``: no real transition follows in this window), it is ``boot`` itself.

    Shapes:
        reward, is_terminal, is_last, boot: [B, T]      returns: [B, T]
    """
    B, T = reward.shape
    live = gamma * (1.0 - is_terminal[:, 1:].float())  # [B, T-1]: discount into row t+1
    last = is_last.bool()
    returns = [boot[:, -1]]
    for t in reversed(range(T - 1)):
        ret = reward[:, t + 1] + live[:, t] * ((1 - lam) * boot[:, t + 1] + lam * returns[-1])
        returns.append(torch.where(last[:, t], boot[:, t], ret))
    return torch.stack(returns[::-1], 1)  # [B, T]


def discount_weights(disc: Tensor, first: Tensor, gamma: float) -> Tensor:
    """How much each imagined state counts: the probability of still being in the episode,
    discounted (DreamerV3 2023: ``cumprod(disc) / gamma``).

    Args:
        disc: ``gamma * cont_{h+1}`` for h = 0..H-1.
        first: ``cont_0`` of the start state (0 when the start row itself is terminal).

    Shapes:
        disc: [N, H]      first: [N]      returns: [N, H + 1]
    """
    return torch.cat([first[:, None], first[:, None] * torch.cumprod(disc, 1)], 1)  # [N, H+1]


def percentile_range(values: Tensor, low: float, high: float) -> tuple[Tensor, Tensor]:
    """The ``low``-th and ``high``-th percentiles (in [0, 100]) of all elements (no sync)."""
    flat = values.detach().flatten().float()
    q = torch.tensor([low / 100.0, high / 100.0], device=flat.device)
    lo, hi = torch.quantile(flat, q)
    return lo, hi


def balance_weights(magnitudes: Mapping[str, float], priority: Sequence[str],
                    tied: Mapping[str, str] | None = None) -> dict[str, float]:
    """Calibrated loss weights: the weighted terms fall in ``priority`` order, spread evenly
    over one order of magnitude (the first at the top; for n terms the i-th weighted term is
    ``10^(-i/n)`` of the first), with their total magnitude unchanged. Terms not in
    ``priority`` come last, by name; a term in ``tied`` takes the weight of the term it is
    tied to (e.g. a VAE's KL tied to its reconstruction) and is not balanced itself.

    Example: magnitudes {recon: 2000, reward: 3, cont: 0.1} -> weighted values in the ratio
    1 : 10^(-1/3) : 10^(-2/3), summing to 2003.1.
    """
    tied = tied or {}
    free = {k: v for k, v in magnitudes.items() if k not in tied}
    order = [k for k in priority if k in free] + sorted(k for k in free if k not in priority)
    n = len(order)
    targets = {k: 10.0 ** (-i / n) for i, k in enumerate(order)}
    scale = sum(free.values()) / sum(targets.values())
    weights = {k: scale * targets[k] / max(free[k], 1e-8) for k in order}
    for term, anchor in tied.items():
        if term in magnitudes:
            weights[term] = weights.get(anchor, 1.0)
    return weights
