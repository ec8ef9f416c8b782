"""The original World Models (Ha & Schmidhuber 2018) as a world-model family: V + M (+ inverse).

``VaeMdnWorldModel`` implements :class:`~dreamer_core.interfaces.WorldModelInterface` with a
VAE (V, nets/vae.py) that encodes each observation into a Gaussian latent ``z_t`` and an
MDN-RNN (M, nets/mdn.py) whose LSTM state ``h_t`` predicts ``z_t`` as a mixture of Gaussians,
plus reward and continue heads. Its state is :class:`VaeMdnState` ``(z, h, c)``; its features
are ``[z_t, h_t]`` (``F = Z + D``), what the paper's controller reads.

Row alignment (data/schema.py): row t holds obs_t, the action a_t that led to it and the reward
r_t received on arriving. The state of row t is::

    h_t, c_t = LSTM((h_{t-1}, c_{t-1}), [z_{t-1}, a_t])    (zeros before an episode's first row)
    z_t      ~ V(obs_t)              (observe / step: the posterior, the paper's encoding)
    z_t      ~ M(h_t) at tau         (imagine / dreams: the mixture, temperature tau)

so the features ``[z_t, h_t]`` predict r_t and 1 - is_terminal_t (M's heads), V's decoder
reconstructs obs_t from z_t, and the inverse model (optional) predicts a_{t+1} from
``(z_t, z_{t+1})`` where row t+1 is not an episode start.

Training (``WorldModelsConfig.training``; the stage chooses the phase with :meth:`set_phase`):

- ``staged`` (the paper): phase ``vae`` trains V alone (reconstruction + KL with the
  free-bits floor); phase ``memory`` freezes V (no gradient, no graph) and trains M, its
  heads and the inverse model on V's sampled latents.
- ``joint``: one loss over every term, weighted by ``LossWeights`` (calibrated with
  :func:`calibrate`: measured unit-weight magnitudes, weights following ``PRIORITY`` within one
  order of magnitude, the KL tied to the reconstruction's weight so V's ELBO keeps its
  balance). The dynamics NLL scores V's latents as fixed targets (``sg(z_t)``); its gradient
  reaches V only through the LSTM's inputs, because a density's NLL is unbounded below if the
  encoder may shrink its own targets.

Artifacts: ``world_model.pt`` is an ordinary ``checkpoint.WorldModelArtifact`` whose
``model_config`` carries ``family: "worldmodels"`` and ``family_format`` beside the
``WorldModelsConfig`` fields (:func:`is_family` tells the families apart).

Imports: nets, checkpoint, config (dict <-> dataclass), interfaces (annotations), errors, types.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_core import checkpoint, losses
from dreamer_core import config as config_lib
from dreamer_core.errors import DreamerError
from dreamer_core.nets.actions import ActionSpace
from dreamer_core.nets.encoders import preprocess_image
from dreamer_core.nets.layers import MLP
from dreamer_core.nets.mdn import MDNRNN, MixtureDist
from dreamer_core.nets.vae import CONVS, OUTPUTS, VAE, kl_to_standard_normal
from dreamer_core.types import Batch

Tensor = torch.Tensor

FAMILY = "worldmodels"
FAMILY_FORMAT = 2  # the layout of this family's weights and config inside world_model.pt
# 2: ``vae.output`` (format 1 had none and always used the paper's sigmoid, so it loads as sigmoid)
PHASES = ("vae", "memory", "joint")
TRAININGS = ("staged", "joint")
VAE_CONVS, VAE_OUTPUTS = CONVS, OUTPUTS  # the choices of worldmodels.vae.conv and .output
# Calibrated balancing: reconstruction first, then dynamics (M's terms), then inverse.
PRIORITY = ("recon", "dyn", "reward", "cont", "inverse")
TIED = {"kl": "recon"}  # the KL keeps the reconstruction's weight (V's ELBO stays an ELBO)


# --- config ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """V (the paper: Z = 32, 32-64-128-256 conv channels, ReLU, free bits 0.5 per dimension)."""

    latent: int = 32
    depth: int = 32
    mlp_units: int = 256  # vector observations
    mlp_layers: int = 2
    norm: str = "none"
    act: str = "relu"
    conv: str = "paper"  # paper (64x64 frames) | toolkit (the toolkit's CNN, any power-of-two size)
    output: str = "linear"  # the paper CNN's pixels: linear | sigmoid (the paper's; saturates on white frames, nets/vae.py)
    kl_tolerance: float = 0.5  # KL floor per frame = kl_tolerance * latent nats (the paper's code)


@dataclass(frozen=True)
class MDNConfig:
    """M (the paper: LSTM 256, 5 components, one mixture per latent dimension)."""

    hidden: int = 256
    mixtures: int = 5
    mixture: str = "per_dim"  # per_dim (the paper's code) | shared (one weight set per step)
    temperature: float = 1.0  # tau of imagine / dreams (the stage or the dream env may override it)
    min_log_std: float = -7.0
    max_log_std: float = 2.0
    head_units: int = 256  # reward and continue heads
    head_layers: int = 1


@dataclass(frozen=True)
class InverseModelConfig:
    enabled: bool = False
    units: int = 256
    layers: int = 2
    grad_to_vae: bool = True  # joint training: the inverse loss shapes V's latents


@dataclass(frozen=True)
class LossWeights:
    recon: float = 1.0
    kl: float = 1.0
    dyn: float = 1.0
    reward: float = 1.0
    cont: float = 1.0
    inverse: float = 1.0


@dataclass(frozen=True)
class WorldModelsConfig:
    vae: VAEConfig = field(default_factory=VAEConfig)
    mdn: MDNConfig = field(default_factory=MDNConfig)
    inverse: InverseModelConfig = field(default_factory=InverseModelConfig)
    weights: LossWeights = field(default_factory=LossWeights)
    training: str = "staged"  # staged (V, then M on V's latents) | joint
    sample_latents: bool = True  # observe / step draw z from V (the paper); False: V's mean


def is_family(model_config: dict[str, Any]) -> bool:
    """True when a ``WorldModelArtifact.model_config`` belongs to this family."""
    return model_config.get("family") == FAMILY


# --- the latent state ---------------------------------------------------------------------


@dataclass(eq=False)
class VaeMdnState:
    """Latent state ``(z, h, c)``; every field shares the leading (batch) shape ``[...]``.

    Attributes:
        z: V's latent ``[..., Z]`` (observed) or M's sample (imagined).
        h: M's LSTM output ``[..., D]`` after the step into this row.
        c: M's LSTM cell state ``[..., D]``.

    Dims passed to ``flatten`` / ``stack`` / ``cat`` count batch axes only.
    """

    z: Tensor
    h: Tensor
    c: Tensor

    @property
    def batch_shape(self) -> torch.Size:
        return self.z.shape[:-1]

    def feat(self) -> Tensor:
        """``[..., Z + D]``: ``[z, h]`` (the paper's controller input)."""
        return torch.cat([self.z, self.h], -1)

    def map(self, fn: Callable[[Tensor], Tensor]) -> VaeMdnState:
        return VaeMdnState(*(fn(getattr(self, f.name)) for f in fields(self)))

    def detach(self) -> VaeMdnState:
        return self.map(torch.Tensor.detach)

    def to(self, device: torch.device | str) -> VaeMdnState:
        return self.map(lambda x: x.to(device))

    def __getitem__(self, index: Any) -> VaeMdnState:
        return self.map(lambda x: x[index])

    def _dim(self, dim: int, extra: int = 0) -> int:
        ndim = len(self.batch_shape) + extra
        assert -ndim <= dim < ndim, f"dim {dim} is not a batch axis of {tuple(self.batch_shape)}"
        return dim % ndim

    def flatten(self, start_dim: int = 0, end_dim: int = 1) -> VaeMdnState:
        start, end = self._dim(start_dim), self._dim(end_dim)
        return self.map(lambda x: x.flatten(start, end))

    def reshape(self, *batch_shape: int) -> VaeMdnState:
        ndim = len(self.batch_shape)
        return self.map(lambda x: x.reshape(*batch_shape, *x.shape[ndim:]))

    @classmethod
    def stack(cls, states: Sequence[VaeMdnState], dim: int = 0) -> VaeMdnState:
        dim = states[0]._dim(dim, extra=1)
        return cls(*(torch.stack([getattr(s, f.name) for s in states], dim) for f in fields(cls)))

    @classmethod
    def cat(cls, states: Sequence[VaeMdnState], dim: int = 0) -> VaeMdnState:
        dim = states[0]._dim(dim)
        return cls(*(torch.cat([getattr(s, f.name) for s in states], dim) for f in fields(cls)))


# --- the world model --------------------------------------------------------------------------


class VaeMdnWorldModel(nn.Module):
    """V (VAE) + M (MDN-RNN with reward and continue heads) + an optional inverse model."""

    def __init__(self, cfg: WorldModelsConfig, observation_space: gym.spaces.Dict, action_space: gym.Space):
        super().__init__()
        _check_config(cfg)
        self.cfg = cfg
        self.observation_space = observation_space
        self.action_space = action_space
        self.actions = ActionSpace(action_space)
        v, m = cfg.vae, cfg.mdn
        self.vae = VAE(observation_space, v.latent, v.depth, v.mlp_units, v.mlp_layers, v.norm, v.act, v.conv,
                       v.output)
        self.memory = MDNRNN(v.latent, self.actions.dim, m.hidden, m.mixtures, m.mixture, m.min_log_std,
                             m.max_log_std, m.head_units, m.head_layers, v.norm, v.act)
        self.inverse_head = None
        if cfg.inverse.enabled:
            self.actions.check_inverse_support()
            self.inverse_head = MLP(2 * v.latent, self.actions.inverse_out_dim, cfg.inverse.units,
                                    cfg.inverse.layers, norm=v.norm, act=v.act)
        self.tau = m.temperature
        self.phase = "joint"
        self.set_phase("vae" if cfg.training == "staged" else "joint")

    # --- training phases --------------------------------------------------------------------

    def set_phase(self, phase: str) -> None:
        """``vae`` | ``memory`` | ``joint``: which terms :meth:`loss` computes; ``memory``
        freezes V (``requires_grad`` off), the others thaw it."""
        if phase not in PHASES:
            raise DreamerError(f"Unknown training phase {phase!r}; use one of {', '.join(PHASES)}.")
        self.phase = phase
        self.vae.requires_grad_(phase != "memory")

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``vae``: V's parameters; ``memory``: M, its heads and the inverse model (the paper
        trains them with different learning rates: 1e-4 and 1e-3)."""
        memory = list(self.memory.parameters())
        if self.inverse_head is not None:
            memory += list(self.inverse_head.parameters())
        return {"vae": list(self.vae.parameters()), "memory": memory}

    # --- the interface: states --------------------------------------------------------------

    @property
    def latent_dim(self) -> int:
        return self.cfg.vae.latent

    @property
    def feat_dim(self) -> int:
        return self.cfg.vae.latent + self.cfg.mdn.hidden

    @property
    def feat_onehot(self) -> tuple[int, int, int] | None:
        return None

    @property
    def device(self) -> torch.device:
        return self.vae.stats.weight.device

    def initial_state(self, batch_size: int) -> VaeMdnState:
        h, c = self.memory.initial(batch_size, self.device)
        return VaeMdnState(torch.zeros(batch_size, self.latent_dim, device=self.device), h, c)

    def encode(self, obs: dict[str, Tensor], generator: torch.Generator | None = None,
               sample: bool | None = None) -> Tensor:
        """V's latent ``[..., Z]`` of observations ``[..., *shape]`` (a draw, or the mean)."""
        mean, std = self.vae.encode(obs)
        sample = self.cfg.sample_latents if sample is None else sample
        return VAE.sample(mean, std, generator) if sample else mean

    def observe(self, batch: Batch, state: VaeMdnState | None = None) -> VaeMdnState:
        """Posterior states ``[B, T]`` of a stored batch (``state``: the one before row 0)."""
        return self._scan(self.encode(batch.obs), self.actions.encode(batch.action), batch.is_first, state)

    def _scan(self, z: Tensor, action: Tensor, is_first: Tensor, state: VaeMdnState | None) -> VaeMdnState:
        B, T, _ = z.shape
        state = state if state is not None else self.initial_state(B)
        z_prev = torch.cat([state.z[:, None], z[:, :-1]], 1)  # [B, T, Z]: the latent before each row
        h, c = self.memory.scan(z_prev, action, is_first, state.h, state.c)  # [B, T, D]
        return VaeMdnState(z, h, c)

    def step(self, state: VaeMdnState, action: Tensor, obs: dict[str, Tensor], is_first: Tensor,
             generator: torch.Generator | None = None) -> VaeMdnState:
        """One env step while acting: ``action [K, A]`` (model encoding) led to ``obs [K, ...]``;
        restarts from the initial state where ``is_first [K]``."""
        keep = (~is_first.bool()).to(state.z.dtype)[:, None]  # [K, 1]
        h, c = self.memory.step(state.h * keep, state.c * keep, state.z * keep, action * keep)
        return VaeMdnState(self.encode(obs, generator), h, c)

    def dream_step(self, state: VaeMdnState, action: Tensor, tau: float | None = None,
                   generator: torch.Generator | None = None) -> VaeMdnState:
        """One step inside the dream: M's LSTM on ``[z, action]``, then ``z ~ M(h)`` at ``tau``
        (default: ``cfg.mdn.temperature``). Shapes: ``state [N]``, ``action [N, A]``."""
        h, c = self.memory.step(state.h, state.c, state.z, action)
        z = self.memory.dist(h).sample(self.tau if tau is None else tau, generator)
        return VaeMdnState(z, h, c)

    def imagine(self, start: VaeMdnState, policy: Callable[[VaeMdnState], Tensor], horizon: int,
                tau: float | None = None, generator: torch.Generator | None = None,
                ) -> tuple[VaeMdnState, Tensor]:
        """States ``[N, H+1]`` (index 0 is ``start``) and actions ``[N, H+1, A]`` under
        ``policy``; the last action is chosen but never executed (as the RSSM's)."""
        states, actions = [start], []
        state = start
        for _ in range(horizon):
            action = policy(state)
            actions.append(action)
            state = self.dream_step(state, action, tau, generator)
            states.append(state)
        actions.append(policy(state))
        return VaeMdnState.stack(states, 1), torch.stack(actions, 1)

    def imagine_with_actions(self, start: VaeMdnState, actions: Tensor, tau: float | None = None,
                             generator: torch.Generator | None = None) -> VaeMdnState:
        """Dream states ``[B, H]`` reached from ``start [B]`` by the given ``actions [B, H, A]``."""
        states, state = [], start
        for t in range(actions.shape[1]):
            state = self.dream_step(state, actions[:, t], tau, generator)
            states.append(state)
        return VaeMdnState.stack(states, 1)

    def features(self, state: VaeMdnState) -> Tensor:
        return state.feat()

    def latent_dist(self, state: VaeMdnState) -> MixtureDist:
        """M's mixture over the state's ``z`` (from its ``h``): what a dream samples from."""
        return self.memory.dist(state.h)

    # --- the interface: heads -----------------------------------------------------------------

    def decode(self, feat: Tensor) -> dict[str, Any]:
        """Observation distributions per key from the features' ``z``; images in [-0.5, 0.5]."""
        return self.vae.decode(feat[..., : self.latent_dim])

    def reconstruct(self, feat: Tensor) -> dict[str, Tensor]:
        """Decoded observations in display units: images float in [0, 1], vectors as they are."""
        images = set(self.vae.image_keys)
        return {k: (d.mode + 0.5).clamp(0, 1) if k in images else d.mode for k, d in self.decode(feat).items()}

    def reward_dist(self, feat: Tensor):
        return self.memory.reward(feat)

    def cont_dist(self, feat: Tensor):
        return self.memory.cont(feat)

    def categorical_latents(self, state: VaeMdnState) -> None:
        return None  # Gaussian latents

    # --- the interface: artifacts -------------------------------------------------------------

    def save(self, path: Path | str, stage_config: dict[str, Any] | None = None, **meta: Any) -> None:
        """Write ``world_model.pt`` (``meta``: update, calibration, datasets, batch_size, seq_len)."""
        model_config = {"family": FAMILY, "family_format": FAMILY_FORMAT, **config_lib.to_dict(self.cfg)}
        checkpoint.save(path, checkpoint.WorldModelArtifact(
            **checkpoint.spaces_json(self.observation_space, self.action_space),
            stage_config=stage_config or {}, model_config=model_config, weights=self.state_dict(), **meta))

    @classmethod
    def load(cls, path: Path | str, device: str | torch.device = "cpu",
             ) -> tuple[VaeMdnWorldModel, checkpoint.WorldModelArtifact]:
        """Rebuild the model from a ``world_model.pt`` alone; returns it with its artifact."""
        artifact = checkpoint.load(path, checkpoint.WorldModelArtifact, map_location=device)
        return cls.from_artifact(artifact, device, path), artifact

    @classmethod
    def from_artifact(cls, artifact: checkpoint.WorldModelArtifact, device: str | torch.device = "cpu",
                      path: Path | str = "world_model.pt") -> VaeMdnWorldModel:
        """The model of an already loaded artifact (a loader that dispatches on the family)."""
        model_config = artifact.model_config
        if not is_family(model_config):
            raise DreamerError(
                f"{path} holds a {model_config.get('family', 'rssm')} world model, not a World Models (VAE + "
                "MDN-RNN) one. Load it with the loader of its family (the run's own stages do this).")
        if model_config.get("family_format", 1) > FAMILY_FORMAT:
            raise DreamerError(
                f"{path} holds a World Models world model of format {model_config['family_format']}, but this "
                f"version reads format {FAMILY_FORMAT} at most. Load it with the dreamer-core version that wrote it.")
        if model_config.get("family_format", 1) < 2:  # before vae.output existed: the sigmoid
            model_config = {**model_config, "vae": {**model_config.get("vae", {}), "output": "sigmoid"}}
        cfg = config_lib.from_dict(WorldModelsConfig, model_config)
        model = cls(cfg, *artifact.spaces()).to(device)
        model.load_state_dict(artifact.weights)
        return model

    # --- the loss -------------------------------------------------------------------------------

    def loss(self, batch: Batch, state: VaeMdnState | None = None,
             ) -> tuple[Tensor, dict[str, Tensor], VaeMdnState]:
        """The weighted loss of the current phase on a ``[B, T]`` batch.

        Returns:
            loss (scalar), metrics (detached: ``loss/<term>`` means and diagnostics), the
            posterior states ``[B, T]``.
        """
        terms, post, metrics = self.loss_terms(batch, state)
        weights = self.loss_weights(terms)
        total = sum(weights[k] * v.mean() for k, v in terms.items())
        metrics.update({f"loss/{k}": v.detach().mean() for k, v in terms.items()})
        return total, metrics, post

    def loss_weights(self, terms: Iterable[str]) -> dict[str, float]:
        """The configured weight of each term in ``terms``."""
        return {k: getattr(self.cfg.weights, k) for k in terms}

    def loss_terms(self, batch: Batch, state: VaeMdnState | None = None, phase: str | None = None,
                   ) -> tuple[dict[str, Tensor], VaeMdnState, dict[str, Tensor]]:
        """Unweighted per-row terms ``[B, T]`` of ``phase`` (default: the current one), the
        posterior states ``[B, T]`` and diagnostics.

        Terms: ``recon`` (negative log-likelihood of the observations: summed squared errors),
        ``kl`` (to N(0, I), floored at ``kl_tolerance * Z``) for V; ``dyn`` (mixture NLL of
        ``z_t`` given ``h_t``), ``reward``, ``cont`` and ``inverse`` for M.
        """
        phase = phase or self.phase
        if phase not in PHASES:
            raise DreamerError(f"Unknown training phase {phase!r}; use one of {', '.join(PHASES)}.")
        B, T = batch.shape
        action = self.actions.encode(batch.action)  # [B, T, A]
        train_vae = phase != "memory"
        terms: dict[str, Tensor] = {}
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_vae):  # memory: V builds no graph
            mean, std = self.vae.encode(batch.obs)  # [B, T, Z]
            z = VAE.sample(mean, std) if self.cfg.sample_latents else mean
        if train_vae:
            recon = torch.zeros_like(batch.reward)
            for key, dist in self.vae.decode(z).items():
                recon = recon - dist.log_prob(_target(batch.obs[key]))
            terms["recon"] = recon
            terms["kl"] = kl_to_standard_normal(mean, std, self.cfg.vae.kl_tolerance * self.latent_dim)
        metrics = {"kl_raw": kl_to_standard_normal(mean, std).detach().mean(), "latent_std": std.detach().mean()}
        if phase == "vae":  # M is not trained: its states come without a graph
            with torch.no_grad():
                return terms, self._scan(z, action, batch.is_first, state), metrics
        post = self._scan(z, action, batch.is_first, state)  # joint: LSTM inputs carry V's gradient
        assert post.h.shape == (B, T, self.cfg.mdn.hidden), post.h.shape
        feat = post.feat()  # [B, T, F]
        mixture = self.memory.dist(post.h)
        terms["dyn"] = -mixture.log_prob(z.detach())  # V's latents are fixed targets (module docstring)
        terms["reward"] = -self.reward_dist(feat).log_prob(batch.reward)
        terms["cont"] = -self.cont_dist(feat).log_prob(1.0 - batch.is_terminal.float())
        if self.inverse_head is not None:
            terms["inverse"] = self._inverse_loss(z, batch, phase)
        with torch.no_grad():
            metrics["mixture_std"] = mixture.variance.sqrt().mean()
            metrics["reward_pred_mean"] = self.reward_dist(feat).mode.mean()
        return terms, post, metrics

    # --- inverse model --------------------------------------------------------------------------

    def inverse_dist(self, z: Tensor, phase: str | None = None):
        """Distribution of a_{t+1} given ``(z_t, z_{t+1})``: ``z [B, T, Z]``; output over T-1."""
        phase = phase or self.phase
        if phase != "joint" or not self.cfg.inverse.grad_to_vae:
            z = z.detach()
        pair = torch.cat([z[:, :-1], z[:, 1:]], -1)  # [B, T-1, 2Z]
        return self.actions.inverse_dist(self.inverse_head(pair))

    def _inverse_loss(self, z: Tensor, batch: Batch, phase: str) -> Tensor:
        """NLL of a_{t+1} per row ``[B, T]`` (row 0 and rows before an episode start are 0)."""
        nll = -self.inverse_dist(z, phase).log_prob(self.actions.inverse_target(batch.action[:, 1:]))  # [B, T-1]
        valid = ~batch.is_first[:, 1:]  # a_{t+1} is the zero placeholder at episode starts
        return F.pad(torch.where(valid, nll, torch.zeros_like(nll)), (1, 0))

    def inverse_accuracy(self, feat: Tensor, batch: Batch) -> Tensor | None:
        """Held-out metric: accuracy (discrete; per button for multi-binary) or MSE (Box) of the
        inverse model on the features' ``z``; None without an inverse model."""
        if self.inverse_head is None:
            return None
        dist = self.inverse_dist(feat[..., : self.latent_dim], "memory")
        hit = self.actions.inverse_metric(dist, batch.action[:, 1:])  # [B, T-1]
        return hit[~batch.is_first[:, 1:]].mean()

    # --- diagnostics and dream views ------------------------------------------------------------

    @torch.no_grad()
    def latent_usage(self, post: VaeMdnState) -> Tensor:
        """Categorical class usage does not apply to Gaussian latents: NaN."""
        return torch.tensor(float("nan"))

    @torch.no_grad()
    def open_loop(self, batch: Batch, context: int, horizon: int, sample: bool = True) -> dict[str, Tensor]:
        """Dream ``horizon`` rows after ``context`` observed ones under the recorded actions
        (``sample``: at the model's temperature; False: tau = 0, the mixture's mode).

        Returns ``mse`` and ``baseline`` (repeat the last context row) ``[horizon]`` averaged
        over keys (images in [0, 1] units), and ``reward_mse`` ``[horizon]``.
        """
        B, T = batch.shape
        assert T >= context + horizon, (T, context, horizon)
        action = self.actions.encode(batch.action)
        post = self._scan(self.encode({k: v[:, :context] for k, v in batch.obs.items()}), action[:, :context],
                          batch.is_first[:, :context], None)
        dream = self.imagine_with_actions(post[:, -1], action[:, context:context + horizon],
                                          tau=None if sample else 0.0)
        feat = dream.feat()
        mse = torch.zeros(horizon, device=feat.device)
        base = torch.zeros(horizon, device=feat.device)
        recon = self.reconstruct(feat)
        for key, pred in recon.items():
            truth = batch.obs[key][:, context:context + horizon]
            mse += _per_step_mse(pred, truth)
            base += _per_step_mse(batch.obs[key][:, context - 1:context].expand_as(truth), truth)
        reward_mse = (self.reward_dist(feat).mode - batch.reward[:, context:context + horizon]).pow(2).mean(0)
        return {"mse": mse / len(recon), "baseline": base / len(recon), "reward_mse": reward_mse}

    @torch.no_grad()
    def reconstruct_and_dream(self, batch: Batch, context: int, tau: float | None = None,
                              ) -> dict[str, dict[str, Tensor] | Tensor]:
        """V's reconstructions of every row, and a dream after ``context`` rows (the same keys
        as ``WorldModel.reconstruct_and_dream``, for the dream views).

        Returns:
            ``recon`` / ``dream``: key -> ``[B, T, ...]`` in display units; ``recon_reward``,
            ``dream_reward``, ``recon_cont``, ``dream_cont`` ``[B, T]``; and ``dream_std``
            ``[B, T]``: the spread of M's mixture behind each row (its std, averaged over the
            latent dimensions), the model's uncertainty over time.
        """
        B, T = batch.shape
        context = max(1, min(context, T))
        post = self.observe(batch)  # [B, T]
        states = post
        if context < T:
            action = self.actions.encode(batch.action)
            dream = self.imagine_with_actions(post[:, context - 1], action[:, context:], tau)  # [B, T - context]
            states = VaeMdnState.cat([post[:, :context], dream], 1)
        out: dict[str, dict[str, Tensor] | Tensor] = {}
        for name, state in (("recon", post), ("dream", states)):
            feat = state.feat()
            out[name] = self.reconstruct(feat)
            out[f"{name}_reward"] = self.reward_dist(feat).mode
            out[f"{name}_cont"] = self.cont_dist(feat).mean
        out["dream_std"] = self.latent_dist(states).variance.sqrt().mean(-1)
        return out


