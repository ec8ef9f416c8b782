"""Action spaces: the one place that knows how each gymnasium action space is encoded.

An action lives in three encodings, and ``ActionSpace`` converts between them:

- **stored** (env) actions, as ``data/schema.py`` keeps them: int64 indices for Discrete
  (offset by ``space.start``), int8 bits for MultiBinary, int64 per dimension for
  MultiDiscrete, float32 values in the space's units for Box;
- **model** inputs ``[..., A]`` float, what the world model consumes: one-hot (Discrete,
  concatenated per dimension for MultiDiscrete), 0/1 bits, and Box values normalised to
  [-1, 1] by the space's bounds, ``2 * (a - low) / (high - low) - 1`` per dimension;
- **actor** outputs ``[..., A]``: what the policy distribution samples: one-hot, bits, or
  values in [-1, 1]. The actor works in the model's units (DreamerV3), so ``to_model`` is the
  identity; only ``to_env`` scales Box actions to the bounds, when the env is stepped.

Box dimensions that cannot be normalised (an infinite bound, or ``low == high``) pass
unchanged into the model, as all Box values did before dreamer-core 0.3.0; the RSSM's input
guard (``x / max(1, |x|)``, a no-op on [-1, 1]) still squashes those values where ``|x| > 1``.
A world model trains on such spaces; the actor refuses them (``check_policy_support``).

It also builds the distributions over actions: the policy's (``policy_dist``: one-hot
categorical with unimix, independent Bernoullis, bounded normal) and the inverse-dynamics
head's (``inverse_dist``, over the model encoding for Box), with their output sizes.

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
            model and actor encodings. Box only: ``low``, ``high`` ``[A]`` the flattened bounds
            and ``scaled`` ``[A]`` bool, the dimensions normalised to [-1, 1] (both bounds
            finite and ``high > low``; the others pass unchanged).
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
            self.scaled = torch.isfinite(self.low) & torch.isfinite(self.high) & (self.high > self.low)
            # finite stand-ins where a dimension is not scaled, so both torch.where branches
            # (and their gradients) stay finite
            self._low = torch.where(self.scaled, self.low, torch.zeros_like(self.low))
            self._span = torch.where(self.scaled, self.high - self.low, torch.ones_like(self.low))
        else:
            raise TypeError(f"unsupported action space {space}")

    # --- stored -> model --------------------------------------------------------------------

    def encode(self, action: Tensor) -> Tensor:
        """Stored actions ``[...]`` / ``[..., n]`` -> model inputs ``[..., A]`` float.

        Box: normalised to [-1, 1] by the bounds (``-1`` at ``low``, ``1`` at ``high``; the
        dimensions that are not ``scaled`` unchanged)."""
        if self.kind == "discrete":
            return F.one_hot((action - int(self.space.start)).long(), self.dim).float()
        if self.kind == "multidiscrete":
            parts = [F.one_hot(action[..., i].long(), n) for i, n in enumerate(self.nvec)]
            return torch.cat(parts, -1).float()
        flat = action.float().flatten(-len(self.space.shape)) if self.space.shape else action.float()
        if self.kind == "box":
            return self.normalise(flat)
        return flat

    def normalise(self, action: Tensor) -> Tensor:
        """Box values in env units ``[..., A]`` -> [-1, 1] (``2 * (a - low) / (high - low) - 1``
        per scaled dimension, the others unchanged)."""
        low, span, scaled = (x.to(action.device) for x in (self._low, self._span, self.scaled))
        return torch.where(scaled, 2 * (action - low) / span - 1, action)

    def denormalise(self, action: Tensor) -> Tensor:
        """Inverse of :meth:`normalise`: [-1, 1] ``[..., A]`` -> env units (differentiable)."""
        low, span, scaled = (x.to(action.device) for x in (self._low, self._span, self.scaled))
        return torch.where(scaled, low + (action + 1) * 0.5 * span, action)

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
        """Actor-space ``[.., A]`` -> model input ``[.., A]``: the identity (the actor samples in
        the model's encoding; Box in [-1, 1]), kept so callers name the crossing."""
        return action

    def to_env(self, action: Tensor) -> np.ndarray:
        """Actor-space ``[K, A]`` -> env actions ``[K, ...]`` in the stored dtype (Box: scaled from
        [-1, 1] to the bounds, then clipped to them against rounding)."""
        action = action.detach().float().cpu()
        if self.kind == "discrete":
            return (action.argmax(-1) + int(self.space.start)).numpy().astype(np.int64)
        if self.kind == "multibinary":
            return action.numpy().astype(np.int8).reshape(len(action), *np.atleast_1d(self.space.n))
        values = self.denormalise(torch.where(self.scaled, action.clamp(-1, 1), action))
        values = values.clamp(self.low, self.high)  # no-op at infinite bounds; low where low == high
        return values.numpy().astype(np.float32).reshape(len(action), *self.space.shape)

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
        """Distribution over ``inverse_target`` (stored indices for Discrete, bits for
        MultiBinary, the model encoding in [-1, 1] for Box) from the head's output ``[..., out]``."""
        if self.kind == "discrete":
            return torch.distributions.Categorical(logits=out)
        if self.kind == "multibinary":
            return torch.distributions.Independent(torch.distributions.Bernoulli(logits=out), 1)
        if self.kind == "box":
            mean, std = out.chunk(2, -1)
            return torch.distributions.Independent(torch.distributions.Normal(mean, F.softplus(std) + 0.01), 1)
        raise ValueError(f"the inverse model does not support {self.space}")

    def inverse_target(self, action: Tensor) -> Tensor:
        """Stored actions ``[B, T, ...]`` -> what ``inverse_dist(..).log_prob`` scores ``[B, T, (A)]``
        (Box: normalised like the model's inputs, so the head predicts in [-1, 1])."""
        if self.kind == "discrete":
            return action.long() - int(self.space.start)
        target = action.float().flatten(2)
        return self.normalise(target) if self.kind == "box" else target

    def inverse_metric(self, dist, action: Tensor) -> Tensor:
        """Per-row held-out metric ``[B, T]``: hit (discrete; per-button mean for multi-binary)
        or squared error (Box, in the normalised [-1, 1] units) of the head's point prediction."""
        if self.kind == "discrete":
            return (dist.probs.argmax(-1) == self.inverse_target(action)).float()
        if self.kind == "multibinary":
            return ((dist.base_dist.probs > 0.5).float() == self.inverse_target(action)).float().mean(-1)
        return (dist.base_dist.mean - self.inverse_target(action)).pow(2).mean(-1)
