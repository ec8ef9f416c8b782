"""Action spaces: the one place that knows how each gymnasium action space is encoded.

An action lives in three encodings, and ``ActionSpace`` converts between them:

- **stored** (env) actions, as ``data/schema.py`` keeps them: int64 indices for Discrete
  (offset by ``space.start``), int8 bits for MultiBinary, int64 per dimension for
  MultiDiscrete, float32 values in the space's units for Box;
- **model** inputs ``[..., A]`` float, what the world model consumes: one-hot (Discrete,
  concatenated per dimension for MultiDiscrete), 0/1 bits, raw Box values;
- **actor** outputs ``[..., A]``: what the policy distribution samples: one-hot, bits, or
  values in [-1, 1] that are rescaled to the Box's bounds.

It also builds the distributions over actions: the policy's (``policy_dist``: one-hot
categorical with unimix, independent Bernoullis, bounded normal) and the inverse-dynamics
head's (``inverse_dist``), with their output sizes.

Imports: gymnasium, numpy, torch, nets.distributions, errors.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from dreamer_core.errors import DreamerError
from dreamer_core.nets import distributions as dists

Tensor = torch.Tensor

KINDS = ("discrete", "multibinary", "multidiscrete", "box")


class ActionSpace:
    """Encodings and distributions of one gymnasium action space (see the module docstring).

    Attributes:
        space: the gymnasium space; ``kind``: one of ``KINDS``; ``dim``: ``A``, the size of the
            model and actor encodings.
    """

    def __init__(self, space: gym.Space):
        self.space = space
        if isinstance(space, gym.spaces.Discrete):
            self.kind, self.dim = "discrete", int(space.n)
        elif isinstance(space, gym.spaces.MultiBinary):
            self.kind, self.dim = "multibinary", int(np.prod(space.n))
        elif isinstance(space, gym.spaces.MultiDiscrete):
            self.kind, self.dim = "multidiscrete", int(space.nvec.sum())
            self.nvec = [int(n) for n in space.nvec.ravel()]
        elif isinstance(space, gym.spaces.Box):
            self.kind, self.dim = "box", int(np.prod(space.shape))
            self.low = torch.as_tensor(np.asarray(space.low, np.float32).ravel())
            self.high = torch.as_tensor(np.asarray(space.high, np.float32).ravel())
        else:
            raise TypeError(f"unsupported action space {space}")

    # --- stored -> model --------------------------------------------------------------------

    def encode(self, action: Tensor) -> Tensor:
        """Stored actions ``[...]`` / ``[..., n]`` -> model inputs ``[..., A]`` float."""
        if self.kind == "discrete":
            return F.one_hot((action - int(self.space.start)).long(), self.dim).float()
        if self.kind == "multidiscrete":
            parts = [F.one_hot(action[..., i].long(), n) for i, n in enumerate(self.nvec)]
            return torch.cat(parts, -1).float()
        return action.float().flatten(-len(self.space.shape)) if self.space.shape else action.float()

    # --- the policy -------------------------------------------------------------------------

    def check_policy_support(self) -> None:
        """Raise a DreamerError for spaces an actor cannot act in (MultiDiscrete, unbounded Box)."""
        if self.kind == "multidiscrete":
            raise DreamerError(
                f"The actor supports Discrete, Box and MultiBinary action spaces, not {self.space}. "
                "Flatten the action space in a wrapper (for MultiDiscrete: one Discrete over the combinations)."
            )
        if self.kind == "box" and not (torch.isfinite(self.low).all() and torch.isfinite(self.high).all()):
            raise DreamerError(
                f"The actor needs a bounded Box action space, but {self.space} has infinite bounds. "
                "Wrap the env with gymnasium.wrappers.ClipAction (or rescale it) and collect again."
            )

    @property
    def policy_out_dim(self) -> int:
        """Size of the actor network's output (Box: mean and raw std per dimension)."""
        return 2 * self.dim if self.kind == "box" else self.dim

    @property
    def default_actor_grad(self) -> str:
        """DreamerV3: REINFORCE for discrete and multi-binary actions, dynamics backprop for Box."""
        return "dynamics" if self.kind == "box" else "reinforce"

    def policy_dist(self, out: Tensor, unimix: float, min_std: float, max_std: float):
        """The policy distribution over actor-space actions from the actor's output ``[..., out]``."""
        if self.kind == "discrete":
            return dists.OneHotDist(out, unimix)
        if self.kind == "multibinary":
            return dists.MultiBernoulliDist(out, unimix)
        mean, std = out.chunk(2, -1)
        return dists.BoundedNormal.from_raw(mean, std, min_std, max_std)

    def to_model(self, action: Tensor) -> Tensor:
        """Actor-space ``[.., A]`` -> model input ``[.., A]`` (differentiable)."""
        if self.kind != "box":
            return action
        low, high = self.low.to(action.device), self.high.to(action.device)
        return low + (action + 1) * 0.5 * (high - low)

    def from_model(self, action: Tensor) -> Tensor:
        """Model input ``[.., A]`` -> actor space (Box: back to [-1, 1])."""
        if self.kind != "box":
            return action
        low, high = self.low.to(action.device), self.high.to(action.device)
        return (action - low) / (high - low) * 2 - 1

    def to_env(self, action: Tensor) -> np.ndarray:
        """Actor-space ``[K, A]`` -> env actions ``[K, ...]`` in the stored dtype."""
        action = action.detach().float().cpu()
        if self.kind == "discrete":
            return (action.argmax(-1) + int(self.space.start)).numpy().astype(np.int64)
        if self.kind == "multibinary":
            return action.numpy().astype(np.int8).reshape(len(action), *np.atleast_1d(self.space.n))
        return self.to_model(action).numpy().astype(np.float32).reshape(len(action), *self.space.shape)

    # --- inverse dynamics ------------------------------------------------------------------

    def check_inverse_support(self) -> None:
        if self.kind == "multidiscrete":
            raise DreamerError(
                f"--inverse-model supports Discrete, MultiBinary and Box actions, not {self.space}. "
                "Train without --inverse-model for this dataset."
            )

    @property
    def inverse_out_dim(self) -> int:
        return 2 * self.dim if self.kind == "box" else self.dim

    def inverse_dist(self, out: Tensor):
        """Distribution over stored actions from the inverse head's output ``[..., out]``."""
        if self.kind == "discrete":
            return torch.distributions.Categorical(logits=out)
        if self.kind == "multibinary":
            return torch.distributions.Independent(torch.distributions.Bernoulli(logits=out), 1)
        if self.kind == "box":
            mean, std = out.chunk(2, -1)
            return torch.distributions.Independent(torch.distributions.Normal(mean, F.softplus(std) + 0.01), 1)
        raise ValueError(f"the inverse model does not support {self.space}")

    def inverse_target(self, action: Tensor) -> Tensor:
        """Stored actions ``[B, T, ...]`` -> what ``inverse_dist(..).log_prob`` scores ``[B, T, (A)]``."""
        if self.kind == "discrete":
            return action.long() - int(self.space.start)
        return action.float().flatten(2)

    def inverse_metric(self, dist, action: Tensor) -> Tensor:
        """Per-row held-out metric ``[B, T]``: hit (discrete; per-button mean for multi-binary)
        or squared error (Box) of the inverse head's point prediction."""
        if self.kind == "discrete":
            return (dist.probs.argmax(-1) == self.inverse_target(action)).float()
        if self.kind == "multibinary":
            return ((dist.base_dist.probs > 0.5).float() == self.inverse_target(action)).float().mean(-1)
        return (dist.base_dist.mean - self.inverse_target(action)).pow(2).mean(-1)
