"""The DreamerV3 world model: encoder + RSSM + heads (+ optional inverse-dynamics head).

``WorldModel`` implements ``dreamer_core.interfaces.WorldModelInterface``, the only way
callers reach it: ``initial_state``, ``observe``, ``step``, ``imagine``, ``features``,
``decode`` / ``reward_dist`` / ``cont_dist``, ``loss``, ``save`` / ``load`` (self-describing:
``WorldModel.load(path)`` needs nothing but the file). ``loss(batch)`` returns
``(loss, metrics, post)``: the weighted sum of the terms, a dict of detached per-term means
(tensors; the stage reduces them once per log interval), and the posterior states (stage 03
starts imagination from them).

Row alignment (data/schema.py): row t holds obs_t, the action a_t that led to it, and the
reward r_t received on arriving. The posterior s_t = post(s_{t-1}, a_t, obs_t) therefore
predicts obs_t (decoder), r_t (reward head) and 1 - is_terminal_t (continue head); the
inverse head predicts a_{t+1} from (s_t, s_{t+1}) where row t+1 is not an episode start.

Variants (``WorldModelConfig.kl``): v3 (dyn/rep with free nats), v2 (KL balancing), v1
(Gaussian latents, one KL with free nats); reward heads: two-hot (v3) or MSE (v1/v2).

Encoder and decoder are built by name (``EncoderConfig.name`` / ``.decoder``, registered with
``nets.encoders.register_encoder`` / ``register_decoder``; ``default``: ``MultiEncoder`` /
``MultiDecoder``). ``save`` stores the names as ``module:name`` so ``load`` (stages 03, 04)
imports the module that registers a user's own networks; files without names (written before
the registry) load with the default ones.

Imports: nets, losses, types, config (dict <-> dataclass), checkpoint, errors.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_core import checkpoint, losses
from dreamer_core import config as config_lib
from dreamer_core.errors import DreamerError
from dreamer_core.nets import distributions as dists
from dreamer_core.nets import encoders
from dreamer_core.nets.actions import ActionSpace
from dreamer_core.nets.encoders import preprocess_image
from dreamer_core.nets.layers import MLP
from dreamer_core.nets.rssm import RSSM, RSSMConfig, RSSMState
from dreamer_core.types import Batch

Tensor = torch.Tensor


@dataclass(frozen=True)
class EncoderConfig:
    """The observation networks: which encoder and decoder, and the options they are built with.

    Attributes:
        name: the registered encoder (``default``: ``MultiEncoder``; ``module:name`` or
            ``path/to/file.py:name`` imports the module that registers it first).
        decoder: the registered decoder, named the same way (``default``: ``MultiDecoder``).
        cnn_depth: channels of the first CNN stage (stage i has ``cnn_depth * cnn_mults[i]``).
        cnn_mults: channel multipliers per CNN stage.
        mlp_units: width of the vector MLPs.
        mlp_layers: depth of the vector MLPs.
        symlog_inputs: symlog the vector inputs of the encoder (DreamerV3).
    """

    name: str = "default"  # encoders.DEFAULT
    decoder: str = "default"
    cnn_depth: int = 32
    cnn_mults: tuple[int, ...] = (1, 2, 4, 8)
    mlp_units: int = 512
    mlp_layers: int = 2
    symlog_inputs: bool = True


@dataclass(frozen=True)
class HeadConfig:
    units: int = 512
    layers: int = 2
    reward: str = "twohot"  # twohot (v3) | mse (v1, v2)
    bins: int = 255


@dataclass(frozen=True)
class KLConfig:
    mode: str = "v3"  # v3 | v2 | v1
    free_nats: float = 1.0
    balance: float = 0.8  # v2 only


@dataclass(frozen=True)
class LossScales:
    """Weights of the loss terms (DreamerV3 2023: dyn 0.5, rep 0.1, the rest 1)."""

    recon: float = 1.0
    reward: float = 1.0
    cont: float = 1.0
    dyn: float = 0.5
    rep: float = 0.1
    kl: float = 1.0  # v1/v2: the single KL term
    inverse: float = 1.0


@dataclass(frozen=True)
class InverseConfig:
    enabled: bool = False
    grad_to_repr: bool = True  # False: the head learns from detached latents only
    units: int = 256
    layers: int = 2


@dataclass(frozen=True)
class WorldModelConfig:
    """Everything that defines a world model (DreamerV3 2023 at size S by default; the stages'
    ``--preset`` names set groups of these fields, e.g. ``tiny`` or ``dreamerv2``).

    Attributes:
        rssm: the recurrent state-space model (sizes, latent kind, GRU variant).
        encoder: which encoder and decoder (by registered name) and their options.
        heads: reward and continue heads (width, depth, two-hot or MSE reward).
        kl: the KL variant (``v3`` dyn/rep with free nats, ``v2`` balancing, ``v1`` Gaussian).
        scales: the weight of each loss term.
        inverse: the optional inverse-dynamics head.
        norm: the normalisation of hidden layers (``layer``, ``rms``, ``none``).
        act: the activation of hidden layers (``silu``, ``elu``, ...).
    """

    rssm: RSSMConfig = field(default_factory=RSSMConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    scales: LossScales = field(default_factory=LossScales)
    inverse: InverseConfig = field(default_factory=InverseConfig)
    norm: str = "layer"
    act: str = "silu"


def qualify_networks(cfg: WorldModelConfig) -> WorldModelConfig:
    """``cfg`` with its encoder and decoder names as a checkpoint or a run's config stores them:
    ``module:name`` (``encoders.qualified_name``), so another process imports the module that
    registers them; the built-in names stay as they are."""
    enc = cfg.encoder
    named = dataclasses.replace(enc, name=encoders.qualified_name("encoder", enc.name),
                                decoder=encoders.qualified_name("decoder", enc.decoder))
    return cfg if named == enc else dataclasses.replace(cfg, encoder=named)


def network_problems(cfg: WorldModelConfig) -> list[str]:
    """What is wrong with the encoder and decoder names of ``cfg`` (empty when both name a
    registered network); imports the modules that ``module:name`` names, as building does."""
    return [problem.rstrip(".") for problem in encoders.network_problems(cfg.encoder.name, cfg.encoder.decoder)]


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder, reward, continue (and inverse) heads; see the module docstring.

    Args:
        cfg: the model's config.
        observation_space: a ``gymnasium.spaces.Dict`` of image keys (uint8 ``[Hi, Wi, C]``
            Boxes) and vector keys (float Boxes of rank 0 or 1).
        action_space: the env's action space (Discrete, Box, MultiBinary, MultiDiscrete).

    Raises:
        DreamerError: latents and KL that do not go together, or an encoder or decoder name
            that nobody registered.
    """

    def __init__(self, cfg: WorldModelConfig, observation_space: gym.spaces.Dict, action_space: gym.Space):
        super().__init__()
        if (cfg.rssm.latent == "gaussian") != (cfg.kl.mode == "v1"):
            raise DreamerError(
                f"The world model's latents ({cfg.rssm.latent}) and KL ({cfg.kl.mode}) do not go together: "
                "Gaussian latents take the V1 KL, categorical latents the V2 or V3 KL. Use --preset dreamerv1 "
                "for Gaussian latents, or set both model.rssm.latent and model.kl.mode."
            )
        self.cfg = cfg
        self.observation_space = observation_space
        self.action_space = action_space
        self.actions = ActionSpace(action_space)
        enc = cfg.encoder
        options = dict(cnn_depth=enc.cnn_depth, cnn_mults=enc.cnn_mults, mlp_units=enc.mlp_units,
                       mlp_layers=enc.mlp_layers, norm=cfg.norm, act=cfg.act)
        self.encoder = encoders.make_encoder(enc.name, observation_space, symlog_inputs=enc.symlog_inputs,
                                             **options)
        self.rssm = RSSM(cfg.rssm, int(self.encoder.embed_dim), self.actions.dim)
        feat = self.rssm.feat_dim
        self.decoder = encoders.make_decoder(enc.decoder, feat, observation_space, **options)
        # Keys whose observations are frames (uint8 [Hi, Wi, C]): decoded in [-0.5, 0.5], shown in [0, 1].
        self._image_keys = frozenset(k for k, s in observation_space.spaces.items()
                                     if s.dtype == np.uint8 and len(s.shape) == 3)
        heads = cfg.heads
        reward_out = heads.bins if heads.reward == "twohot" else 1
        onehot = self.rssm.feat_onehot  # heads read RSSM features: gather-sum first layers
        # Every network initialises itself (nets.layers.init_weights); V3's two-hot reward output
        # starts at 0 (outscale 0): predictions start at 0, no early reward hallucination.
        self.reward_head = MLP(feat, reward_out, heads.units, heads.layers, norm=cfg.norm, act=cfg.act, onehot=onehot,
                               outscale=0.0 if heads.reward == "twohot" else 1.0)
        if heads.reward == "twohot":
            self.register_buffer("bins", dists.symexp_bins(heads.bins), persistent=False)
        self.cont_head = MLP(feat, 1, heads.units, heads.layers, norm=cfg.norm, act=cfg.act, onehot=onehot)
        self.inverse_head = None
        if cfg.inverse.enabled:
            self.actions.check_inverse_support()
            inv = cfg.inverse
            self.inverse_head = MLP(2 * feat, self.actions.inverse_out_dim, inv.units, inv.layers, norm=cfg.norm,
                                    act=cfg.act)

    # --- the interface: states ---------------------------------------------------------------

    @property
    def feat_dim(self) -> int:
        return self.rssm.feat_dim

    @property
    def feat_onehot(self) -> tuple[int, int, int] | None:
        return self.rssm.feat_onehot

    def initial_state(self, batch_size: int) -> RSSMState:
        return self.rssm.initial(batch_size)

    def observe(self, batch: Batch, state: RSSMState | None = None) -> RSSMState:
        """Posterior states ``[B, T]`` of a stored batch (``state``: the one before row 0)."""
        return self._observe(batch, state)[0]

    def _observe(self, batch: Batch, state: RSSMState | None = None) -> tuple[RSSMState, RSSMState]:
        embed = self.encoder(batch.obs)  # [B, T, E]
        action = self.actions.encode(batch.action)  # [B, T, A]
        return self.rssm.observe(embed, action, batch.is_first, state)

    def step(self, state: RSSMState, action: Tensor, obs: dict[str, Tensor], is_first: Tensor,
             generator: torch.Generator | None = None) -> RSSMState:
        """One env step while acting (row convention of data/schema.py: ``action [K, A]``, in the
        model encoding, led to ``obs``); restarts from the initial state where ``is_first [K]``."""
        embed = self.encoder({k: v[:, None] for k, v in obs.items()})[:, 0]  # [K, E]
        post, _ = self.rssm.obs_step(state, action, embed, is_first, generator=generator)
        return post

    def imagine(self, start: RSSMState, policy: Callable[[RSSMState], Tensor], horizon: int,
                ) -> tuple[RSSMState, Tensor]:
        """States ``[N, H+1]`` and actions ``[N, H+1, A]`` of the prior rolled out under ``policy``
        (``RSSM.imagine``: the last action is chosen but never executed)."""
        return self.rssm.imagine(start, policy, horizon)

    def features(self, state: RSSMState) -> Tensor:
        return state.feat()

    def decode(self, feat: Tensor) -> dict[str, Any]:
        """Observation distributions per key; images in the encoder's [-0.5, 0.5] scale."""
        return self.decoder(feat)

    def reconstruct(self, feat: Tensor) -> dict[str, Tensor]:
        """Decoded observations in display units: images float in [0, 1], vectors as they are."""
        return {k: (d.mode + 0.5).clamp(0, 1) if k in self._image_keys else d.mode
                for k, d in self.decode(feat).items()}

    def categorical_latents(self, state: RSSMState) -> tuple[Tensor, Tensor] | None:
        """``(samples, probabilities)`` ``[..., S, K]`` of categorical latents; None for Gaussian ones."""
        if not state.is_categorical:
            return None
        return state.stoch, state.logits.exp()

    # --- the interface: artifacts -------------------------------------------------------------

    def save(self, path: Path | str, stage_config: dict[str, Any] | None = None, **meta: Any) -> None:
        """Write ``world_model.pt``: config, spaces and weights, the writing stage's config and
        ``meta`` (update, calibration, datasets, batch_size, seq_len: checkpoint.WorldModelArtifact).

        The encoder and decoder names are stored as ``module:name`` (``qualify_networks``), so
        ``load`` in another process imports the module that registers them."""
        checkpoint.save(path, checkpoint.WorldModelArtifact(
            **checkpoint.spaces_json(self.observation_space, self.action_space),
            stage_config=stage_config or {}, model_config=config_lib.to_dict(qualify_networks(self.cfg)),
            weights=self.state_dict(), **meta))

    @classmethod
    def load(cls, path: Path | str, device: str | torch.device = "cpu",
             ) -> tuple[WorldModel, checkpoint.WorldModelArtifact]:
        """Rebuild the model from a ``world_model.pt`` alone; returns it with its artifact.

        A user's encoder or decoder is rebuilt by the name the file stores (``module:name``:
        the module is imported first); a DreamerError says what to do when it cannot be."""
        artifact = checkpoint.load(path, checkpoint.WorldModelArtifact, map_location=device)
        family = artifact.model_config.get("family")
        if family is not None:  # another family's world_model.pt (e.g. worldmodels: VAE + MDN-RNN)
            raise DreamerError(
                f"{path} holds a {family} world model, not a DreamerV3 (RSSM) one, so WorldModel.load cannot "
                "rebuild it. Load it with runs.load_world_model(RUN), which picks the loader of its family "
                "(worldmodels.VaeMdnWorldModel.load for World Models runs).")
        cfg = config_lib.from_dict(WorldModelConfig, artifact.model_config)
        model = cls(cfg, *artifact.spaces()).to(device)
        model.load_state_dict(artifact.weights)
        return model, artifact

    # --- heads ----------------------------------------------------------------------------

    def reward_dist(self, feat: Tensor):
        out = self.reward_head(feat)
        if self.cfg.heads.reward == "twohot":
            return dists.TwoHotDist(out, self.bins)
        return dists.MSEDist(out.squeeze(-1), 0)

    def cont_dist(self, feat: Tensor) -> dists.BernoulliDist:
        return dists.BernoulliDist(self.cont_head(feat).squeeze(-1))

    # --- the loss -------------------------------------------------------------------------

    def loss(self, batch: Batch, state: RSSMState | None = None) -> tuple[Tensor, dict[str, Tensor], RSSMState]:
        """World-model loss on a ``[B, T]`` batch.

        Returns:
            loss (scalar), metrics (detached tensors: ``loss/<term>`` means and diagnostics),
            post (posterior states ``[B, T]``).
        """
        B, T = batch.shape
        post, prior = self._observe(batch, state)
        assert post.deter.shape == (B, T, self.cfg.rssm.deter), post.deter.shape
        feat = post.feat()  # [B, T, F]
        terms = self._recon_terms(feat, batch)
        terms.update(self._kl_terms(post, prior))
        if self.inverse_head is not None:
            terms["inverse"] = self._inverse_loss(feat, batch)
        scales = self._scales()
        assert set(terms) == set(scales), (sorted(terms), sorted(scales))
        total = sum(scales[k] * v.mean() for k, v in terms.items())
        metrics = {f"loss/{k}": v.detach().mean() for k, v in terms.items()}
        metrics.update(self._diagnostics(post, prior, feat, batch))
        return total, metrics, post

    def _recon_terms(self, feat: Tensor, batch: Batch) -> dict[str, Tensor]:
        """Negative log-likelihoods ``[B, T]`` of observations, reward and continue flag."""
        recon = torch.zeros_like(batch.reward)
        for key, dist in self.decoder(feat).items():
            recon = recon - dist.log_prob(_decoder_target(batch.obs[key]))
        reward = -self.reward_dist(feat).log_prob(batch.reward)
        cont = -self.cont_dist(feat).log_prob(1.0 - batch.is_terminal.float())
        return {"recon": recon, "reward": reward, "cont": cont}

    def _kl_terms(self, post: RSSMState, prior: RSSMState) -> dict[str, Tensor]:
        kl = self.cfg.kl
        if kl.mode == "v3":
            dyn, rep = losses.kl_v3(post.logits, prior.logits, kl.free_nats)
            return {"dyn": dyn, "rep": rep}
        if kl.mode == "v2":
            return {"kl": losses.kl_v2(post.logits, prior.logits, kl.balance, kl.free_nats)}
        if kl.mode == "v1":
            return {"kl": losses.kl_v1(post.mean, post.std, prior.mean, prior.std, kl.free_nats)}
        raise ValueError(f"unknown kl mode {kl.mode!r}")

    def _scales(self) -> dict[str, float]:
        s = self.cfg.scales
        scales = {"recon": s.recon, "reward": s.reward, "cont": s.cont}
        scales.update({"dyn": s.dyn, "rep": s.rep} if self.cfg.kl.mode == "v3" else {"kl": s.kl})
        if self.inverse_head is not None:
            scales["inverse"] = s.inverse
        return scales

    # --- inverse dynamics -----------------------------------------------------------------

    def inverse_dist(self, feat: Tensor):
        """Distribution of a_{t+1} given (s_t, s_{t+1}): ``feat`` is ``[..., T, F]``; output over T-1."""
        feat = feat if self.cfg.inverse.grad_to_repr else feat.detach()
        pair = torch.cat([feat[..., :-1, :], feat[..., 1:, :]], -1)  # [B, T-1, 2F]
        return self.actions.inverse_dist(self.inverse_head(pair))

    def _inverse_loss(self, feat: Tensor, batch: Batch) -> Tensor:
        """NLL of a_{t+1} per row ``[B, T]`` (row 0 and rows before an episode start are 0)."""
        dist = self.inverse_dist(feat)
        nll = -dist.log_prob(self.actions.inverse_target(batch.action[:, 1:]))  # [B, T-1]
        valid = ~batch.is_first[:, 1:]  # a_{t+1} is the zero placeholder at episode starts
        nll = torch.where(valid, nll, torch.zeros_like(nll))
        return F.pad(nll, (1, 0))  # align to [B, T]

    def inverse_accuracy(self, feat: Tensor, batch: Batch) -> Tensor | None:
        """Held-out metric: accuracy (discrete, per button for multi-binary) or MSE (box); None
        without an inverse-dynamics head."""
        if self.inverse_head is None:
            return None
        hit = self.actions.inverse_metric(self.inverse_dist(feat), batch.action[:, 1:])  # [B, T-1]
        return hit[~batch.is_first[:, 1:]].mean()

    # --- diagnostics and evaluation -------------------------------------------------------

    @torch.no_grad()
    def _diagnostics(self, post: RSSMState, prior: RSSMState, feat: Tensor, batch: Batch) -> dict[str, Tensor]:
        out = {}
        if post.logits is not None:
            out["kl"] = dists.kl_categorical(post.logits, prior.logits).mean()
            out["post_entropy"] = -(dists.softmax(post.logits) * dists.log_softmax(post.logits)).sum((-2, -1)).mean()
        out["reward_pred_mean"] = self.reward_dist(feat).mode.mean()
        return out

    @torch.no_grad()
    def latent_usage(self, post: RSSMState) -> Tensor:
        """Fraction of the S x K categorical classes that fire (are sampled) anywhere in ``post``."""
        if post.logits is None:
            return torch.tensor(float("nan"))
        used = post.stoch.flatten(0, -3).amax(0) > 0  # [S, K]
        return used.float().mean()

    @torch.no_grad()
    def open_loop(self, batch: Batch, context: int, horizon: int, sample: bool = True) -> dict[str, Tensor]:
        """Predict ``horizon`` steps after ``context`` observed rows under the recorded actions.

        The windows must not contain an episode start after row 0 (the caller picks them).
        ``sample``: draw the imagined latents (as a dream does); False takes each prior's most
        likely class instead, a deterministic point prediction.

        Returns:
            ``mse``: ``[horizon]`` mean squared error per step (images in [0, 1] pixel units,
            vectors in raw units) averaged over keys; ``baseline``: the same for repeating the
            last context observation; ``reward_mse``: ``[horizon]``.
        """
        B, T = batch.shape
        assert T >= context + horizon, (T, context, horizon)
        embed = self.encoder({k: v[:, :context] for k, v in batch.obs.items()})
        action = self.actions.encode(batch.action)
        post, _ = self.rssm.observe(embed, action[:, :context], batch.is_first[:, :context])
        last = post.map(lambda x: x[:, -1])
        prior = self.rssm.imagine_with_actions(last, action[:, context:context + horizon], sample=sample)  # [B, H]
        feat = prior.feat()
        mse = torch.zeros(horizon, device=feat.device)
        base = torch.zeros(horizon, device=feat.device)
        decoded = self.decoder(feat)
        for key, dist in decoded.items():
            truth = batch.obs[key][:, context:context + horizon]
            pred = dist.mode + 0.5 if truth.dtype == torch.uint8 else dist.mode  # images in [0, 1]
            mse += _per_step_mse(pred, truth)
            base += _per_step_mse(batch.obs[key][:, context - 1:context].expand_as(truth), truth)
        n = len(decoded)
        reward = self.reward_dist(feat).mode
        reward_mse = (reward - batch.reward[:, context:context + horizon]).pow(2).mean(0)
        return {"mse": mse / n, "baseline": base / n, "reward_mse": reward_mse}


    @torch.no_grad()
    def reconstruct_and_dream(self, batch: Batch, context: int) -> dict[str, dict[str, Tensor] | Tensor]:
        """Posterior reconstructions of every row, and an open-loop dream after ``context`` rows.

        The dream filters rows ``[0, context)`` like the posterior, then imagines the remaining
        rows under the recorded actions without seeing their observations. Rows before
        ``context`` of the dream equal the reconstruction. Values are in display units: images
        float in [0, 1] ``[B, T, Hi, Wi, C]``, vectors in their own units.

        Returns:
            ``recon`` and ``dream``: key -> ``[B, T, ...]``; ``recon_reward``, ``dream_reward``:
            ``[B, T]``; ``recon_cont``, ``dream_cont``: ``[B, T]`` continue probabilities.
        """
        B, T = batch.shape
        context = max(1, min(context, T))
        action = self.actions.encode(batch.action)  # [B, T, A]
        post, _ = self.rssm.observe(self.encoder(batch.obs), action, batch.is_first)  # [B, T]
        states = post
        if context < T:
            last = post.map(lambda x: x[:, context - 1])
            prior = self.rssm.imagine_with_actions(last, action[:, context:])  # [B, T - context]
            states = RSSMState.cat([post.map(lambda x: x[:, :context]), prior], 1)  # [B, T]
        out: dict[str, dict[str, Tensor] | Tensor] = {}
        for name, state in (("recon", post), ("dream", states)):
            feat = state.feat()
            out[name] = self.reconstruct(feat)
            out[f"{name}_reward"] = self.reward_dist(feat).mode
            out[f"{name}_cont"] = self.cont_dist(feat).mean
        return out


