"""The interfaces every caller uses: a world model, a latent state, an actor-critic.

Stages, policies, the dream views and the notebooks talk to a world model only through
:class:`WorldModelInterface`, and to the behavior only through :class:`ActorCriticInterface`;
nothing outside a model's own module calls its encoder, its dynamics or its heads. The
DreamerV3 RSSM world model (``world_model.WorldModel``) implements it; a second family (the
original World Models' VAE + MDN-RNN) implements the same methods with its own state type.

Conventions (data/schema.py row alignment): row t holds obs_t, the action that led to it and
the reward received on arriving. A *state* summarises rows ``<= t``; its *features*
``[.., F]`` are what every head, the actor and the critic read. Actions cross this interface
in the model encoding ``[.., A]`` (``ActionSpace.encode`` / ``to_model``), batches as stored.

Shapes (glossary in types.py):
    observe(batch [B, T]) -> states [B, T]          step(...) -> states [K]
    imagine(start [N], policy, H) -> states [N, H+1], actions [N, H+1, A]
    features(states [...]) -> [..., F]              decode/reward/cont(feat [..., F]) -> distributions

Imports: typing, torch, gymnasium, types, nets.actions (for annotations only).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import torch

from dreamer_core.nets.actions import ActionSpace
from dreamer_core.types import Batch

Tensor = torch.Tensor


@runtime_checkable
class LatentState(Protocol):
    """A batch of latent states (a dataclass of tensors with leading batch axes)."""

    def detach(self) -> LatentState: ...
    def map(self, fn: Callable[[Tensor], Tensor]) -> LatentState: ...
    def flatten(self, start_dim: int = 0, end_dim: int = 1) -> LatentState: ...
    def to(self, device: torch.device | str) -> LatentState: ...
    def __getitem__(self, index: Any) -> LatentState: ...


@runtime_checkable
class WorldModelInterface(Protocol):
    """What a world model offers its callers; ``save``/``load`` are self-describing."""

    observation_space: gym.spaces.Dict
    action_space: gym.Space
    actions: ActionSpace

    @property
    def feat_dim(self) -> int:
        """``F``: the size of :meth:`features`."""

    @property
    def feat_onehot(self) -> tuple[int, int, int] | None:
        """Layout hint for networks reading the features (one-hot blocks), or None."""

    def initial_state(self, batch_size: int) -> LatentState:
        """The state before the first row of an episode, batch shape ``[batch_size]``."""

    def observe(self, batch: Batch, state: LatentState | None = None) -> LatentState:
        """Posterior states ``[B, T]`` of a stored batch (``state``: the one before row 0)."""

    def step(self, state: LatentState, action: Tensor, obs: dict[str, Tensor], is_first: Tensor,
             generator: torch.Generator | None = None) -> LatentState:
        """One env step while acting: ``action [K, A]`` (model encoding) led to ``obs [K, ...]``;
        where ``is_first [K]`` the state restarts from the initial state."""

    def imagine(self, start: LatentState, policy: Callable[[LatentState], Tensor], horizon: int,
                ) -> tuple[LatentState, Tensor]:
        """Roll forward ``horizon`` steps from ``start [N]`` under ``policy(state) -> action [N, A]``:
        states ``[N, H+1]`` (index 0 is ``start``) and actions ``[N, H+1, A]``."""

    def features(self, state: LatentState) -> Tensor:
        """``[..., F]`` features of states ``[...]``."""

    def decode(self, feat: Tensor) -> dict[str, Any]:
        """Observation distributions per key (``.mode``: the reconstruction)."""

    def reconstruct(self, feat: Tensor) -> dict[str, Tensor]:
        """Decoded observations in display units (images float in [0, 1])."""

    def categorical_latents(self, state: LatentState) -> tuple[Tensor, Tensor] | None:
        """``(samples, probabilities)`` ``[..., S, K]`` of categorical latents, or None."""

    def reward_dist(self, feat: Tensor) -> Any:
        """Distribution of the reward received on arriving at the state."""

    def cont_dist(self, feat: Tensor) -> Any:
        """Bernoulli distribution of 1 - is_terminal at the state."""

    def loss(self, batch: Batch, state: LatentState | None = None,
             ) -> tuple[Tensor, dict[str, Tensor], LatentState]:
        """``(loss, metrics, posterior states [B, T])`` on a stored batch."""

    def save(self, path: Path | str, **meta: Any) -> None:
        """Write a self-describing artifact (config, spaces, weights, ``meta``)."""


@runtime_checkable
class ActorCriticInterface(Protocol):
    """What the behavior offers: a policy and a value over world-model features."""

    def policy(self, feat: Tensor) -> Any:
        """Distribution over actor-space actions (``ActionSpace`` converts them)."""

    def value(self, feat: Tensor, slow: bool = False) -> Any:
        """Value distribution (``.mean`` is the value)."""

    def save(self, path: Path | str, **meta: Any) -> None:
        """Write a self-describing artifact (config, spaces, weights, ``meta``)."""
