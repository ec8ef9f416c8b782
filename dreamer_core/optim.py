"""Optimizers of the DreamerV3 recipes: Adam with global-norm clipping (2023 paper) and
LaProp with adaptive gradient clipping (2025 code).

LaProp (Ziyin et al., 2020) normalises the gradient by its running RMS *before* momentum,
unlike Adam, which normalises the momentum. AGC (Brock et al., 2021) clips each parameter
tensor's gradient to ``clip * max(||param||, floor)``.

Stages build optimizers with :func:`make_optimizer` and clip with :func:`clip_gradients`.

Imports: torch only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class OptimConfig:
    """One optimizer. ``name``: adam (2023: clip = global grad-norm limit) or laprop (2025:
    ``agc`` = adaptive clip factor). ``warmup``: linear learning-rate warm-up in updates."""

    name: str = "adam"
    lr: float = 1e-4
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.999
    clip: float = 1000.0
    agc: float = 0.3
    warmup: int = 0


class LaProp(torch.optim.Optimizer):
    """LaProp: RMS-normalised gradients, then momentum, both bias-corrected."""

    def __init__(self, params: Iterable[Tensor], lr: float = 4e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-20):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (torch API)
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["nu"] = torch.zeros_like(p)
                    state["mu"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                nu, mu = state["nu"], state["mu"]
                nu.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                rms = (nu / (1 - beta2**t)).sqrt_().add_(group["eps"])
                mu.mul_(beta1).add_(p.grad / rms, alpha=1 - beta1)
                p.add_(mu, alpha=-group["lr"] / (1 - beta1**t))
        return loss


def make_optimizer(params: Iterable[Tensor], cfg: OptimConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.eps, betas=(cfg.beta1, cfg.beta2))
    if cfg.name == "laprop":
        return LaProp(params, lr=cfg.lr, eps=cfg.eps, betas=(cfg.beta1, cfg.beta2))
    raise ValueError(f"unknown optimizer {cfg.name!r}; choose adam or laprop")


@torch.no_grad()
def adaptive_grad_clip_(params: Iterable[Tensor], clip: float, floor: float = 1e-3) -> Tensor:
    """Scale each tensor's gradient down to at most ``clip * max(||p||, floor)``.

    Returns the global gradient norm before clipping (a 0-dim tensor, no host sync).
    """
    params = [p for p in params if p.grad is not None]
    grads = [p.grad for p in params]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    for p, g in zip(params, grads):
        limit = clip * torch.linalg.vector_norm(p).clamp(min=floor)
        norm = torch.linalg.vector_norm(g)
        g.mul_(torch.where(norm > limit, limit / norm.clamp(min=1e-12), torch.ones_like(norm)))
    return total


def clip_gradients(params: Iterable[Tensor], cfg: OptimConfig) -> Tensor:
    """Clip as the optimizer's recipe says; return the global gradient norm before clipping."""
    params = list(params)
    if cfg.name == "laprop":
        return adaptive_grad_clip_(params, cfg.agc)
    return torch.nn.utils.clip_grad_norm_(params, cfg.clip)


def warmup_factor(update: int, cfg: OptimConfig) -> float:
    return 1.0 if cfg.warmup <= 0 else min(1.0, (update + 1) / cfg.warmup)
