"""The world model: encoder + RSSM + heads (+ optional inverse-dynamics head).

``WorldModel.loss(batch)`` returns ``(loss, metrics, post)``: the weighted sum of the terms,
a dict of detached per-term means (tensors; the stage reduces them once per log interval),
and the posterior states (stage 03 starts imagination from them).

Row alignment (data/schema.py): row t holds obs_t, the action a_t that led to it, and the
reward r_t received on arriving. The posterior s_t = post(s_{t-1}, a_t, obs_t) therefore
predicts obs_t (decoder), r_t (reward head) and 1 - is_terminal_t (continue head); the
inverse head predicts a_{t+1} from (s_t, s_{t+1}) where row t+1 is not an episode start.

Variants (``WorldModelConfig.kl``): v3 (dyn/rep with free nats), v2 (KL balancing), v1
(Gaussian latents, one KL with free nats); reward heads: two-hot (v3) or MSE (v1/v2).

Imports: nets, losses, types, data.schema (for spaces).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from dreamer_core import losses
from dreamer_core.errors import DreamerError
from dreamer_core.nets import distributions as dists
from dreamer_core.nets.encoders import MultiDecoder, MultiEncoder, preprocess_image
from dreamer_core.nets.layers import MLP, zero_init
from dreamer_core.nets.rssm import RSSM, RSSMConfig, RSSMState
from dreamer_core.types import Batch

Tensor = torch.Tensor


@dataclass(frozen=True)
class EncoderConfig:
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
    rssm: RSSMConfig = field(default_factory=RSSMConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    heads: HeadConfig = field(default_factory=HeadConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    scales: LossScales = field(default_factory=LossScales)
    inverse: InverseConfig = field(default_factory=InverseConfig)
    norm: str = "layer"
    act: str = "silu"


class ActionCodec:
    """Stored actions (data/schema.py dtypes) -> float model inputs ``[..., A]`` and back."""

    def __init__(self, space: gym.Space):
        self.space = space
        if isinstance(space, gym.spaces.Discrete):
            self.kind, self.dim = "discrete", int(space.n)
        elif isinstance(space, gym.spaces.MultiBinary):
            self.kind, self.dim = "multibinary", int(torch.tensor(space.n).prod())
        elif isinstance(space, gym.spaces.MultiDiscrete):
            self.kind, self.dim = "multidiscrete", int(space.nvec.sum())
            self.nvec = [int(n) for n in space.nvec.ravel()]
        elif isinstance(space, gym.spaces.Box):
            self.kind, self.dim = "box", int(torch.tensor(space.shape).prod())
        else:
            raise TypeError(f"unsupported action space {space}")

    def encode(self, action: Tensor) -> Tensor:
        """``[...]``/``[..., n]`` stored actions -> ``[..., A]`` float."""
        if self.kind == "discrete":
            return F.one_hot((action - int(self.space.start)).long(), self.dim).float()
        if self.kind == "multidiscrete":
            parts = [F.one_hot(action[..., i].long(), n) for i, n in enumerate(self.nvec)]
            return torch.cat(parts, -1).float()
        return action.float().flatten(-len(self.space.shape)) if self.space.shape else action.float()


class WorldModel(nn.Module):
    """Encoder, RSSM, decoder, reward, continue (and inverse) heads; see the module docstring."""

    def __init__(self, cfg: WorldModelConfig, observation_space: gym.spaces.Dict, action_space: gym.Space):
        super().__init__()
        self.cfg = cfg
        self.observation_space = observation_space
        self.action_space = action_space
        self.codec = ActionCodec(action_space)
        enc = cfg.encoder
        self.encoder = MultiEncoder(observation_space, cnn_depth=enc.cnn_depth, cnn_mults=enc.cnn_mults,
                                    mlp_units=enc.mlp_units, mlp_layers=enc.mlp_layers, norm=cfg.norm,
                                    act=cfg.act, symlog_inputs=enc.symlog_inputs)
        self.rssm = RSSM(cfg.rssm, self.encoder.embed_dim, self.codec.dim)
        feat = self.rssm.feat_dim
        self.decoder = MultiDecoder(feat, observation_space, cnn_depth=enc.cnn_depth, cnn_mults=enc.cnn_mults,
                                    mlp_units=enc.mlp_units, mlp_layers=enc.mlp_layers, norm=cfg.norm, act=cfg.act)
        heads = cfg.heads
        reward_out = heads.bins if heads.reward == "twohot" else 1
        onehot = self.rssm.feat_onehot  # heads read RSSM features: gather-sum first layers
        self.reward_head = MLP(feat, reward_out, heads.units, heads.layers, norm=cfg.norm, act=cfg.act, onehot=onehot)
        if heads.reward == "twohot":
            zero_init(self.reward_head.net[-1])  # V3: predictions start at 0, no early reward hallucination
            self.register_buffer("bins", dists.symexp_bins(heads.bins), persistent=False)
        self.cont_head = MLP(feat, 1, heads.units, heads.layers, norm=cfg.norm, act=cfg.act, onehot=onehot)
        self.inverse_head = None
        if cfg.inverse.enabled:
            if self.codec.kind == "multidiscrete":
                raise DreamerError(
                    f"--inverse-model supports Discrete, MultiBinary and Box actions, not {action_space}. "
                    "Train without --inverse-model for this dataset."
                )
            inv = cfg.inverse
            self.inverse_head = MLP(2 * feat, self._inverse_out_dim(), inv.units, inv.layers, norm=cfg.norm,
                                    act=cfg.act)

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
        embed = self.encoder(batch.obs)  # [B, T, E]
        action = self.codec.encode(batch.action)  # [B, T, A]
        post, prior = self.rssm.observe(embed, action, batch.is_first, state)
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

    def _inverse_out_dim(self) -> int:
        return 2 * self.codec.dim if self.codec.kind == "box" else self.codec.dim

    def inverse_dist(self, feat: Tensor):
        """Distribution of a_{t+1} given (s_t, s_{t+1}): ``feat`` is ``[..., T, F]``; output over T-1."""
        feat = feat if self.cfg.inverse.grad_to_repr else feat.detach()
        pair = torch.cat([feat[..., :-1, :], feat[..., 1:, :]], -1)  # [B, T-1, 2F]
        out = self.inverse_head(pair)
        kind = self.codec.kind
        if kind == "discrete":
            return torch.distributions.Categorical(logits=out)
        if kind == "multibinary":
            return torch.distributions.Independent(torch.distributions.Bernoulli(logits=out), 1)
        if kind == "box":
            mean, std = out.chunk(2, -1)
            return torch.distributions.Independent(torch.distributions.Normal(mean, F.softplus(std) + 0.01), 1)
        raise ValueError(f"the inverse model does not support {self.action_space}")

    def _inverse_loss(self, feat: Tensor, batch: Batch) -> Tensor:
        """NLL of a_{t+1} per row ``[B, T]`` (row 0 and rows before an episode start are 0)."""
        dist = self.inverse_dist(feat)
        target = batch.action[:, 1:]
        if self.codec.kind == "discrete":
            target = target.long() - int(self.action_space.start)
        else:
            target = target.float().flatten(2)
        nll = -dist.log_prob(target)  # [B, T-1]
        valid = ~batch.is_first[:, 1:]  # a_{t+1} is the zero placeholder at episode starts
        nll = torch.where(valid, nll, torch.zeros_like(nll))
        return F.pad(nll, (1, 0))  # align to [B, T]

    def inverse_accuracy(self, feat: Tensor, batch: Batch) -> Tensor:
        """Held-out metric: accuracy (discrete, per button for multi-binary) or MSE (box)."""
        dist = self.inverse_dist(feat)
        valid = ~batch.is_first[:, 1:]
        target = batch.action[:, 1:]
        if self.codec.kind == "discrete":
            hit = (dist.probs.argmax(-1) == target.long() - int(self.action_space.start)).float()
        elif self.codec.kind == "multibinary":
            hit = ((dist.base_dist.probs > 0.5).float() == target.float().flatten(2)).float().mean(-1)
        else:
            hit = (dist.base_dist.mean - target.float().flatten(2)).pow(2).mean(-1)
        return hit[valid].mean()

    # --- diagnostics and evaluation -------------------------------------------------------

    @torch.no_grad()
    def _diagnostics(self, post: RSSMState, prior: RSSMState, feat: Tensor, batch: Batch) -> dict[str, Tensor]:
        out = {}
        if post.logits is not None:
            out["kl"] = losses.kl_categorical(post.logits, prior.logits).mean()
            out["post_entropy"] = -(post.logits.softmax(-1) * post.logits.log_softmax(-1)).sum((-2, -1)).mean()
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
        action = self.codec.encode(batch.action)
        post, _ = self.rssm.observe(embed, action[:, :context], batch.is_first[:, :context])
        last = post.map(lambda x: x[:, -1])
        prior = self.rssm.imagine_with_actions(last, action[:, context:context + horizon], sample=sample)  # [B, H]
        feat = prior.feat()
        mse = torch.zeros(horizon, device=feat.device)
        base = torch.zeros(horizon, device=feat.device)
        for key, dist in self.decoder(feat).items():
            truth = batch.obs[key][:, context:context + horizon]
            pred = dist.mode + 0.5 if truth.dtype == torch.uint8 else dist.mode  # images in [0, 1]
            mse += _per_step_mse(pred, truth)
            base += _per_step_mse(batch.obs[key][:, context - 1:context].expand_as(truth), truth)
        n = len(self.decoder.image_keys) + len(self.decoder.vector_keys)
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
        embed = self.encoder(batch.obs)  # [B, T, E]
        action = self.codec.encode(batch.action)  # [B, T, A]
        post, _ = self.rssm.observe(embed, action, batch.is_first)  # [B, T]
        states = post
        if context < T:
            last = post.map(lambda x: x[:, context - 1])
            prior = self.rssm.imagine_with_actions(last, action[:, context:])  # [B, T - context]
            states = RSSMState.cat([post.map(lambda x: x[:, :context]), prior], 1)  # [B, T]
        out: dict[str, dict[str, Tensor] | Tensor] = {}
        for name, state in (("recon", post), ("dream", states)):
            feat = state.feat()
            decoded = {}
            for key, dist in self.decoder(feat).items():
                decoded[key] = (dist.mode + 0.5).clamp(0, 1) if batch.obs[key].dtype == torch.uint8 else dist.mode
            out[name] = decoded
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