def _check_config(cfg: WorldModelsConfig) -> None:
    problems = []
    if cfg.training not in TRAININGS:
        problems.append(f"training must be one of {', '.join(TRAININGS)} (got {cfg.training!r})")
    if cfg.vae.latent < 1 or cfg.mdn.hidden < 1 or cfg.mdn.mixtures < 1:
        problems.append("vae.latent, mdn.hidden and mdn.mixtures must be at least 1")
    if cfg.mdn.temperature < 0:
        problems.append(f"mdn.temperature must be >= 0 (got {cfg.mdn.temperature})")
    if problems:
        raise DreamerError("Invalid World Models settings: " + "; ".join(problems) + ".")


def _target(obs: Tensor) -> Tensor:
    """Images are scored in the [-0.5, 0.5] scale of ``preprocess_image``; vectors as they are."""
    return preprocess_image(obs) if obs.dtype == torch.uint8 else obs.float()


def _per_step_mse(pred: Tensor, truth: Tensor) -> Tensor:
    """``[B, H, ...]`` -> ``[H]``; uint8 tensors (frames) are compared in [0, 1] units."""
    pred = pred.float() / 255.0 if pred.dtype == torch.uint8 else pred.float()
    truth = truth.float() / 255.0 if truth.dtype == torch.uint8 else truth.float()
    return (pred - truth).pow(2).flatten(2).mean(-1).mean(0)


