"""The actor-critic that learns purely in imagination (DreamerV3 §3, "Critic learning" and
"Actor learning"), with the V1/V2 differences selectable through ``BehaviorConfig``.

One update (``ActorCritic.loss``), given a frozen world model and the posterior states of a
replayed ``[B, T]`` window:

1. Every posterior state is a start state (``N = B*T``, detached: behavior learning must not
   change the world model). The prior rolls forward ``H`` steps under the actor.
2. Rewards and continue flags of the imagined states come from the world model's heads; the
   critic values them; lambda-returns (losses.lambda_return) are the targets.
3. Returns are normalised by the EMA of their 5th-95th percentile range, floored at 1, so the
   actor's entropy bonus means the same across reward scales (DreamerV3 eq. 11).
4. Actor: REINFORCE with the normalised advantage (discrete, multi-binary) or dynamics
   backprop through the model (continuous); plus an entropy bonus. Critic: two-hot
   log-likelihood of the returns, regularised toward a slow EMA copy of itself, plus the
   "replay value" loss on the real window's own lambda-returns (DreamerV3 2025 code).

Action heads (``ActionHead``): Discrete -> one-hot categorical with 1% unimix; Box -> bounded
normal in [-1, 1], rescaled to the space's bounds; MultiBinary -> independent Bernoullis.
The world model sees actions as ``ActionCodec`` encodes stored ones (one-hot, 0/1 bits, raw
Box values), so ``to_model`` / ``to_env`` convert between the actor's space and those.

Imports: nets, losses, optim, world_model (for WorldModel and its ActionCodec).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from dreamer_core import losses
from dreamer_core.errors import DreamerError
from dreamer_core.nets import distributions as dists
from dreamer_core.nets.layers import MLP, zero_init
from dreamer_core.nets.rssm import RSSMState
from dreamer_core.optim import OptimConfig
from dreamer_core.types import Batch
from dreamer_core.world_model import WorldModel

Tensor = torch.Tensor


@dataclass(frozen=True)
class ActorConfig:
    units: int = 512
    layers: int = 2
    entropy: float = 3e-4  # eta: entropy bonus on normalised returns
    unimix: float = 0.01  # discrete and multi-binary policies
    grad: str = "auto"  # auto (reinforce for discrete/multi-binary, dynamics for Box) | reinforce | dynamics
    min_std: float = 0.1
    max_std: float = 1.0


@dataclass(frozen=True)
class CriticConfig:
    units: int = 512
    layers: int = 2
    head: str = "twohot"  # twohot (V3) | mse (V1, V2)
    bins: int = 255
    slow_rate: float = 0.02  # EMA fraction toward the critic, every `slow_every` updates (V2: 1.0 every 100)
    slow_every: int = 1
    slow_reg: float = 1.0  # weight of the regulariser toward the slow critic (0: none)
    slow_target: bool = False  # V1/V2: bootstrap the returns from the slow critic instead
    replay_scale: float = 0.3  # weight of the replay value loss (0: off)


@dataclass(frozen=True)
class ReturnNormConfig:
    mode: str = "percentile"  # percentile (V3) | none (V1, V2)
    low: float = 5.0
    high: float = 95.0
    decay: float = 0.99
    limit: float = 1.0  # scale floor: small returns are not blown up


@dataclass(frozen=True)
class BehaviorConfig:
    horizon: int = 15
    gamma: float = 1 - 1 / 333  # 0.997
    lam: float = 0.95
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    retnorm: ReturnNormConfig = field(default_factory=ReturnNormConfig)
    actor_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5, eps=1e-5, clip=100.0))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5, eps=1e-5, clip=100.0))
    norm: str = "layer"
    act: str = "silu"


# --- action heads ---------------------------------------------------------------------------------


class ActionHead:
    """Maps actor outputs to a policy distribution and actions between three encodings.

    - actor space: what the distribution samples (one-hot ``[.., A]``, bits ``[.., A]``, or
      values in [-1, 1] ``[.., A]``);
    - model space: what the world model consumes (``WorldModel.codec.encode`` of stored actions);
    - env space: numpy actions in the dtype ``data/schema.py`` stores.
    """

    def __init__(self, action_space: gym.Space, actor: ActorConfig):
        self.space = action_space
        self.cfg = actor
        if isinstance(action_space, gym.spaces.Discrete):
            self.kind, self.dim = "discrete", int(action_space.n)
        elif isinstance(action_space, gym.spaces.MultiBinary):
            self.kind, self.dim = "multibinary", int(np.prod(action_space.n))
        elif isinstance(action_space, gym.spaces.Box):
            self.kind, self.dim = "box", int(np.prod(action_space.shape))
            low = np.asarray(action_space.low, np.float32).ravel()
            high = np.asarray(action_space.high, np.float32).ravel()
            if not (np.isfinite(low).all() and np.isfinite(high).all()):
                raise DreamerError(
                    f"The actor needs a bounded Box action space, but {action_space} has infinite bounds. "
                    "Wrap the env with gymnasium.wrappers.ClipAction (or rescale it) and collect again."
                )
            self.low, self.high = torch.as_tensor(low), torch.as_tensor(high)
        else:
            raise DreamerError(
                f"The actor supports Discrete, Box and MultiBinary action spaces, not {action_space}. "
                "Flatten the action space in a wrapper (for MultiDiscrete: one Discrete over the combinations)."
            )

    @property
    def out_dim(self) -> int:
        return 2 * self.dim if self.kind == "box" else self.dim

    @property
    def default_grad(self) -> str:
        return "dynamics" if self.kind == "box" else "reinforce"

    def dist(self, out: Tensor):
        if self.kind == "discrete":
            return dists.OneHotDist(out, self.cfg.unimix)
        if self.kind == "multibinary":
            return dists.MultiBernoulliDist(out, self.cfg.unimix)
        mean, std = out.chunk(2, -1)
        return dists.BoundedNormal.from_raw(mean, std, self.cfg.min_std, self.cfg.max_std)

    def to_model(self, action: Tensor) -> Tensor:
        """Actor-space ``[.., A]`` -> world-model input ``[.., A]`` (differentiable)."""
        if self.kind != "box":
            return action
        low, high = self.low.to(action.device), self.high.to(action.device)
        return low + (action + 1) * 0.5 * (high - low)

    def from_model(self, action: Tensor) -> Tensor:
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


# --- the actor-critic -------------------------------------------------------------------------------


class ActorCritic(nn.Module):
    """Actor, critic, slow critic and the return normaliser's state; see the module docstring."""

    def __init__(self, cfg: BehaviorConfig, feat_dim: int, action_space: gym.Space,
                 feat_onehot: tuple[int, int, int] | None = None):
        """``feat_onehot``: the world model's ``rssm.feat_onehot`` (faster first layers; same maths)."""
        super().__init__()
        self.cfg = cfg
        self.head = ActionHead(action_space, cfg.actor)
        self.grad_mode = self.head.default_grad if cfg.actor.grad == "auto" else cfg.actor.grad
        if self.grad_mode not in ("reinforce", "dynamics"):
            raise DreamerError(f"Unknown actor gradient {cfg.actor.grad!r}; use auto, reinforce or dynamics.")
        self.actor = MLP(feat_dim, self.head.out_dim, cfg.actor.units, cfg.actor.layers, norm=cfg.norm, act=cfg.act,
                         onehot=feat_onehot)
        critic_out = cfg.critic.bins if cfg.critic.head == "twohot" else 1
        self.critic = MLP(feat_dim, critic_out, cfg.critic.units, cfg.critic.layers, norm=cfg.norm, act=cfg.act,
                          onehot=feat_onehot)
        if cfg.critic.head == "twohot":
            zero_init(self.critic.net[-1])  # V3: values start at exactly 0
            self.register_buffer("bins", dists.symexp_bins(cfg.critic.bins), persistent=False)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # Return normaliser state (EMA of the percentiles); `retnorm_count` 0 = not yet seen.
        self.register_buffer("retnorm_low", torch.zeros(()))
        self.register_buffer("retnorm_high", torch.zeros(()))
        self.register_buffer("retnorm_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    # --- heads ------------------------------------------------------------------------------

    def policy(self, feat: Tensor):
        """Policy distribution over actor-space actions for features ``[..., F]``."""
        return self.head.dist(self.actor(feat))

    def value(self, feat: Tensor, slow: bool = False):
        """Value distribution of features ``[..., F]`` (``.mean`` is the value)."""
        return self._value_dist((self.slow_critic if slow else self.critic)(feat))

    def _value_dist(self, out: Tensor):
        if self.cfg.critic.head == "twohot":
            return dists.TwoHotDist(out, self.bins)
        return dists.MSEDist(out.squeeze(-1), 0)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"actor": list(self.actor.parameters()), "critic": list(self.critic.parameters())}

    # --- return normalisation (DreamerV3 eq. 11) ------------------------------------------------

    def _return_scale(self, returns: Tensor) -> Tensor:
        """Update the percentile EMA with ``returns`` and give the scale ``max(limit, P95 - P5)``.

        The EMA starts from the first batch's percentiles; DreamerV3's code starts it from zeros,
        which only delays the scale's growth past the floor for the first ~100 updates.
        """
        rn = self.cfg.retnorm
        if rn.mode == "none":
            return torch.ones((), device=returns.device)
        lo, hi = losses.percentile_range(returns, rn.low, rn.high)
        with torch.no_grad():
            decay = rn.decay * (self.retnorm_count > 0).float()  # the first batch sets the values
            self.retnorm_low.copy_(decay * self.retnorm_low + (1 - decay) * lo)
            self.retnorm_high.copy_(decay * self.retnorm_high + (1 - decay) * hi)
            self.retnorm_count += 1
        return (self.retnorm_high - self.retnorm_low).clamp(min=rn.limit)

    # --- the loss -----------------------------------------------------------------------------

    def imagine(self, world_model: WorldModel, start: RSSMState, horizon: int, dynamics: bool,
                ) -> tuple[RSSMState, Tensor, Tensor, Tensor]:
        """Roll out the actor in the world model from ``start`` ``[N]``.

        The actor's graph is always recorded (its log-probabilities and entropies are computed
        in the loop, not by a second pass). The world model's graph is recorded only for
        ``dynamics`` backprop; for REINFORCE its inputs carry no gradient, so it records nothing.

        Returns:
            states ``[N, H+1]``; actor-space actions ``[N, H+1, A]`` (the last one is never
            executed); log-probabilities and entropies of the actions ``[N, H+1]``.
        """
        actions, logps, entropies = [], [], []

        def act(state: RSSMState) -> Tensor:
            policy = self.policy(state.feat())
            if dynamics:
                action = policy.rsample() if self.head.kind == "box" else policy.sample()
            else:
                action = policy.sample().detach()
            actions.append(action)
            logps.append(policy.log_prob(action.detach()))
            entropies.append(policy.entropy())
            return self.head.to_model(action)

        states, _ = world_model.rssm.imagine(start, act, horizon)
        return states, torch.stack(actions, 1), torch.stack(logps, 1), torch.stack(entropies, 1)

    def loss(self, world_model: WorldModel, post: RSSMState, batch: Batch,
             ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor and critic losses from the posterior states ``post`` ``[B, T]`` of ``batch``.

        The world model must be frozen by the caller (``requires_grad_(False)``); gradients of
        the actor loss reach the actor only, those of the critic loss the critic only.

        Returns:
            actor_loss, critic_loss (scalars), metrics (detached tensors).
        """
        cfg = self.cfg
        B, T = batch.shape
        H = cfg.horizon
        start = post.detach().flatten(0, 1)  # [N]: behavior learning never changes the world model
        dynamics = self.grad_mode == "dynamics"
        states, actions, logp, entropy = self.imagine(world_model, start, H, dynamics)
        feat = states.feat()  # [N, H+1, F]; carries gradient only for dynamics backprop
        feat_sg = feat.detach()

        # Rewards and continues of the imagined states; the start's continue is the real one.
        reward = world_model.reward_dist(feat[:, 1:]).mean  # [N, H]: r_{h+1}
        cont = world_model.cont_dist(feat_sg[:, 1:]).mode  # [N, H]
        first_cont = 1.0 - batch.is_terminal.flatten().float()  # [N]
        disc = cfg.gamma * cont  # [N, H]
        weight = losses.discount_weights(disc, first_cont, cfg.gamma).detach()  # [N, H+1]

        # One critic pass on detached features serves both the returns and the critic loss;
        # dynamics backprop needs the values' gradient w.r.t. the features: a second pass.
        critic_out = self.critic(feat_sg)  # [N, H+1, bins]
        slow_value = self._value_dist(self.slow_critic(feat_sg)).mean  # [N, H+1]
        if dynamics:
            value = self.value(feat, slow=cfg.critic.slow_target).mean
        elif cfg.critic.slow_target:
            value = slow_value  # V2: bootstrap from the target network
        else:
            value = self._value_dist(critic_out).mean.detach()
        returns = losses.lambda_return(reward, value, disc, cfg.lam)  # [N, H]
        scale = self._return_scale(returns)
        advantage = (returns - value[:, :-1].detach()) / scale  # [N, H]

        # --- actor ---
        if dynamics:
            objective = advantage  # gradient flows through the returns into the actions
        else:
            objective = logp[:, :-1] * advantage.detach()  # REINFORCE
        actor_loss = -(weight[:, :-1] * (objective + cfg.actor.entropy * entropy[:, :-1])).mean()

        # --- critic (eq. 10: two-hot log-likelihood of the returns, + slow-critic regulariser) ---
        critic_dist = self._value_dist(critic_out[:, :-1])
        critic_terms = (-critic_dist.log_prob(returns.detach())
                        - cfg.critic.slow_reg * critic_dist.log_prob(slow_value[:, :-1].detach()))
        critic_loss = (weight[:, :-1] * critic_terms).mean()
        metrics: dict[str, Tensor] = {}
        if cfg.critic.replay_scale > 0:
            replay = self._replay_value_loss(post, batch, returns[:, 0].detach().reshape(B, T))
            critic_loss = critic_loss + cfg.critic.replay_scale * replay
            metrics["critic/replay_loss"] = replay.detach()

        with torch.no_grad():
            metrics.update({
                "actor/loss": actor_loss.detach(),
                "actor/entropy": entropy[:, :-1].mean(),
                "actor/advantage_mag": advantage.abs().mean(),
                "critic/loss": critic_loss.detach(),
                "critic/value": value[:, :-1].mean(),
                "imag/return": returns.mean(),
                "imag/reward": reward.mean(),
                "imag/cont": cont.mean(),
                "imag/weight": weight.mean(),
                "retnorm/scale": scale.detach(),
                "retnorm/low": self.retnorm_low.clone(),
                "retnorm/high": self.retnorm_high.clone(),
            })
            if self.head.kind == "discrete":
                counts = actions[:, :-1].reshape(-1, self.head.dim).mean(0)
                metrics["actor/action_max_freq"] = counts.max()
        return actor_loss, critic_loss, metrics

    def _replay_value_loss(self, post: RSSMState, batch: Batch, boot: Tensor) -> Tensor:
        """Critic loss on the replayed states themselves, toward lambda-returns along the real
        data, bootstrapped by the imagined returns from each state (DreamerV3 2025 "repval")."""
        cfg = self.cfg
        feat = post.feat().detach()  # [B, T, F]
        target = losses.replay_lambda_return(batch.reward, batch.is_terminal, batch.is_last, boot,
                                             cfg.gamma, cfg.lam)  # [B, T]
        dist = self.value(feat)
        slow_value = self.value(feat, slow=True).mean.detach()
        terms = -dist.log_prob(target.detach()) - cfg.critic.slow_reg * dist.log_prob(slow_value)
        weight = (~batch.is_last.bool()).float()  # no real transition out of an episode's last row
        return (weight * terms).mean()

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """EMA (or, with rate 1, a copy) toward the critic every ``slow_every`` updates."""
        c = self.cfg.critic
        self.updates += 1
        if int(self.updates) % c.slow_every:
            return
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, c.slow_rate)
