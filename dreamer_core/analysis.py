"""Analysis: what a trained world model sees, remembers and imagines, as plain numpy arrays.

Users look at these views to ask "is the model wrong, or is the policy?". ``dreamer dream``
and stage 04 draw them (viz.py), the notebooks plot them:

- ``episode_ref`` / ``load_episode_batch`` / ``episode_to_batch``: one episode window of a
  dataset (or a played Episode) as a ``[1, L]`` Batch.
- ``dream_episode``: ground truth, posterior reconstructions, an open-loop dream after a
  context of C real rows under the recorded actions (``WorldModel.reconstruct_and_dream``)
  and, given an actor, under the actor's own actions; per-step errors against the truth and
  the repeat-last-frame baseline; predicted vs real reward and continue; which latent
  classes fire at each step. ``error_vs_horizon`` averages the errors over many episodes.
- ``episode_views``: real | reconstruction | dream of a played episode (stage 04's videos).
- ``imagine_with_actor``: rollouts of the actor inside the model (rewards, continues,
  values, lambda-returns, action distributions), scored as stage 03 trains on them;
  ``play_episode`` plays the actor in the real env for comparison.
- ``dataset_overview``: per-episode lengths and returns, every action and reward.

Row alignment (data/schema.py): row t holds obs_t, the action that led to it and the reward
received on arriving. The dream of rows ``t >= C`` starts from the posterior of row C-1 and
never sees those rows' observations, so "horizon h" is row ``C - 1 + h``.

Loading a run's models and data is ``runs``'s job; this module takes them as arguments.

Imports: numpy, torch, world_model, behavior, policies, data, envs, errors, types. It must not
import viz (which draws these results and imports this module), stages or cli.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dreamer_core import policies
from dreamer_core.behavior import ActorCritic
from dreamer_core.data.dataset import Dataset, EpisodeRef
from dreamer_core.data.sampler import batch_from_episode
from dreamer_core.data.schema import Episode
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.errors import DreamerError
from dreamer_core.policies import AgentPolicy
from dreamer_core.types import Batch
from dreamer_core.world_model import WorldModel

Tensor = torch.Tensor


# --- loading windows ------------------------------------------------------------------------------


def episode_ref(dataset: Dataset, episode: int) -> EpisodeRef:
    """The dataset's episode ``episode`` (negative counts from the end); a clear error if none."""
    n = len(dataset.refs)
    if not -n <= episode < n:
        raise DreamerError(
            f"Episode {episode} does not exist: the dataset {dataset.path} holds {n} episode(s), "
            f"numbered 0 to {n - 1} (or -1 for the last). Pick one with --episode."
        )
    return dataset.refs[episode]


def load_episode_batch(dataset: Dataset, episode: int, start: int = 0, length: int | None = None,
                       device: str | torch.device = "cpu") -> Batch:
    """Rows ``start : start + length`` of one episode as a ``[1, L]`` Batch.

    Row 0 of the window is marked ``is_first``, so the model starts from its initial state
    there even when ``start > 0`` (it then has not seen the rows before).

    Shapes:
        returns: obs key -> ``[1, L, ...]`` (images uint8), action ``[1, L, ...]``, the rest ``[1, L]``.
    """
    ep = dataset.load_episode(episode_ref(dataset, episode))
    stop = ep.rows if length is None else min(ep.rows, start + length)
    if not 0 <= start < stop:
        raise DreamerError(f"The window starts at row {start}, but episode {episode} has {ep.rows} rows.")
    return episode_to_batch(ep, start, stop, device)


def episode_to_batch(ep: Episode, start: int = 0, stop: int | None = None,
                     device: str | torch.device = "cpu") -> Batch:
    """Rows ``start:stop`` of an Episode as a ``[1, L]`` Batch (``is_first`` at row 0 only)."""
    return batch_from_episode(ep, start, stop).to(device)


