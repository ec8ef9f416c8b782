"""Recurrent state-space model (RSSM) of DreamerV3, with the V1 Gaussian variant.

Owns: the latent state record ``RSSMState``, the module config ``RSSMConfig`` and the ``RSSM``
module with its verbs ``initial``, ``img_step``, ``obs_step``, ``observe``, ``imagine`` and
``imagine_with_actions``, plus ``dist(state)`` for the KL terms (the KL itself lives in
losses.py; the closed forms are ``nets.distributions.kl_categorical`` / ``kl_gaussian``).

Step alignment (data/schema.py): row t of a window holds ``obs_t`` and the action that LED TO
``obs_t``. So ``obs_step`` consumes row t directly::

    post[t-1] ──(action[t])──► GRU ──► deter[t] ──► prior[t]   (prior head, deter only)
                                           └──(+ embed[t])──► post[t]   (posterior head)

and ``is_first[t]`` replaces ``post[t-1]`` by the initial state and zeroes ``action[t]``
before the step (DreamerV3), so windows may cross episode boundaries.

Imagination (``imagine``) uses the policy convention instead: ``action[h]`` is chosen AT
``state[h]`` and leads to ``state[h+1]``; see its docstring.

Speed: only the GRU, the posterior head and the latent sample run inside the time loop. The
embedding's share of the posterior's first Linear is computed for all ``[B, T]`` at once before
the loop (its weight is split into a deter part and an embed part), and the prior head runs
once on all ``[B, T]`` deterministic states after the loop. No host syncs inside the loop.

Imports: torch and nets.layers / nets.distributions. Must not import anything else from
dreamer_core.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import nn

from dreamer_core.nets.distributions import GaussianLatent, OneHotDist
from dreamer_core.nets.layers import (
    MLP,
    BlockGRUCell,
    NormGRUCell,
    init_weights,
    make_act,
    make_norm,
    remember_onehot,
    trunc_normal_fan_avg_,
)

__all__ = ["RSSM", "RSSMConfig", "RSSMState"]


@dataclass(eq=False)
class RSSMState:
    """Latent state of the RSSM; every field shares the leading (batch) shape ``[...]``.

    Attributes:
        deter: deterministic GRU state ``[..., D]``.
        stoch: stochastic state, one-hot ``[..., S, K]`` (categorical) or ``[..., S]`` (Gaussian).
        logits: categorical only: log of the unimixed class probabilities ``[..., S, K]``.
        mean, std: Gaussian only: ``[..., S]``.
        index: categorical only, when known: the class of each one-hot group of ``stoch``
            ``[..., S]`` (int64; sampled states carry it). It only spares the gather-sum layers
            their search for the ones (:func:`layers.remember_onehot`); combining states of
            which one lacks it gives a state without it.

    Dims passed to ``stack``/``cat``/``select``/``flatten`` count batch axes only; negative dims
    count from the last batch axis.
    """

    deter: torch.Tensor
    stoch: torch.Tensor
    logits: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    std: torch.Tensor | None = None
    index: torch.Tensor | None = None

    @property
    def batch_shape(self) -> torch.Size:
        return self.deter.shape[:-1]

    @property
    def is_categorical(self) -> bool:
        return self.logits is not None

    def feat(self) -> torch.Tensor:
        """Model features ``[..., F]``: ``deter`` concatenated with the flattened ``stoch``."""
        stoch = self.stoch.flatten(-2) if self.is_categorical else self.stoch  # [..., S*K]
        feat = torch.cat([self.deter, stoch.to(self.deter.dtype)], -1)  # [..., F]
        if self.index is not None:
            remember_onehot(feat, self.deter.shape[-1], self.index, self.stoch.shape[-1])
        return feat

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> RSSMState:
        """Apply ``fn`` to every tensor field (None fields stay None)."""
        return RSSMState(**{f.name: _maybe(fn, getattr(self, f.name)) for f in fields(self)})

    def detach(self) -> RSSMState:
        return self.map(torch.Tensor.detach)

    def to(self, device: torch.device | str) -> RSSMState:
        return self.map(lambda x: x.to(device))

    def __getitem__(self, index) -> RSSMState:
        """Index the batch axes, e.g. ``state[:, t]`` or ``state[mask]``."""
        return self.map(lambda x: x[index])

    def _dim(self, dim: int, extra: int = 0) -> int:
        ndim = len(self.batch_shape) + extra
        assert -ndim <= dim < ndim, f"dim {dim} is not a batch axis of {tuple(self.batch_shape)}"
        return dim % ndim

    def select(self, dim: int, index: int) -> RSSMState:
        dim = self._dim(dim)
        return self.map(lambda x: x.select(dim, index))

    def flatten(self, start_dim: int = 0, end_dim: int = 1) -> RSSMState:
        """Merge batch axes ``start_dim..end_dim``, e.g. ``[B, T, ...] -> [B*T, ...]``."""
        start, end = self._dim(start_dim), self._dim(end_dim)
        return self.map(lambda x: x.flatten(start, end))

    def reshape(self, *batch_shape: int) -> RSSMState:
        """Reshape the batch axes only, e.g. ``state.reshape(B, T)`` after ``flatten``."""
        ndim = len(self.batch_shape)
        return self.map(lambda x: x.reshape(*batch_shape, *x.shape[ndim:]))

    @classmethod
    def stack(cls, states: Sequence[RSSMState], dim: int = 0) -> RSSMState:
        """Stack states along a new batch axis (e.g. ``dim=1`` for ``[B] -> [B, T]``)."""
        dim = states[0]._dim(dim, extra=1)
        return cls(
            **{
                f.name: _maybe_many(torch.stack, [getattr(s, f.name) for s in states], dim)
                for f in fields(cls)
            }
        )

    @classmethod
    def cat(cls, states: Sequence[RSSMState], dim: int = 0) -> RSSMState:
        """Concatenate states along an existing batch axis."""
        dim = states[0]._dim(dim)
        return cls(
            **{
                f.name: _maybe_many(torch.cat, [getattr(s, f.name) for s in states], dim)
                for f in fields(cls)
            }
        )

    @classmethod
    def where(cls, cond: torch.Tensor, lhs: RSSMState, rhs: RSSMState) -> RSSMState:
        """Per batch entry: ``lhs`` where ``cond`` else ``rhs`` (``cond`` bool, batch shape)."""
        out = {}
        for f in fields(cls):
            a, b = getattr(lhs, f.name), getattr(rhs, f.name)
            if a is None or b is None:
                out[f.name] = None
                continue
            mask = cond.reshape(*cond.shape, *([1] * (b.ndim - cond.ndim)))  # [..., 1, (1)]
            out[f.name] = torch.where(mask, a, b)
        return cls(**out)


def _maybe(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor | None
) -> torch.Tensor | None:
    return None if x is None else fn(x)


def _maybe_many(fn: Callable, xs: list[torch.Tensor | None], dim: int) -> torch.Tensor | None:
    return None if any(x is None for x in xs) else fn(xs, dim)


@dataclass(frozen=True)
class RSSMConfig:
    """Sizes and variants of the RSSM (defaults: DreamerV3 size S with 32x32 categoricals).

    Attributes:
        deter: D, GRU state size.
        hidden: width of the input, prior and posterior layers.
        stoch: S, number of stochastic latents.
        classes: K, classes per categorical latent (unused for Gaussian latents).
        unimix: uniform mix into the categorical probabilities (DreamerV3: 0.01).
        latent: ``categorical`` (V2/V3) or ``gaussian`` (V1).
        min_std: Gaussian only: ``std = softplus(raw) + min_std`` (V1: 0.1).
        gru_blocks: 1 = DreamerV3 2023 LayerNorm GRU; > 1 = 2025 block-diagonal GRU with that
            many blocks (``deter`` must be divisible by it).
        norm, act: normalisation and activation of every hidden layer.
        learned_init: initial ``deter = tanh(param)`` (V3) instead of zeros.
        img_layers: hidden layers of the prior head (deter -> prior stats).
        obs_layers: hidden layers of the posterior head ([deter, embed] -> posterior stats).
    """

    deter: int = 512
    hidden: int = 512
    stoch: int = 32
    classes: int = 32
    unimix: float = 0.01
    latent: Literal["categorical", "gaussian"] = "categorical"
    min_std: float = 0.1
    gru_blocks: int = 1
    norm: str = "layer"
    act: str = "silu"
    learned_init: bool = True
    img_layers: int = 1
    obs_layers: int = 1

    @property
    def stoch_dim(self) -> int:
        """Size of the flattened stochastic state: S*K (categorical) or S (Gaussian)."""
        return self.stoch * self.classes if self.latent == "categorical" else self.stoch

    @property
    def feat_dim(self) -> int:
        """F = D + stoch_dim."""
        return self.deter + self.stoch_dim

    @property
    def feat_onehot(self) -> tuple[int, int, int] | None:
        """Where ``feat()`` holds one-hot groups, as ``OneHotAwareLinear`` takes it (None: Gaussian)."""
        return (self.deter, self.stoch, self.classes) if self.latent == "categorical" else None


class RSSM(nn.Module):
    """DreamerV3 RSSM: a normalised GRU with a categorical (or Gaussian) stochastic state.

    Args:
        cfg: sizes and variants.
        embed_dim: E, size of the encoder's embedding.
        action_dim: A, size of the (one-hot or continuous) action vector.

    Shapes:
        see each method; states are :class:`RSSMState` with batch shape ``[B]``, ``[B, T]`` or
        ``[N, H+1]``.
    """

    def __init__(self, cfg: RSSMConfig, embed_dim: int, action_dim: int):
        super().__init__()
        if cfg.latent not in ("categorical", "gaussian"):
            raise ValueError(f"unknown latent {cfg.latent!r}; choose 'categorical' or 'gaussian'")
        if cfg.obs_layers < 1:
            raise ValueError("obs_layers must be >= 1")
        self.cfg, self.embed_dim, self.action_dim = cfg, embed_dim, action_dim
        D, hidden, stats = cfg.deter, cfg.hidden, _stats_dim(cfg)
        layer = dict(units=hidden, layers=1, norm=cfg.norm, act=cfg.act)
        # Layers fed by categorical latents take their one-hot block by a gather-sum (same maths).
        onehot = (0, cfg.stoch, cfg.classes) if cfg.latent == "categorical" else None
        if cfg.gru_blocks == 1:  # 2023: one input layer over [stoch, action]
            self.dyn_in = nn.ModuleList([MLP(cfg.stoch_dim + action_dim, None, **layer, onehot=onehot)])
            self.cell: nn.Module = NormGRUCell(hidden, D, cfg.norm)
        else:  # 2025: separate input layers for deter, stoch and action
            sizes = (D, cfg.stoch_dim, action_dim)
            self.dyn_in = nn.ModuleList([MLP(size, None, **layer, onehot=onehot if i == 1 else None)
                                         for i, size in enumerate(sizes)])
            self.cell = BlockGRUCell(3 * hidden, D, cfg.gru_blocks, 1, cfg.norm, cfg.act)
        self.prior_net = MLP(D, stats, hidden, cfg.img_layers, cfg.norm, cfg.act)
        # Posterior first layer W [deter, embed] split as W_d deter + W_e embed (same map), so
        # W_e embed can be computed for all [B, T] before the time loop.
        self.post_deter = nn.Linear(D, hidden, bias=False)
        self.post_embed = nn.Linear(embed_dim, hidden, bias=cfg.norm == "none")
        self.post_norm = nn.Sequential(make_norm(cfg.norm, hidden), make_act(cfg.act))
        self.post_net = MLP(hidden, stats, hidden, cfg.obs_layers - 1, cfg.norm, cfg.act)
        self.init_deter = nn.Parameter(torch.zeros(D)) if cfg.learned_init else None
        # MLPs and GRU cells initialise themselves. The split layer is initialised as the one
        # Linear over [deter, embed] it stands for (fan in D + E).
        for layer in (self.post_deter, self.post_embed):
            init_weights(layer)
            trunc_normal_fan_avg_(layer.weight, D + embed_dim, hidden)

    @property
    def feat_dim(self) -> int:
        return self.cfg.feat_dim

    @property
    def feat_onehot(self) -> tuple[int, int, int] | None:
        return self.cfg.feat_onehot

    # --- pieces ------------------------------------------------------------------------------

    def dist(self, state: RSSMState) -> OneHotDist | GaussianLatent:
        """The distribution a state's stochastic part was drawn from.

        Categorical: ``OneHotDist`` over ``[..., S, K]`` from the stored (already unimixed)
        logits; Gaussian: ``GaussianLatent`` over ``[..., S]``.
        """
        if state.is_categorical:
            return OneHotDist(state.logits)
        return GaussianLatent(state.mean, state.std)

    def _state(
        self,
        deter: torch.Tensor,
        stats: torch.Tensor,
        generator: torch.Generator | None,
        sample: bool,
    ) -> RSSMState:
        """Build a state from ``deter [..., D]`` and raw head outputs ``stats [..., stats]``."""
        if self.cfg.latent == "categorical":
            dist = OneHotDist(
                stats.unflatten(-1, (self.cfg.stoch, self.cfg.classes)), self.cfg.unimix
            )
            stoch, index = dist.sample_with_index(generator) if sample else dist.mode_with_index()  # [..., S, K]
            return RSSMState(deter, stoch, logits=dist.logits, index=index)
        dist = GaussianLatent.from_raw(stats, self.cfg.min_std)
        stoch = dist.sample(generator) if sample else dist.mode  # [..., S]
        return RSSMState(deter, stoch, mean=dist.mean, std=dist.std)

    def _core(self, prev: RSSMState, action: torch.Tensor) -> torch.Tensor:
        """One GRU step: ``deter [..., D]`` from the previous state and ``action [..., A]``."""
        stoch = prev.stoch.flatten(-2) if prev.is_categorical else prev.stoch  # [..., S*K]
        if self.cfg.gru_blocks == 1:
            x = torch.cat([stoch, action], -1)  # [..., S*K + A]
            if prev.index is not None:
                remember_onehot(x, 0, prev.index, self.cfg.classes)
            x = self.dyn_in[0](x)  # [..., hidden]
        else:
            if prev.index is not None:
                remember_onehot(stoch, 0, prev.index, self.cfg.classes)
            parts = [net(x) for net, x in zip(self.dyn_in, (prev.deter, stoch, action))]
            x = torch.cat(parts, -1)  # [..., 3*hidden]
        return self.cell(x, prev.deter)  # [..., D]

    def _post_stats(self, deter: torch.Tensor, embed_proj: torch.Tensor) -> torch.Tensor:
        """Posterior head from ``deter [..., D]`` and ``post_embed(embed) [..., hidden]``."""
        return self.post_net(self.post_norm(self.post_deter(deter) + embed_proj))

    def _prep_action(self, action: torch.Tensor) -> torch.Tensor:
        """Float actions scaled to ``|a| <= 1`` where larger (DreamerV3 divides by max(1, |a|))."""
        assert action.shape[-1] == self.action_dim, (action.shape, self.action_dim)
        action = action.to(self.post_deter.weight.dtype)
        return action / action.detach().abs().clamp_min(1.0)

    # --- verbs -------------------------------------------------------------------------------

    def initial(self, batch_size: int | Sequence[int]) -> RSSMState:
        """The state before the first observation of an episode.

        ``learned_init``: ``deter = tanh(param)`` and ``stoch`` = the mode of the prior of that
        ``deter`` (DreamerV3, straight-through so the parameter gets gradients); otherwise
        zeros (uniform logits, unit std).

        Shapes:
            returns: batch shape ``[batch_size]`` (or the given shape); expanded views.
        """
        shape = (batch_size,) if isinstance(batch_size, int) else tuple(batch_size)
        if self.init_deter is not None:
            deter = torch.tanh(self.init_deter)  # [D]
            state = self._state(deter, self.prior_net(deter), None, sample=False)
        else:
            ref = self.post_deter.weight
            deter = ref.new_zeros(self.cfg.deter)
            if self.cfg.latent == "categorical":
                zeros = ref.new_zeros(self.cfg.stoch, self.cfg.classes)
                state = RSSMState(deter, zeros, logits=zeros)
            else:
                zeros = ref.new_zeros(self.cfg.stoch)
                state = RSSMState(deter, zeros, mean=zeros, std=torch.ones_like(zeros))
        return state.map(lambda x: x.expand(*shape, *x.shape))

    def img_step(
        self,
        prev: RSSMState,
        action: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> RSSMState:
        """Prior step: advance the GRU with ``action`` and draw the stochastic state from the prior.

        Shapes:
            prev: ``[...]``      action: ``[..., A]``      returns: ``[...]``
        """
        deter = self._core(prev, self._prep_action(action))  # [..., D]
        return self._state(deter, self.prior_net(deter), generator, sample)

    def _reset(
        self, prev: RSSMState, action: torch.Tensor, is_first: torch.Tensor, init: RSSMState
    ) -> tuple[RSSMState, torch.Tensor]:
        """Where ``is_first``: previous state := ``init`` and action := 0 (before the step)."""
        assert is_first.shape == action.shape[:-1], (is_first.shape, action.shape)
        is_first = is_first.to(torch.bool)
        action = torch.where(is_first[..., None], torch.zeros_like(action), action)
        return RSSMState.where(is_first, init, prev), action

    def obs_step(
        self,
        prev: RSSMState,
        action: torch.Tensor,
        embed: torch.Tensor,
        is_first: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> tuple[RSSMState, RSSMState]:
        """Posterior step for one row: reset where ``is_first``, GRU step, prior and posterior.

        Row convention as in data/schema.py: ``action`` led to the observation ``embed`` comes
        from. Returns ``(post, prior)``; both share ``deter``. The prior is sampled first.

        Shapes:
            prev: ``[B]``   action: ``[B, A]``   embed: ``[B, E]``   is_first: ``[B]`` bool
            returns: two states ``[B]``
        """
        init = self.initial(is_first.shape)
        prev, action = self._reset(prev, self._prep_action(action), is_first, init)
        deter = self._core(prev, action)  # [B, D]
        prior = self._state(deter, self.prior_net(deter), generator, sample)
        post = self._state(
            deter, self._post_stats(deter, self.post_embed(embed)), generator, sample
        )
        return post, prior

    def observe(
        self,
        embed: torch.Tensor,
        action: torch.Tensor,
        is_first: torch.Tensor,
        state: RSSMState | None = None,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> tuple[RSSMState, RSSMState]:
        """Filter a window: posterior and prior states for every row.

        ``post[:, t]`` and ``prior[:, t]`` belong to row t (they share ``deter[:, t]``), i.e.
        to the step that consumed ``action[:, t]`` and then saw ``embed[:, t]``. ``state`` is
        the posterior before row 0 (None: the initial state); rows with ``is_first`` restart
        from the initial state with a zero action, exactly like ``obs_step``. The same maths
        as an ``obs_step`` loop; posterior samples are drawn in the loop and prior samples
        afterwards, all at once.

        Shapes:
            embed: ``[B, T, E]``   action: ``[B, T, A]``   is_first: ``[B, T]``   state: ``[B]``
            returns: (post, prior), batch shape ``[B, T]``
        """
        B, T, E = embed.shape
        assert E == self.embed_dim, (embed.shape, self.embed_dim)
        assert action.shape == (B, T, self.action_dim), (action.shape, (B, T, self.action_dim))
        assert is_first.shape == (B, T), (is_first.shape, (B, T))
        init = self.initial(B)
        state = init if state is None else state
        is_first = is_first.to(torch.bool)
        action = self._prep_action(action)
        action = torch.where(is_first[..., None], torch.zeros_like(action), action)  # [B, T, A]
        embed_proj = self.post_embed(embed)  # [B, T, hidden], all rows at once
        posts = []
        for t in range(T):
            prev = RSSMState.where(is_first[:, t], init, state)
            deter = self._core(prev, action[:, t])  # [B, D]
            state = self._state(deter, self._post_stats(deter, embed_proj[:, t]), generator, sample)
            posts.append(state)
        post = RSSMState.stack(posts, 1)  # [B, T]
        prior = self._state(post.deter, self.prior_net(post.deter), generator, sample)  # [B, T]
        return post, prior

    def imagine(
        self,
        start: RSSMState,
        policy: Callable[[RSSMState], torch.Tensor],
        horizon: int,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> tuple[RSSMState, torch.Tensor]:
        """Roll the prior forward under ``policy`` for ``horizon`` steps (DreamerV3 imagination).

        Alignment (the policy convention, unlike the dataset's)::

            states[:, 0] = start,  actions[:, h] = policy(states[:, h]),
            states[:, h + 1] = img_step(states[:, h], actions[:, h])   for h < H

        ``actions[:, H]`` is chosen at the last state but never executed (as in DreamerV3, so
        every state has its action; drop it if unneeded). Gradients flow through the actions
        into the dynamics (dynamics backprop); detach ``start`` or the actions as needed.

        Shapes:
            start: ``[N]``      returns: states ``[N, H+1]``, actions ``[N, H+1, A]``
        """
        assert len(start.batch_shape) == 1, (
            f"start must have batch shape [N], got {tuple(start.batch_shape)}"
        )
        states, actions = [start], []
        for _ in range(horizon):
            actions.append(policy(states[-1]))  # [N, A]
            states.append(self.img_step(states[-1], actions[-1], generator, sample))
        actions.append(policy(states[-1]))
        return RSSMState.stack(states, 1), torch.stack(actions, 1)  # [N, H+1], [N, H+1, A]

    def imagine_with_actions(
        self,
        start: RSSMState,
        actions: torch.Tensor,
        generator: torch.Generator | None = None,
        sample: bool = True,
    ) -> RSSMState:
        """Open-loop prediction under given actions (no observations, no resets).

        ``priors[:, 0] = img_step(start, actions[:, 0])`` and ``priors[:, h] =
        img_step(priors[:, h-1], actions[:, h])``. With dataset rows (action t led to obs t),
        pass ``start = post[:, t]`` and ``actions = action[:, t+1 : t+1+H]`` to predict rows
        ``t+1 .. t+H``.

        Shapes:
            start: ``[B]``      actions: ``[B, H, A]``      returns: priors ``[B, H]``
        """
        B, H, _ = actions.shape
        assert tuple(start.batch_shape) == (B,), (start.batch_shape, actions.shape)
        state, priors = start, []
        for h in range(H):
            state = self.img_step(state, actions[:, h], generator, sample)
            priors.append(state)
        return RSSMState.stack(priors, 1)  # [B, H]


def _stats_dim(cfg: RSSMConfig) -> int:
    """Output size of the prior/posterior heads: S*K logits or S means + S raw stds."""
    return cfg.stoch * cfg.classes if cfg.latent == "categorical" else 2 * cfg.stoch
