"""The actor-critic that learns purely in imagination (DreamerV3 §3, "Critic learning" and
"Actor learning"), with the V1/V2 differences selectable through ``BehaviorConfig``.

One update (``ActorCritic.loss``), given a frozen world model and the posterior states of a
replayed ``[B, T]`` window:

1. Every posterior state is a start state (``N = B*T``, detached: behavior learning must not
   change the world model). The prior rolls forward ``H`` steps under the actor, which reads
   each state's features with their gradient stopped (as in the official code).
2. Rewards and continue flags of the imagined states come from the world model's heads; the
   critic values them; lambda-returns (losses.lambda_return) are the targets.
3. Returns are normalised by the EMA of their 5th-95th percentile range, floored at 1, so the
   actor's entropy bonus means the same across reward scales (DreamerV3 eq. 11).
4. Actor: REINFORCE with the normalised advantage (discrete, multi-binary) or dynamics
   backprop through the model (continuous); plus an entropy bonus. Critic: two-hot
   log-likelihood of the returns, regularised toward a slow EMA copy of itself, plus the
   "replay value" loss on the real window's own lambda-returns (DreamerV3 2025 code).

The rollouts are scored once, by :meth:`ActorCritic.score` (rewards, continues, discounts,
weights, values, lambda-returns): the loss and the dream views (analysis.py) both call it.
The loss is three parts: :meth:`ActorCritic.actor_loss`, :meth:`ActorCritic.critic_loss` and
:meth:`ActorCritic.replay_value_loss`.

Policies (``nets.actions.ActionSpace``): Discrete -> one-hot categorical with 1% unimix; Box
-> bounded normal in [-1, 1], rescaled to the space's bounds; MultiBinary -> independent
Bernoullis. ``ActionSpace.to_model`` / ``to_env`` convert the actor's actions for the world
model and the env. The world model is reached only through its interface (interfaces.py).

Imports: nets, losses, optim, checkpoint, config, interfaces, types.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from dreamer_core import checkpoint, losses
from dreamer_core import config as config_lib
from dreamer_core.errors import DreamerError
from dreamer_core.interfaces import LatentState, WorldModelInterface
from dreamer_core.nets import distributions as dists
from dreamer_core.nets.actions import ActionSpace
from dreamer_core.nets.layers import MLP
from dreamer_core.optim import OptimConfig
from dreamer_core.types import Batch

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
    # How an imagined step's continue flag discounts: mode (2023: the head's 0/1 mode) | prob
    # (2025: its probability, so the discount falls smoothly as a termination gets likely).
    cont: str = "mode"
    actor: ActorConfig = field(default_factory=ActorConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    retnorm: ReturnNormConfig = field(default_factory=ReturnNormConfig)
    actor_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5, eps=1e-5, clip=100.0))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-5, eps=1e-5, clip=100.0))
    norm: str = "layer"
    act: str = "silu"


@dataclass
class Scored:
    """Imagined rollouts scored as the actor-critic learns from them.

    Index 0 of the horizon axis is the start state; transition quantities (``reward``,
    ``cont``, ``disc``, ``returns``) have H entries, entry h for the step out of state h.

    Shapes:
        feat: [N, H+1, F]   reward, cont, disc, returns: [N, H]   weight, value, slow_value: [N, H+1]
        critic_out: [N, H+1, bins] (the critic's raw output on detached features)
    """

    feat: Tensor
    reward: Tensor  # predicted r_{h+1}; carries gradient to the features (dynamics backprop)
    cont_dist: Any  # continue distribution of states 1..H
    cont: Tensor  # its mode
    disc: Tensor  # gamma * cont
    weight: Tensor  # discounted survival: how much each state counts (detached)
    critic_out: Tensor
    slow_value: Tensor
    value: Tensor  # the values the returns bootstrap from
    returns: Tensor  # lambda-returns


# --- the actor-critic -------------------------------------------------------------------------------


class ActorCritic(nn.Module):
    """Actor, critic, slow critic and the return normaliser's state; see the module docstring."""

    def __init__(self, cfg: BehaviorConfig, feat_dim: int, action_space: gym.Space,
                 feat_onehot: tuple[int, int, int] | None = None):
        """``feat_dim``, ``feat_onehot``: the world model's (the one-hot layout makes the first
        layers faster; same maths). :meth:`for_world_model` reads both from a world model."""
        super().__init__()
        self.cfg = cfg
        self.action_space = action_space
        self.actions = ActionSpace(action_space)
        self.actions.check_policy_support()
        self.grad_mode = self.actions.default_actor_grad if cfg.actor.grad == "auto" else cfg.actor.grad
        if self.grad_mode not in ("reinforce", "dynamics"):
            raise DreamerError(f"Unknown actor gradient {cfg.actor.grad!r}; use auto, reinforce or dynamics.")
        self.actor = MLP(feat_dim, self.actions.policy_out_dim, cfg.actor.units, cfg.actor.layers, norm=cfg.norm, act=cfg.act,
                         onehot=feat_onehot)
        twohot = cfg.critic.head == "twohot"
        critic_out = cfg.critic.bins if twohot else 1
        # V3: the two-hot critic's output starts at 0 (outscale 0), so values start at exactly 0.
        self.critic = MLP(feat_dim, critic_out, cfg.critic.units, cfg.critic.layers, norm=cfg.norm, act=cfg.act,
                          onehot=feat_onehot, outscale=0.0 if twohot else 1.0)
        if twohot:
            self.register_buffer("bins", dists.symexp_bins(cfg.critic.bins), persistent=False)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        # Return normaliser state (EMA of the percentiles); `retnorm_count` 0 = not yet seen.
        self.register_buffer("retnorm_low", torch.zeros(()))
        self.register_buffer("retnorm_high", torch.zeros(()))
        self.register_buffer("retnorm_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def for_world_model(cls, cfg: BehaviorConfig, world_model: WorldModelInterface) -> ActorCritic:
        """An actor-critic reading ``world_model``'s features and acting in its action space."""
        return cls(cfg, world_model.feat_dim, world_model.action_space, world_model.feat_onehot)

    # --- artifacts ------------------------------------------------------------------------

    def save(self, path: Path | str, world_model: WorldModelInterface, stage_config: dict[str, Any] | None = None,
             **meta: Any) -> None:
        """Write ``behavior.pt``: config, spaces, weights and ``meta`` (update, world_model_update,
        env_config, env_steps; see checkpoint.BehaviorArtifact)."""
        checkpoint.save(path, checkpoint.BehaviorArtifact(
            **checkpoint.spaces_json(world_model.observation_space, self.action_space),
            stage_config=stage_config or {}, behavior_config=config_lib.to_dict(self.cfg),
            weights=self.state_dict(), **meta))

    @classmethod
    def load(cls, path: Path | str, world_model: WorldModelInterface, device: str | torch.device = "cpu",
             ) -> tuple[ActorCritic, checkpoint.BehaviorArtifact]:
        """Rebuild the actor-critic of ``behavior.pt`` for ``world_model`` (whose spaces must fit)."""
        artifact = checkpoint.load(path, checkpoint.BehaviorArtifact, map_location=device)
        artifact.check_spaces(world_model.observation_space, world_model.action_space,
                              "The world model it was loaded for", path)
        cfg = config_lib.from_dict(BehaviorConfig, artifact.behavior_config)
        agent = cls.for_world_model(cfg, world_model).to(device)
        agent.load_state_dict(artifact.weights)
        return agent, artifact

    # --- heads ------------------------------------------------------------------------------

    def policy(self, feat: Tensor):
        """Policy distribution over actor-space actions for features ``[..., F]``."""
        a = self.cfg.actor
        return self.actions.policy_dist(self.actor(feat), a.unimix, a.min_std, a.max_std)

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

    def imagine(self, world_model: WorldModelInterface, start: LatentState, horizon: int, dynamics: bool,
                ) -> tuple[LatentState, Tensor, Tensor, Tensor]:
        """Roll out the actor in the world model from ``start`` ``[N]``.

        The actor reads each state's features with their gradient stopped, as in every
        official DreamerV3 (``actor(sg(feat))``): its own graph starts at its input. The actor's
        graph is always recorded (its log-probabilities and entropies are computed in the loop,
        not by a second pass). For ``dynamics`` backprop the sampled (reparameterised) action is
        the only path from the actor into the world model's dynamics, and the return gradient
        comes back to the actor only through the actions. For REINFORCE the actions are detached
        too, so the world model records nothing.

        Returns:
            states ``[N, H+1]``; actor-space actions ``[N, H+1, A]`` (the last one is never
            executed); log-probabilities and entropies of the actions ``[N, H+1]``.
        """
        actions, logps, entropies = [], [], []

        def act(state: LatentState) -> Tensor:
            policy = self.policy(world_model.features(state).detach())  # DreamerV3: actor(sg(feat))
            if dynamics:
                action = policy.rsample() if self.actions.kind == "box" else policy.sample()
            else:
                action = policy.sample().detach()
            actions.append(action)
            logps.append(policy.log_prob(action.detach()))
            entropies.append(policy.entropy())
            return self.actions.to_model(action)

        states, _ = world_model.imagine(start, act, horizon)
        return states, torch.stack(actions, 1), torch.stack(logps, 1), torch.stack(entropies, 1)

    def score(self, world_model: WorldModelInterface, feat: Tensor, first_cont: Tensor,
              dynamics: bool = False) -> Scored:
        """Rewards, continues, discounts, weights, values and lambda-returns of imagined states.

        ``feat`` ``[N, H+1, F]`` carries gradient only for dynamics backprop; ``first_cont``
        ``[N]`` is the start state's real continue flag. One critic pass on detached features
        serves both the returns and the critic loss; dynamics backprop needs the values'
        gradient w.r.t. the features: a second pass.
        """
        cfg = self.cfg
        feat_sg = feat.detach()
        reward = world_model.reward_dist(feat[:, 1:]).mean  # [N, H]: r_{h+1}
        cont_dist = world_model.cont_dist(feat_sg[:, 1:])
        cont = cont_dist.mode if cfg.cont == "mode" else cont_dist.mean  # [N, H]
        disc = cfg.gamma * cont  # [N, H]
        weight = losses.discount_weights(disc, first_cont, cfg.gamma).detach()  # [N, H+1]
        critic_out = self.critic(feat_sg)  # [N, H+1, bins]
        slow_value = self._value_dist(self.slow_critic(feat_sg)).mean  # [N, H+1]
        if dynamics:
            value = self.value(feat, slow=cfg.critic.slow_target).mean
        elif cfg.critic.slow_target:
            value = slow_value  # V2: bootstrap from the target network
        else:
            value = self._value_dist(critic_out).mean.detach()
        returns = losses.lambda_return(reward, value, disc, cfg.lam)  # [N, H]
        return Scored(feat, reward, cont_dist, cont, disc, weight, critic_out, slow_value, value, returns)

    def loss(self, world_model: WorldModelInterface, post: LatentState, batch: Batch,
             gather_returns: Callable[[Tensor], Tensor] | None = None,
             ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Actor and critic losses from the posterior states ``post`` ``[B, T]`` of ``batch``.

        The world model must be frozen by the caller (``requires_grad_(False)``); gradients of
        the actor loss reach the actor only, those of the critic loss the critic only.
        ``gather_returns``: the returns the normaliser's percentiles are taken from, given this
        process's (a data-parallel run passes every rank's, so that the scale is the global
        batch's, the same on every rank); None: this process's own.

        Returns:
            actor_loss, critic_loss (scalars), metrics (detached tensors).
        """
        cfg = self.cfg
        B, T = batch.shape
        start = post.detach().flatten(0, 1)  # [N]: behavior learning never changes the world model
        dynamics = self.grad_mode == "dynamics"
        states, actions, logp, entropy = self.imagine(world_model, start, cfg.horizon, dynamics)
        # The start's continue is the real one.
        first_cont = 1.0 - batch.is_terminal.flatten().float()  # [N]
        scored = self.score(world_model, world_model.features(states), first_cont, dynamics)
        scale = self._return_scale(scored.returns if gather_returns is None else gather_returns(scored.returns))
        advantage = (scored.returns - scored.value[:, :-1].detach()) / scale  # [N, H]
        actor_loss = self.actor_loss(scored, advantage, logp, entropy, dynamics)
        critic_loss = self.critic_loss(scored)
        metrics: dict[str, Tensor] = {}
        if cfg.critic.replay_scale > 0:
            replay = self.replay_value_loss(world_model, post, batch, scored.returns[:, 0].detach().reshape(B, T))
            critic_loss = critic_loss + cfg.critic.replay_scale * replay
            metrics["critic/replay_loss"] = replay.detach()
        with torch.no_grad():
            metrics.update(self._metrics(scored, actor_loss, critic_loss, advantage, entropy, actions, scale))
        return actor_loss, critic_loss, metrics

    def actor_loss(self, scored: Scored, advantage: Tensor, logp: Tensor, entropy: Tensor,
                   dynamics: bool) -> Tensor:
        """DreamerV3 eq. 11: normalised advantage (through the returns for dynamics backprop,
        times the log-probability for REINFORCE) plus the entropy bonus, weighted by survival."""
        if dynamics:
            objective = advantage  # gradient flows through the returns into the actions
        else:
            objective = logp[:, :-1] * advantage.detach()  # REINFORCE
        return -(scored.weight[:, :-1] * (objective + self.cfg.actor.entropy * entropy[:, :-1])).mean()

    def critic_loss(self, scored: Scored) -> Tensor:
        """DreamerV3 eq. 10: two-hot log-likelihood of the returns, plus the regulariser toward
        the slow critic, weighted by survival."""
        critic_dist = self._value_dist(scored.critic_out[:, :-1])
        terms = (-critic_dist.log_prob(scored.returns.detach())
                 - self.cfg.critic.slow_reg * critic_dist.log_prob(scored.slow_value[:, :-1].detach()))
        return (scored.weight[:, :-1] * terms).mean()

    def _metrics(self, scored: Scored, actor_loss: Tensor, critic_loss: Tensor, advantage: Tensor,
                 entropy: Tensor, actions: Tensor, scale: Tensor) -> dict[str, Tensor]:
        metrics = {
            "actor/loss": actor_loss.detach(),
            "actor/entropy": entropy[:, :-1].mean(),
            "actor/advantage_mag": advantage.abs().mean(),
            "critic/loss": critic_loss.detach(),
            "critic/value": scored.value[:, :-1].mean(),
            "imag/return": scored.returns.mean(),
            "imag/reward": scored.reward.mean(),
            "imag/cont": scored.cont.mean(),
            "imag/weight": scored.weight.mean(),
            "retnorm/scale": scale.detach(),
            "retnorm/low": self.retnorm_low.clone(),
            "retnorm/high": self.retnorm_high.clone(),
        }
        if self.actions.kind == "discrete":
            counts = actions[:, :-1].reshape(-1, self.actions.dim).mean(0)
            metrics["actor/action_max_freq"] = counts.max()
        return metrics

    def replay_value_loss(self, world_model: WorldModelInterface, post: LatentState, batch: Batch,
                          boot: Tensor) -> Tensor:
        """Critic loss on the replayed states themselves, toward lambda-returns along the real
        data, bootstrapped by the imagined returns from each state (DreamerV3 2025 "repval")."""
        cfg = self.cfg
        feat = world_model.features(post).detach()  # [B, T, F]
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