# --- calibrated loss-weight balancing ---------------------------------------------------------


def balance_weights(magnitudes: dict[str, float], priority: Sequence[str] = PRIORITY,
                    tied: dict[str, str] | None = None) -> dict[str, float]:
    """:func:`losses.balance_weights` (the rule of stage 02's RSSM calibration) with this
    family's priority and its KL tied to the reconstruction (default :data:`TIED`)."""
    return losses.balance_weights(magnitudes, priority, TIED if tied is None else tied)


@torch.no_grad()
def measure_magnitudes(model: VaeMdnWorldModel, batches: Iterable[Batch], phase: str = "joint") -> dict[str, float]:
    """Mean absolute value of each unit-weight term over ``batches`` (no update)."""
    sums: dict[str, float] = {}
    n = 0
    for batch in batches:
        terms = model.loss_terms(batch, phase=phase)[0]
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + abs(float(v.mean()))
        n += 1
    if not n:
        raise DreamerError("Calibrating the loss weights needs at least one batch.")
    return {k: v / n for k, v in sums.items()}


def calibrate(model: VaeMdnWorldModel, batches: Sequence[Batch], priority: Sequence[str] = PRIORITY,
              warmup_updates: int = 0, lr: float = 1e-4) -> dict[str, Any]:
    """Pick joint-training weights for ``model`` and set them (``model.cfg.weights``).

    A throwaway copy of the model first takes ``warmup_updates`` Adam steps with unit weights
    (cycling through ``batches``; untrained magnitudes mislead, the reconstruction falls fast),
    then the unit-weight terms are measured on ``batches``. The caller's RNG stream is left as
    it was. Returns ``{"magnitudes": ..., "weights": ...}`` for the stage to print and save.
    """
    with torch.random.fork_rng(devices=[]):
        probe = copy.deepcopy(model)
        probe.set_phase("joint")
        probe.cfg = dataclasses.replace(probe.cfg, weights=LossWeights())
        if warmup_updates:
            optimizer = torch.optim.Adam([p for p in probe.parameters() if p.requires_grad], lr=lr)
            for i in range(warmup_updates):
                loss = probe.loss(batches[i % len(batches)])[0]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        magnitudes = measure_magnitudes(probe, batches)
    weights = balance_weights(magnitudes, priority)
    model.cfg = dataclasses.replace(model.cfg, weights=dataclasses.replace(model.cfg.weights, **weights))
    return {"magnitudes": magnitudes, "weights": weights}


def describe_calibration(calibration: dict[str, Any]) -> str:
    """One line: ``term: |magnitude| x weight`` per term (what a stage prints)."""
    mags, weights = calibration["magnitudes"], calibration["weights"]
    return ", ".join(f"{k}: |{mags[k]:.4g}| x {weights[k]:.4g}" for k in weights)
