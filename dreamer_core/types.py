"""Shared record types and the shape glossary.

Shape letters used in comments, docstrings and asserts across dreamer_core:

    B   batch                         T   sequence length (window)
    H   imagination horizon           N   start states, = B * T
    D   deterministic (GRU) size      S   number of stochastic latents
    K   classes per latent            F   feature size, = D + S * K
    E   embedding size                A   action dimension
    C, Hi, Wi   image channels, height, width

Tensors that cross a function boundary are batch-major ``[B, T, ...]``.

Imports: torch only; nothing of the package (building a Batch from an Episode is data's job:
``data.sampler.batch_from_episode``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch"]


@dataclass
class Batch:
    """A ``[B, T]`` window batch as the sampler returns it (rows as in data/schema.py).

    Attributes:
        obs: key -> ``[B, T, ...]``; images stay uint8 ``[B, T, Hi, Wi, C]``, vectors float32.
        action: ``[B, T, ...]`` in the stored dtype (int64 index for Discrete, float32 for Box,
            int8 for MultiBinary); row t is the action that led to obs t.
        reward: float32 ``[B, T]``, received on arriving at obs t.
        is_first, is_last, is_terminal: bool ``[B, T]``.
    """

    obs: dict[str, torch.Tensor]
    action: torch.Tensor
    reward: torch.Tensor
    is_first: torch.Tensor
    is_last: torch.Tensor
    is_terminal: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        B, T = self.reward.shape
        return B, T

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Move every tensor to ``device``."""
        move = lambda x: x.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(
            obs={k: move(v) for k, v in self.obs.items()},
            action=move(self.action),
            reward=move(self.reward),
            is_first=move(self.is_first),
            is_last=move(self.is_last),
            is_terminal=move(self.is_terminal),
        )