def _first_rows(batch: Batch, rows: int) -> Batch:
    """The first ``rows`` rows of every window of ``batch``."""
    return Batch(obs={k: v[:, :rows] for k, v in batch.obs.items()}, action=batch.action[:, :rows],
                 reward=batch.reward[:, :rows], is_first=batch.is_first[:, :rows], is_last=batch.is_last[:, :rows],
                 is_terminal=batch.is_terminal[:, :rows])


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global torch RNG for a block and restore it afterwards (the model's sampling
    draws from the global RNG; forking keeps a caller's own random stream untouched)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# --- dreams ------------------------------------------------------------------------------------


class _ObservationKeys:
    """Image keys (uint8 frames) and vector keys of the ``real`` observations."""

    real: dict[str, np.ndarray]

    @property
    def image_keys(self) -> list[str]:
        return [k for k, v in self.real.items() if v.dtype == np.uint8]

    @property
    def vector_keys(self) -> list[str]:
        return [k for k, v in self.real.items() if v.dtype != np.uint8]


@dataclass
class DreamResult(_ObservationKeys):
    """Everything the dream views show for one ``[1, L]`` window (batch axis dropped).

    Attributes:
        context: C, rows the dream observed; it imagines rows ``C .. L-1``.
        real, recon, dream: obs key -> ``[L, ...]``. ``real`` as stored (images uint8);
            ``recon`` and ``dream`` in display units (images float in [0, 1], vectors raw).
            Rows ``< C`` of ``dream`` are the reconstruction.
        action: ``[L, ...]`` recorded actions (row t led to obs t).
        reward, reward_recon, reward_dream: ``[L]`` real and predicted rewards.
        cont, cont_recon, cont_dream: ``[L]`` real continue flags (``1 - is_terminal``) and
            predicted continue probabilities.
        error_recon, error_dream, error_baseline: ``[L]`` mean squared error per row against
            the truth, averaged over keys (images in [0, 1] units, vectors raw); the baseline
            repeats the last context row (NaN for rows ``< C``).
        latent_fired: ``[L, S, K]`` bool, the posterior classes sampled at each row;
            ``latent_probs``: ``[L, S, K]`` their probabilities (both None for Gaussian latents).
        actor_dream, reward_actor: with an actor: the dream under the actor's own actions
            from the same start state (key -> ``[L, ...]``, ``[L]``); ``value``: ``[L]`` the
            critic's value of each posterior state; ``return_to_go``: ``[L]`` the real
            discounted return after each row (cut short where the window ends).

    Shapes:
        L rows; S, K latents and classes (types.py glossary).
    """

    context: int
    real: dict[str, np.ndarray]
    recon: dict[str, np.ndarray]
    dream: dict[str, np.ndarray]
    action: np.ndarray
    reward: np.ndarray
    reward_recon: np.ndarray
    reward_dream: np.ndarray
    cont: np.ndarray
    cont_recon: np.ndarray
    cont_dream: np.ndarray
    error_recon: np.ndarray
    error_dream: np.ndarray
    error_baseline: np.ndarray
    latent_fired: np.ndarray | None = None
    latent_probs: np.ndarray | None = None
    actor_dream: dict[str, np.ndarray] | None = None
    reward_actor: np.ndarray | None = None
    value: np.ndarray | None = None
    return_to_go: np.ndarray | None = None
    title: str = ""

    @property
    def length(self) -> int:
        return int(self.reward.shape[0])

    def horizon(self) -> dict[str, np.ndarray]:
        """Errors of the imagined rows only, indexed by horizon ``h = 1 .. L-C``."""
        C = self.context
        return {"dream": self.error_dream[C:], "baseline": self.error_baseline[C:],
                "recon": self.error_recon[C:],
                "reward_dream": np.abs(self.reward_dream[C:] - self.reward[C:]),
                "reward_recon": np.abs(self.reward_recon[C:] - self.reward[C:])}

    def latent_usage(self) -> float:
        """Fraction of the S x K classes that fire anywhere in the window (NaN: Gaussian)."""
        return float("nan") if self.latent_fired is None else float(self.latent_fired.any(0).mean())


def step_error(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Mean squared error of ``pred`` against ``truth`` per row.

    uint8 arrays (frames) are compared in [0, 1] units, so image errors are in pixel units
    whatever the resolution; vectors in their own units.

    Shapes:
        pred, truth: ``[L, ...]``      returns: ``[L]``
    """
    def unit(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)

    diff = unit(pred) - unit(truth)
    return (diff ** 2).reshape(len(diff), -1).mean(1)


@torch.no_grad()
def dream_episode(world_model: WorldModel, batch: Batch, context: int, agent: ActorCritic | None = None,
                  seed: int = 0) -> DreamResult:
    """Reconstructions, the open-loop dream after ``context`` rows, errors, heads and latents.

    The dream comes from ``WorldModel.reconstruct_and_dream``. The latents come from a second
    posterior pass under the same seed, so they are exactly the states behind ``recon``.
    With ``agent``, the actor also dreams from the same start state under its own actions.

    Shapes:
        batch: ``[1, L]``      returns: see :class:`DreamResult`.
    """
    B, L = batch.shape
    assert B == 1, f"dream_episode takes one window [1, L], got {batch.shape}"
    if not 1 <= context <= L:
        raise DreamerError(f"The context must be between 1 and the window's {L} rows (got {context}).")
    device = batch.reward.device
    with _seeded(seed, device):
        out = world_model.reconstruct_and_dream(batch, context)
    with _seeded(seed, device):
        post = world_model.observe(batch)  # [1, L]: the states behind out["recon"]
    real = {k: v[0].cpu().numpy() for k, v in batch.obs.items()}
    recon = {k: v[0].float().cpu().numpy() for k, v in out["recon"].items()}
    dream = {k: v[0].float().cpu().numpy() for k, v in out["dream"].items()}
    errors = {name: np.mean([step_error(values[k], real[k]) for k in real], 0)
              for name, values in (("recon", recon), ("dream", dream))}
    baseline = np.full(L, np.nan, np.float32)
    if context < L:
        last = {k: np.broadcast_to(v[context - 1], v[context:].shape) for k, v in real.items()}
        baseline[context:] = np.mean([step_error(last[k], real[k][context:]) for k in real], 0)
    result = DreamResult(
        context=context, real=real, recon=recon, dream=dream, action=batch.action[0].cpu().numpy(),
        reward=batch.reward[0].cpu().numpy(), reward_recon=_np(out["recon_reward"]),
        reward_dream=_np(out["dream_reward"]), cont=1.0 - batch.is_terminal[0].float().cpu().numpy(),
        cont_recon=_np(out["recon_cont"]), cont_dream=_np(out["dream_cont"]),
        error_recon=errors["recon"], error_dream=errors["dream"], error_baseline=baseline,
    )
    latents = world_model.categorical_latents(post)
    if latents is not None:
        result.latent_fired = latents[0][0].cpu().numpy() > 0
        result.latent_probs = latents[1][0].float().cpu().numpy()
    if agent is not None:
        _add_actor_views(result, world_model, agent, batch, post, seed)
    return result


def _np(x: Tensor) -> np.ndarray:
    return x[0].float().cpu().numpy()


def _add_actor_views(result: DreamResult, world_model: WorldModel, agent: ActorCritic, batch: Batch,
                     post, seed: int) -> None:
    """The actor's dream from the dream's start state, and critic values along the real rows."""
    C, L = result.context, result.length
    imagined = imagine_with_actor(world_model, agent, batch, C, L - C, samples=1, seed=seed)
    result.actor_dream = {k: np.concatenate([result.recon[k][:C], v[0, 1:]]) for k, v in imagined.obs.items()}
    result.reward_actor = np.concatenate([result.reward_recon[:C], imagined.reward[0]])
    result.value = agent.value(world_model.features(post)).mean[0].float().cpu().numpy()
    gamma = agent.cfg.gamma
    togo = np.zeros(L, np.float64)
    for t in range(L - 2, -1, -1):  # value(state t) estimates r_{t+1} + gamma r_{t+2} + ...
        togo[t] = result.reward[t + 1] + gamma * result.cont[t + 1] * togo[t + 1]
    result.return_to_go = togo.astype(np.float32)


def error_vs_horizon(world_model: WorldModel, dataset: Dataset, context: int, horizon: int,
                     episodes: list[int] | None = None, seed: int = 0,
                     device: str | torch.device = "cpu") -> dict[str, np.ndarray]:
    """Per-step open-loop errors averaged over episodes (those with more than ``context`` rows),
    each dreamed from its first ``context`` rows (``episodes``: indices; None: all).

    Returns:
        ``dream``, ``baseline``, ``recon`` (observation MSE as in :class:`DreamResult`),
        ``reward_dream``, ``reward_recon`` (absolute reward error): mean errors at horizon
        ``h = 1 .. H`` (NaN where no episode is long enough); ``count``: episodes per step.

    Shapes:
        every entry: ``[H]`` with H = ``horizon``.
    """
    names = ("dream", "baseline", "recon", "reward_dream", "reward_recon")
    sums = {k: np.zeros(horizon) for k in names}
    count = np.zeros(horizon)
    ids = range(len(dataset.refs)) if episodes is None else episodes
    for i in ids:
        if dataset.refs[i].rows <= context:
            continue
        batch = load_episode_batch(dataset, i, 0, context + horizon, device)
        errors = dream_episode(world_model, batch, context, seed=seed + i).horizon()
        n = len(errors["dream"])
        for k in names:
            sums[k][:n] += errors[k]
        count[:n] += 1
    out = {k: v / np.maximum(count, 1) for k, v in sums.items()}
    for v in out.values():
        v[count == 0] = np.nan
    out["count"] = count
    return out


# --- a played episode (stage 04's videos) -----------------------------------------------------------


@dataclass
class EpisodeViews(_ObservationKeys):
    """Real | reconstruction | open-loop dream of one episode (batch axis dropped).

    Attributes:
        context: the rows the dream observed, as asked for (rows ``t >= context`` are imagined).
        real: obs key -> ``[L, ...]`` as stored (images uint8); ``recon``, ``dream``: the same
            keys in display units (images float in [0, 1], vectors raw).
    """

    context: int
    real: dict[str, np.ndarray]
    recon: dict[str, np.ndarray]
    dream: dict[str, np.ndarray]

    @property
    def length(self) -> int:
        return int(next(iter(self.real.values())).shape[0])


def episode_views(world_model: WorldModel, episode: Episode, context: int,
                  device: str | torch.device = "cpu") -> EpisodeViews:
    """The posterior reconstruction of every row of ``episode`` and an open-loop dream that sees
    its first ``context`` rows (``WorldModel.reconstruct_and_dream``; the model samples from the
    global torch RNG, unseeded, as stage 04 always has).

    Shapes:
        returns: key -> ``[L, ...]`` with L = ``episode.rows``.
    """
    batch = batch_from_episode(episode).to(device)
    out = world_model.reconstruct_and_dream(batch, context)
    recon = {k: v[0].float().cpu().numpy() for k, v in out["recon"].items()}
    dream = {k: v[0].float().cpu().numpy() for k, v in out["dream"].items()}
    real = {k: v[0].cpu().numpy() for k, v in batch.obs.items()}
    return EpisodeViews(context=context, real=real, recon=recon, dream=dream)


# --- the actor in imagination ---------------------------------------------------------------------


@dataclass
class Imagination:
    """Rollouts of the actor inside the world model from real start states.

    Index 0 of the horizon axis is the start state (the posterior of row ``context - 1``);
    quantities of transitions (``reward``, ``cont``, ``lambda_return``) have H entries, with
    entry h belonging to the step out of state h (DreamerV3 / behavior.py convention).

    Attributes:
        obs: key -> ``[N, H+1, ...]`` decoded states (images float in [0, 1]).
        action: ``[N, H+1, A]`` actor-space actions, as the model read them (one-hot for
            Discrete, [-1, 1] for Box); the last one is never executed. ``env_action``:
            ``[N, H+1, ...]`` the same in the env's encoding (Box: scaled to the bounds).
        policy_probs: ``[N, H+1, A]`` action probabilities (Discrete and MultiBinary; None for Box).
        entropy: ``[N, H+1]`` policy entropy.
        reward: ``[N, H]`` predicted reward; ``cont``: ``[N, H]`` continue probability.
        value: ``[N, H+1]`` critic; ``lambda_return``: ``[N, H]`` the actor's targets;
        weight: ``[N, H+1]`` how much each state counts (discounted survival).

    Shapes:
        N = start windows x samples; H horizon; A action size.
    """

    obs: dict[str, np.ndarray]
    action: np.ndarray
    env_action: np.ndarray
    policy_probs: np.ndarray | None
    entropy: np.ndarray
    reward: np.ndarray
    cont: np.ndarray
    value: np.ndarray
    lambda_return: np.ndarray
    weight: np.ndarray


@torch.no_grad()
def imagine_with_actor(world_model: WorldModel, agent: ActorCritic, batch: Batch, context: int, horizon: int,
                       samples: int = 1, seed: int = 0) -> Imagination:
    """Filter the first ``context`` rows of each window, then let the actor dream ``horizon``
    steps, ``samples`` times per window; score the rollouts as stage 03 does.

    Shapes:
        batch: ``[B, T]`` (T >= context)      returns: N = B * samples rollouts.
    """
    B, T = batch.shape
    if not 1 <= context <= T:
        raise DreamerError(f"The context must be between 1 and the window's {T} rows (got {context}).")
    with _seeded(seed, batch.reward.device):
        post = world_model.observe(_first_rows(batch, context))  # [B, context]
        start = post[:, context - 1].map(lambda x: x.repeat_interleave(samples, 0))  # [N]
        states, actions, _, entropy = agent.imagine(world_model, start, horizon, dynamics=False)
    feat = world_model.features(states)  # [N, H+1, F]
    first = 1.0 - batch.is_terminal[:, context - 1].float().repeat_interleave(samples)
    scored = agent.score(world_model, feat, first)  # exactly as stage 03 scores its rollouts
    policy = agent.policy(feat)
    probs = getattr(policy, "probs", None) if agent.actions.kind != "box" else None
    N, H1 = actions.shape[:2]
    env_action = agent.actions.to_env(actions.flatten(0, 1))
    return Imagination(
        obs={k: v.float().cpu().numpy() for k, v in world_model.reconstruct(feat).items()},
        action=actions.float().cpu().numpy(), env_action=env_action.reshape(N, H1, *env_action.shape[1:]),
        policy_probs=None if probs is None else probs.float().cpu().numpy(),
        entropy=entropy.float().cpu().numpy(), reward=scored.reward.float().cpu().numpy(),
        cont=scored.cont_dist.mean.float().cpu().numpy(), value=scored.value.float().cpu().numpy(),
        lambda_return=scored.returns.float().cpu().numpy(), weight=scored.weight.float().cpu().numpy(),
    )


@torch.no_grad()
def play_episode(world_model: WorldModel, agent: ActorCritic, env: EnvConfig | dict[str, Any], seed: int = 0,
                 mode: str = "mode", max_steps: int = 0, device: str | torch.device = "cpu") -> Episode:
    """Play one episode with the agent in the real env (``env``: e.g. the ``env_config`` of the
    artifact ``runs.load_agent`` returns), greedily by default like ``dreamer evaluate``.

    Returns:
        the episode in the dataset's row layout (data/schema.py), ready for
        ``episode_to_batch`` and ``dream_episode``.
    """
    env_cfg = env if isinstance(env, EnvConfig) else EnvConfig.from_dict(dict(env))
    gym_env = make_env(env_cfg, seed=seed)
    policy = AgentPolicy(world_model, agent, 1, mode=mode, seed=seed, device=device)
    try:
        return policies.play_episode(gym_env, policy, seed, max_steps).episode
    finally:
        gym_env.close()


# --- dataset overview (notebook 01) ----------------------------------------------------------------


def dataset_overview(dataset: Dataset, max_episodes: int | None = None) -> dict[str, np.ndarray]:
    """Per-episode lengths, returns and terminal flags, plus every stored action and reward
    (rows >= 1 of each episode: row 0 holds the zero placeholder action).

    Returns:
        ``lengths`` (env steps), ``returns`` and ``terminated`` per episode; ``actions`` and
        ``rewards`` of every step of the first ``max_episodes`` episodes (None: all).

    Shapes:
        lengths, returns, terminated: ``[E]``      actions: ``[M, ...]``      rewards: ``[M]``
    """
    refs = dataset.refs
    actions, rewards = [], []
    for i, ep in enumerate(dataset.iter_episodes()):
        if max_episodes is not None and i >= max_episodes:
            break
        actions.append(ep.action[1:])
        rewards.append(ep.reward[1:])
    return {
        "lengths": np.array([r.steps for r in refs]), "returns": np.array([r.ret for r in refs]),
        "terminated": np.array([r.terminated for r in refs]),
        "actions": np.concatenate(actions) if actions else np.zeros(0),
        "rewards": np.concatenate(rewards) if rewards else np.zeros(0, np.float32),
    }
