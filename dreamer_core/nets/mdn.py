"""The MDN-RNN of the original World Models (Ha & Schmidhuber 2018): M, the memory.

Owns: ``MixtureDist``, a mixture of diagonal Gaussians with temperature sampling, and
``MDNRNN``, an LSTM over ``[z_{t-1}, a_t]`` whose hidden state ``h_t`` parameterises that
mixture over ``z_t``, plus the reward and continue heads that read the features ``[z_t, h_t]``.

Row alignment (data/schema.py): row t holds obs_t and the action a_t that led to it, so the
LSTM step that reaches row t consumes the previous latent and this row's action::

    (h_{t-1}, c_{t-1}) ──[z_{t-1}, a_t]──► LSTM ──► (h_t, c_t) ──► mixture over z_t
                                                          └── with z_t ──► reward r_t, continue

This is the paper's ``P(z_{t+1} | a_t, z_t, h_t)`` with its indices shifted to our rows. Where
``is_first`` is set the previous state and the action are replaced by zeros (the initial state),
so windows may cross episode boundaries.

Mixture layout (``mixture``):

- ``per_dim`` (default, the paper's code): every latent dimension has its own 1-D mixture of
  K Gaussians with its own weights; the density of ``z`` is the product over dimensions.
- ``shared``: one set of K weights per step, each component a diagonal Gaussian over all Z
  dimensions.

Temperature ``tau`` (the paper): sampling divides the mixture logits by ``tau`` and multiplies
every std by ``sqrt(tau)``; ``tau = 0`` gives the most likely component's mean (per
dimension for ``per_dim``), the limit of ``tau -> 0``.

Imports: torch and nets.layers / nets.distributions. Must not import anything else from
dreamer_core.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dreamer_core.nets.distributions import BernoulliDist, SymlogMSEDist
from dreamer_core.nets.layers import MLP, init_weights

__all__ = ["MIXTURES", "MDNRNN", "MixtureDist"]

MIXTURES = ("per_dim", "shared")
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class MixtureDist:
    """Mixture of K Gaussians over Z latent dimensions, weights per dimension or shared.

    Args:
        logits: unnormalised mixture weights, ``[..., G, K]`` with ``G = Z`` (per-dimension
            weights) or ``G = 1`` (one set shared by all dimensions).
        mean: ``[..., Z, K]``, the components' means.
        std: ``[..., Z, K]``, the components' standard deviations (diagonal).

    Shapes:
        log_prob(z ``[..., Z]``) -> ``[...]`` (summed over Z)      sample(), mode, mean: ``[..., Z]``
    """

    def __init__(self, logits: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        assert mean.shape == std.shape, (mean.shape, std.shape)
        assert logits.shape[-1] == mean.shape[-1] and logits.shape[-2] in (1, mean.shape[-2]), (
            logits.shape, mean.shape)
        self.logits, self.mean_k, self.std_k = logits.float(), mean.float(), std.float()

    @property
    def shared(self) -> bool:
        return self.logits.shape[-2] == 1 and self.mean_k.shape[-2] > 1

    @property
    def log_weights(self) -> torch.Tensor:
        """Normalised log mixture weights ``[..., G, K]``."""
        return torch.log_softmax(self.logits, -1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)``: ``logsumexp_k(log w_k + log N(z; mu_k, sigma_k))`` per group, summed."""
        assert z.shape == self.mean_k.shape[:-1], (z.shape, self.mean_k.shape)
        scaled = (z.float()[..., None] - self.mean_k) / self.std_k  # [..., Z, K]
        component = -0.5 * scaled**2 - torch.log(self.std_k) - LOG_SQRT_2PI  # [..., Z, K]
        if self.shared:
            component = component.sum(-2, keepdim=True)  # [..., 1, K]: one diagonal Gaussian each
        return torch.logsumexp(self.log_weights + component, -1).sum(-1)  # [...]

    def _pick(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std ``[..., Z]`` of the chosen component (``index [..., G]``)."""
        index = index.expand(self.mean_k.shape[:-1])[..., None]  # [..., Z, 1]
        return self.mean_k.gather(-1, index)[..., 0], self.std_k.gather(-1, index)[..., 0]

    def sample(self, tau: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """A draw at temperature ``tau`` (reparameterised given the chosen components).

        The components are chosen from ``softmax(logits / tau)`` (Gumbel-max with the
        generator's noise), then ``z = mu_k + sigma_k * sqrt(tau) * eps``. ``tau = 0``: the mode.
        """
        if tau < 0:
            raise ValueError(f"the temperature must be >= 0, got {tau}")
        if tau == 0:
            return self.mode
        uniform = torch.rand(self.logits.shape, generator=generator, device=self.logits.device)
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
        index = (self.logits.detach() / tau + gumbel).argmax(-1)  # [..., G]
        mean, std = self._pick(index)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
        return mean + std * math.sqrt(tau) * noise

    @property
    def mode(self) -> torch.Tensor:
        """The most likely component's mean (per dimension for per-dimension weights)."""
        return self._pick(self.logits.argmax(-1))[0]

    @property
    def mean(self) -> torch.Tensor:
        """The mixture's mean ``sum_k w_k mu_k`` ``[..., Z]``."""
        return (self.log_weights.exp() * self.mean_k).sum(-1)

    @property
    def variance(self) -> torch.Tensor:
        """The mixture's variance per dimension (law of total variance) ``[..., Z]``: the spread
        a dream view shows as the model's uncertainty."""
        weights = self.log_weights.exp()
        second = (weights * (self.std_k**2 + self.mean_k**2)).sum(-1)
        return (second - self.mean**2).clamp(min=0.0)

    def weight_entropy(self) -> torch.Tensor:
        """Entropy of the mixture weights, averaged over the groups ``[...]`` (0: one component)."""
        logw = self.log_weights
        return -(logw.exp() * logw).sum(-1).mean(-1)


class MDNRNN(nn.Module):
    """LSTM over ``[z_{t-1}, a_t]``, a mixture head over ``z_t`` and reward / continue heads.

    The LSTM runs as an explicit loop (it must reset where ``is_first`` is set and return the
    cell state of every row, which ``nn.LSTM`` does not): the input projection of all rows is
    one matmul before the loop, each step adds the recurrent one. The forget-gate bias starts
    at 1 (the paper's LSTM cell). The mixture head is one Linear from ``h_t`` (the paper); the
    reward (symlog MSE) and continue (Bernoulli) heads are MLPs over ``[z_t, h_t]``.

    Args:
        latent: Z, the VAE's latent size.
        action_dim: A, the model encoding of actions (``ActionSpace.dim``).
        hidden: the LSTM size (the paper: 256).
        mixtures: K components (the paper: 5).
        mixture: ``per_dim`` | ``shared`` (see the module docstring).
        min_log_std: lower clamp of the components' log std, so a latent dimension the VAE
            stops using cannot drive the likelihood to infinity.
        max_log_std: upper clamp of the components' log std.
        head_units: width of the reward and continue MLPs.
        head_layers: depth of the reward and continue MLPs.
        norm: norm of the heads' hidden layers.
        act: activation of the heads' hidden layers.

    Shapes:
        scan(z ``[B, T, Z]``, action ``[B, T, A]``, is_first ``[B, T]``, ...) -> h, c ``[B, T, D]``
        dist(h ``[..., D]``) -> MixtureDist over ``[..., Z]``      reward/cont(feat ``[..., Z + D]``)
    """

    def __init__(self, latent: int, action_dim: int, hidden: int = 256, mixtures: int = 5,
                 mixture: str = "per_dim", min_log_std: float = -7.0, max_log_std: float = 2.0,
                 head_units: int = 256, head_layers: int = 1, norm: str = "none", act: str = "relu"):
        super().__init__()
        if mixture not in MIXTURES:
            raise ValueError(f"unknown mixture layout {mixture!r}; choose one of {MIXTURES}")
        self.latent, self.action_dim, self.hidden = latent, action_dim, hidden
        self.mixtures, self.mixture = mixtures, mixture
        self.min_log_std, self.max_log_std = min_log_std, max_log_std
        self.cell = nn.LSTMCell(latent + action_dim, hidden)
        with torch.no_grad():  # gates are ordered (input, forget, cell, output)
            self.cell.bias_ih[hidden:2 * hidden].fill_(1.0)
            self.cell.bias_hh[hidden:2 * hidden].zero_()
        groups = latent if mixture == "per_dim" else 1
        self.mdn = init_weights(nn.Linear(hidden, groups * mixtures + 2 * latent * mixtures))
        feat = latent + hidden
        self.reward_head = MLP(feat, 1, head_units, head_layers, norm=norm, act=act)
        self.cont_head = MLP(feat, 1, head_units, head_layers, norm=norm, act=act)

    # --- the recurrence ---------------------------------------------------------------------

    def initial(self, batch_size: int, device: torch.device | str | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero LSTM state ``(h, c)``, each ``[batch_size, D]``."""
        device = device if device is not None else self.cell.weight_hh.device
        zeros = torch.zeros(batch_size, self.hidden, device=device)
        return zeros, zeros.clone()

    def _gates(self, gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i, f, g, o = gates.chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c

    def step(self, h: torch.Tensor, c: torch.Tensor, z: torch.Tensor, action: torch.Tensor,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One LSTM step on ``[z, action]`` (``[N, Z]``, ``[N, A]``) -> ``(h, c)`` ``[N, D]``
        (the same arithmetic as one row of :meth:`scan`)."""
        cell = self.cell
        proj = F.linear(torch.cat([z, action], -1), cell.weight_ih, cell.bias_ih + cell.bias_hh)  # [N, 4D]
        return self._gates(proj + h @ cell.weight_hh.t(), c)

    def scan(self, z_prev: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor,
             h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The LSTM states of every row of a window.

        ``z_prev [B, T, Z]`` is the latent of the row before each row (``z_prev[:, 0]`` the
        state's before the window), ``action [B, T, A]`` the row's own action; where
        ``is_first [B, T]`` both are zeroed and the previous ``(h, c)`` restarts from zeros.

        Returns:
            h, c: ``[B, T, D]``.
        """
        B, T, _ = z_prev.shape
        keep = (~is_first.bool()).to(z_prev.dtype)[..., None]  # [B, T, 1]
        x = torch.cat([z_prev, action], -1) * keep  # [B, T, Z + A]
        cell = self.cell
        proj = F.linear(x, cell.weight_ih, cell.bias_ih + cell.bias_hh)  # [B, T, 4D]
        h, c = h0, c0
        hs, cs = [], []
        for t in range(T):
            h, c = h * keep[:, t], c * keep[:, t]
            h, c = self._gates(proj[:, t] + h @ cell.weight_hh.t(), c)
            hs.append(h)
            cs.append(c)
        return torch.stack(hs, 1), torch.stack(cs, 1)  # [B, T, D] each

    # --- heads ------------------------------------------------------------------------------

    def dist(self, h: torch.Tensor) -> MixtureDist:
        """The mixture over ``z_t`` given ``h_t`` ``[..., D]``."""
        Z, K = self.latent, self.mixtures
        out = self.mdn(h)
        groups = Z if self.mixture == "per_dim" else 1
        logits, mean, log_std = out.split([groups * K, Z * K, Z * K], -1)
        lead = h.shape[:-1]
        log_std = log_std.clamp(self.min_log_std, self.max_log_std)
        return MixtureDist(logits.reshape(*lead, groups, K), mean.reshape(*lead, Z, K),
                           log_std.reshape(*lead, Z, K).exp())

    def reward(self, feat: torch.Tensor) -> SymlogMSEDist:
        """Reward received on arriving at the state, from features ``[..., Z + D]``."""
        return SymlogMSEDist(self.reward_head(feat).squeeze(-1), dims=0)

    def cont(self, feat: torch.Tensor) -> BernoulliDist:
        """Bernoulli of ``1 - is_terminal`` at the state, from features ``[..., Z + D]``."""
        return BernoulliDist(self.cont_head(feat).squeeze(-1))