def _decoder_target(obs: Tensor) -> Tensor:
    """Images are scored in the encoder's [-0.5, 0.5] scale; vectors as they are."""
    return preprocess_image(obs) if obs.dtype == torch.uint8 else obs.float()


def _per_step_mse(pred: Tensor, truth: Tensor) -> Tensor:
    """``[B, H, ...]`` -> ``[H]``; uint8 tensors (frames) are compared in [0, 1] units."""
    if truth.dtype == torch.uint8:
        truth = truth.float() / 255.0
    if pred.dtype == torch.uint8:  # the repeat-last-frame baseline
        pred = pred.float() / 255.0
    return (pred.float() - truth.float()).pow(2).flatten(2).mean(-1).mean(0)


# --- replay context (online training) ---------------------------------------------------------


class ReplayContext:
    """The latent state of every replay row as the world model last saw it (DreamerV3 2025's
    "replay context").

    After each world-model update the posterior of every replayed row is stored; a window that
    starts mid-episode then begins from the stored state of the row before it instead of the
    initial state, so the model learns from states with a history longer than one window.
    Rows never replayed, or windows starting an episode, use the initial state. Categorical
    latents are stored as class indices (int16), Gaussian ones as floats. Not checkpointed: after
    a resume the states are stored again as rows are replayed.
    """

    def __init__(self, world_model: WorldModel):
        rssm = world_model.cfg.rssm
        self.world_model = world_model
        self.categorical, self.classes = rssm.latent == "categorical", rssm.classes
        self.deter = np.zeros((0, rssm.deter), np.float32)
        self.stoch = np.zeros((0, rssm.stoch), np.int16 if self.categorical else np.float32)
        self.valid = np.zeros(0, bool)

    def _ensure(self, rows: int) -> None:
        if rows <= len(self.valid):
            return
        size = max(rows, 2 * len(self.valid), 1024)
        for name in ("deter", "stoch", "valid"):
            old = getattr(self, name)
            new = np.zeros((size, *old.shape[1:]), old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def initial_state(self, previous: np.ndarray, is_first: torch.Tensor) -> RSSMState | None:
        """The state before each window: ``previous`` [B] is the replay row before each window
        (``SequenceSampler.previous_rows``; -1: none), ``is_first`` [B, T]. None when no window
        has a stored context (the model then starts every window from its initial state)."""
        prev = np.asarray(previous, dtype=np.int64)
        self._ensure(int(prev.max()) + 2)
        use = (prev >= 0) & self.valid[np.maximum(prev, 0)] & ~is_first[:, 0].cpu().numpy()
        if not use.any():
            return None
        device = is_first.device
        rows = np.maximum(prev, 0)
        deter = torch.from_numpy(self.deter[rows]).to(device)
        stoch = torch.from_numpy(self.stoch[rows]).to(device)
        if self.categorical:
            stoch = torch.nn.functional.one_hot(stoch.long(), self.classes).float()
        init = self.world_model.initial_state(len(prev))
        mask = torch.from_numpy(use).to(device)[:, None]
        stoch_mask = mask[:, :, None] if self.categorical else mask
        # Only deter and stoch of the state before a window feed the next step; the other fields
        # (the initial state's logits or mean/std) are carried along unused.
        return dataclasses.replace(init, deter=torch.where(mask, deter, init.deter),
                                   stoch=torch.where(stoch_mask, stoch, init.stoch))

    def store(self, rows: np.ndarray, post: RSSMState) -> None:
        """Remember the posterior ``[B, T]`` of the windows of replay ``rows`` ``[B, T]``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        self._ensure(int(rows.max()) + 1)
        self.deter[rows] = post.deter.reshape(len(rows), -1).float().cpu().numpy()
        stoch = post.stoch.flatten(0, 1)
        self.stoch[rows] = (stoch.argmax(-1) if self.categorical else stoch.float()).cpu().numpy()
        self.valid[rows] = True
