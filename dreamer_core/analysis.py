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
- ``latent_pca``: posterior features of a few episodes projected on their first principal
  components, with the time step, return-to-go and action of every point (``pca``).
- ``kl_surprise``: KL(posterior || prior) per row, how much each observation surprised the model.
- ``value_vs_return``: the critic's value of every posterior state of real episodes against
  the real discounted return that followed (``discounted_returns``, ``correlation``).
- ``run_metrics`` / ``return_curves``: a run's logged metrics, whichever command wrote them
  (``run_kind``: ``dreamer train`` or stages 02/03), and imagined vs real return over training.

Row alignment (data/schema.py): row t holds obs_t, the action that led to it and the reward
received on arriving. The dream of rows ``t >= C`` starts from the posterior of row C-1 and
never sees those rows' observations, so "horizon h" is row ``C - 1 + h``.

Loading a run's models and data is ``runs``'s job; this module takes them as arguments. It
reads only a run's logged metrics itself (``run_metrics``: ``logging.read_metrics``, the
evaluation reports, and ``runs.read_config`` to tell the run kind). ``latent_pca``,
``kl_surprise`` and ``value_vs_return`` use the world-model interface alone (interfaces.py):
states from ``observe`` / ``imagine``, their ``features`` and ``categorical_latents``, actions
through ``actions.encode``; the dream views also call ``WorldModel.reconstruct_and_dream``.

Imports: numpy, torch, interfaces, world_model, behavior, policies, runs, logging, data, envs,
errors, types. It must not import viz (which draws these results and imports this module),
stages or cli.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamer_core import policies, runs
from dreamer_core.behavior import ActorCritic
from dreamer_core.data.dataset import Dataset, EpisodeRef
from dreamer_core.data.sampler import batch_from_episode
from dreamer_core.data.schema import Episode
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.errors import DreamerError
from dreamer_core.interfaces import WorldModelInterface
from dreamer_core.logging import read_metrics
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
    result.return_to_go = discounted_returns(result.reward, result.cont, agent.cfg.gamma).astype(np.float32)


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


# --- plain numerics (tested against reference implementations) -----------------------------------


def discounted_returns(reward: np.ndarray, cont: np.ndarray, gamma: float, bootstrap: float = 0.0) -> np.ndarray:
    """The discounted return after each row of one episode (row alignment of data/schema.py):
    ``G_t = r_{t+1} + gamma * c_{t+1} * G_{t+1}`` with ``G_{L-1} = bootstrap``, where row t+1
    holds the reward received on arriving there and ``c = 1 - is_terminal``. This is what the
    critic's value of state t estimates. With ``gamma = 1`` it is the plain return-to-go.

    Shapes:
        reward, cont: ``[L]``      returns: ``[L]`` float64
    """
    reward = np.asarray(reward, np.float64)
    cont = np.asarray(cont, np.float64)
    assert reward.shape == cont.shape and reward.ndim == 1, (reward.shape, cont.shape)
    out = np.zeros(len(reward))
    if len(reward):
        out[-1] = bootstrap
    for t in range(len(reward) - 2, -1, -1):
        out[t] = reward[t + 1] + gamma * cont[t + 1] * out[t + 1]
    return out


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two samples; NaN with fewer than two points or a constant one.

    Shapes:
        x, y: ``[M]``
    """
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    assert x.shape == y.shape, (x.shape, y.shape)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    norm = np.sqrt((dx ** 2).sum() * (dy ** 2).sum())
    return float((dx * dy).sum() / norm) if norm > 0 else float("nan")


@dataclass
class PCA:
    """Principal components of a point cloud.

    Attributes:
        points: ``[M, k]`` the centred points projected on the components.
        axes: ``[k, F]`` unit directions, by decreasing variance; each one's largest entry (in
            absolute value) is positive, so the signs do not flip between runs.
        mean: ``[F]`` the centre.
        explained: ``[k]`` share of the total variance along each component.
    """

    points: np.ndarray
    axes: np.ndarray
    mean: np.ndarray
    explained: np.ndarray


def pca(x: np.ndarray, components: int = 2) -> PCA:
    """The first ``components`` principal components of ``x`` (rows are points), by SVD.

    Shapes:
        x: ``[M, ...]`` (flattened to ``[M, F]``)      returns: see :class:`PCA`, k = min(components, M, F).
    """
    x = np.asarray(x, np.float64)
    x = x.reshape(len(x), -1)
    if len(x) < 2:
        raise DreamerError(f"PCA needs at least two points (got {len(x)}).")
    mean = x.mean(0)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(components, len(s))
    axes = vt[:k]
    signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    total = (s ** 2).sum()
    explained = s[:k] ** 2 / total if total > 0 else np.zeros(k)
    return PCA(points=centred @ axes.T, axes=axes, mean=mean, explained=explained)


# --- the latent space ---------------------------------------------------------------------------


@dataclass
class LatentPCA:
    """Posterior features of a few episodes on their first principal components.

    Attributes:
        points: ``[M, k]`` every row of the episodes, projected (``pca`` of the features).
        explained: ``[k]`` share of the feature variance along each component.
        episode, step: ``[M]`` the dataset episode and the row t of each point.
        return_to_go: ``[M]`` the real return after row t (discounted by ``gamma``;
            ``discounted_returns``), cut where the episode ends.
        action: ``[M, ...]`` float, the action taken from the state of row t (stored in row
            t+1, in the env's encoding); NaN on each episode's last row, where none was taken.
        feat_dim: F, the size of the features.
    """

    points: np.ndarray
    explained: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    return_to_go: np.ndarray
    action: np.ndarray
    feat_dim: int


@torch.no_grad()
def latent_pca(world_model: WorldModelInterface, dataset: Dataset, episodes: Sequence[int], components: int = 2,
               gamma: float = 1.0, seed: int = 0, device: str | torch.device = "cpu") -> LatentPCA:
    """PCA of the posterior features (``observe`` then ``features``) of every row of
    ``episodes``, each filtered from its first row under seed ``seed + index``.

    Shapes:
        returns: M = the rows of the episodes together; see :class:`LatentPCA`.
    """
    if not episodes:
        raise DreamerError("Give at least one episode for the latent PCA.")
    feats, ids, steps, togo, actions = [], [], [], [], []
    for i in episodes:
        ep = dataset.load_episode(episode_ref(dataset, i))
        batch = episode_to_batch(ep, device=device)
        with _seeded(seed + int(i), batch.reward.device):
            post = world_model.observe(batch)  # [1, L]
        feats.append(world_model.features(post)[0].float().cpu().numpy())  # [L, F]
        ids.append(np.full(ep.rows, int(i)))
        steps.append(np.arange(ep.rows))
        togo.append(discounted_returns(ep.reward, 1.0 - ep.is_terminal.astype(np.float64), gamma))
        taken = np.full(ep.action.shape, np.nan)
        taken[:-1] = ep.action[1:]
        actions.append(taken)
    feat = np.concatenate(feats)
    fit = pca(feat, components)
    return LatentPCA(points=fit.points, explained=fit.explained, episode=np.concatenate(ids),
                     step=np.concatenate(steps), return_to_go=np.concatenate(togo),
                     action=np.concatenate(actions), feat_dim=int(feat.shape[1]))


@torch.no_grad()
def kl_surprise(world_model: WorldModelInterface, batch: Batch, seed: int = 0) -> np.ndarray | None:
    """KL(posterior || prior) of every row, in nats: how much the observation of row t changed
    what the model expected there from the rows before and the action. High at events the
    model could not foresee (a reset, a collision, a reward), low where it knows what comes.

    Through the interface only: the posteriors come from ``observe``; the prior of row t is one
    ``imagine`` step from the posterior of row t-1 under row t's action (from the initial state
    with a zero action where ``is_first`` or at row 0, as ``observe`` restarts), whose class
    probabilities ``categorical_latents`` gives. That prior shares the posterior's
    deterministic state, so this is the KL the loss balances (its ``kl`` diagnostic is the mean).
    None for Gaussian latents: their mean and std are not reachable through the interface.

    Shapes:
        batch: ``[B, T]``      returns: ``[B, T]`` float64 (or None).
    """
    B, T = batch.shape
    with _seeded(seed, batch.reward.device):
        post = world_model.observe(batch)  # [B, T]
        latents = world_model.categorical_latents(post)
        if latents is None:
            return None
        post_probs = latents[1].double()  # [B, T, S, K]
        action = world_model.actions.encode(batch.action)  # [B, T, A], model encoding
        restart = batch.is_first.bool().clone()
        action = torch.where(restart[..., None], torch.zeros_like(action), action)
        restart[:, 0] = True  # row 0 starts from the initial state (observe does, without a state)
        prior_probs = torch.zeros_like(post_probs)
        flat = post.flatten(0, 1)  # [B*T]
        index = torch.arange(B * T, device=restart.device).reshape(B, T)
        for fresh in (True, False):
            rows = index[restart] if fresh else index[~restart]
            if len(rows) == 0:
                continue
            start = world_model.initial_state(len(rows)) if fresh else flat[rows - 1]
            step_action = action.flatten(0, 1)[rows]
            states, _ = world_model.imagine(start, lambda _state, a=step_action: a, 1)  # [n, 2]
            prior = world_model.categorical_latents(states[:, 1])
            assert prior is not None
            prior_probs.flatten(0, 1)[rows] = prior[1].double()
    kl = torch.special.xlogy(post_probs, post_probs) - torch.special.xlogy(post_probs, prior_probs)
    return kl.sum((-2, -1)).cpu().numpy()  # [B, T]


# --- the critic against real returns ------------------------------------------------------------


@dataclass
class ValueCheck:
    """The critic's value of the posterior states of real episodes against the real returns.

    Attributes:
        value: ``[M]`` critic value of the posterior state of row t.
        ret: ``[M]`` the real discounted return after row t (``discounted_returns`` with the
            agent's gamma), cut at the episode's end.
        exact: ``[M]`` bool, True where that cut does not matter: the episode terminated, or
            the discount left at its end is below ``tolerance``. Rows of truncated episodes
            (time limits) closer to the end lack the return after the limit.
        episode, step: ``[M]`` which of the given episodes, and the row t.
        correlation: Pearson correlation of value and return over the exact points (NaN with
            fewer than two); ``correlation_all``: over every point.
        gamma: the discount used.

    Terminal rows are left out: nothing follows them, and the critic's value there is never used.
    """

    value: np.ndarray
    ret: np.ndarray
    exact: np.ndarray
    episode: np.ndarray
    step: np.ndarray
    correlation: float
    correlation_all: float
    gamma: float


@torch.no_grad()
def value_vs_return(world_model: WorldModelInterface, agent: ActorCritic, episodes: Sequence[Episode],
                    gamma: float | None = None, tolerance: float = 0.01, seed: int = 0,
                    device: str | torch.device = "cpu") -> ValueCheck:
    """Filter each episode (``observe``, seed ``seed + index``) and compare the critic's value
    of each posterior state with the real discounted return that followed (``gamma``: the
    agent's by default). Episodes played by the agent (``play_episode``) show how well the
    critic knows its own policy; other data (a random dataset) is off-policy for it.

    Shapes:
        returns: M = the non-terminal rows of the episodes together; see :class:`ValueCheck`.
    """
    if not episodes:
        raise DreamerError("Give at least one episode to compare values with returns.")
    gamma = float(agent.cfg.gamma if gamma is None else gamma)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("value", "ret", "exact", "episode", "step")}
    for i, ep in enumerate(episodes):
        batch = episode_to_batch(ep, device=device)
        with _seeded(seed + i, batch.reward.device):
            post = world_model.observe(batch)  # [1, L]
        value = agent.value(world_model.features(post)).mean[0].double().cpu().numpy()  # [L]
        cont = 1.0 - ep.is_terminal.astype(np.float64)
        ret = discounted_returns(ep.reward, cont, gamma)
        left = ep.rows - 1 - np.arange(ep.rows)  # rows after t in the episode
        exact = np.full(ep.rows, ep.terminated) | (gamma ** left < tolerance)
        keep = ~ep.is_terminal
        for name, values in (("value", value), ("ret", ret), ("exact", exact), ("episode", np.full(ep.rows, i)),
                             ("step", np.arange(ep.rows))):
            parts[name].append(values[keep])
    out = {k: np.concatenate(v) for k, v in parts.items()}
    exact = out["exact"].astype(bool)
    return ValueCheck(value=out["value"], ret=out["ret"], exact=exact, episode=out["episode"], step=out["step"],
                      correlation=correlation(out["value"][exact], out["ret"][exact]),
                      correlation_all=correlation(out["value"], out["ret"]), gamma=gamma)


# --- a run's metrics ------------------------------------------------------------------------------


def run_kind(run: Path | str) -> str:
    """``online`` for a run of ``dreamer train`` (its config section ``train``), else ``staged``
    (stages 02 and 03: ``train-world-model``, ``train-behavior``)."""
    return "online" if runs.read_config(run, "train") is not None else "staged"


@dataclass
class RunMetrics:
    """A run's logged metrics, the same fields whichever command wrote them.

    Attributes:
        kind: ``online`` (``dreamer train``) or ``staged`` (stages 02 and 03).
        world_model: the records of ``RUN/metrics.jsonl``: ``wm/*``; staged runs also ``val/*``
            (the held-out split), online runs also ``train/*``, ``eval/*``, ``imag/*``, ...
        behavior: the records with ``actor/*``, ``critic/*``, ``imag/*``: ``metrics.jsonl`` of
            an online run, ``behavior_metrics.jsonl`` of a staged one.
        world_model_unit, behavior_unit: what their ``step`` counts (``env steps`` online;
            ``world-model updates`` and ``behavior updates`` staged).
        evaluations: the reports of ``dreamer evaluate`` (``RUN/eval/*/report.json``), oldest first.
    """

    kind: str
    world_model: list[dict[str, Any]]
    behavior: list[dict[str, Any]]
    world_model_unit: str
    behavior_unit: str
    evaluations: list[dict[str, Any]] = field(default_factory=list)

    def has(self, key: str, part: str = "world_model") -> bool:
        """Whether ``key`` was logged (with a finite number) in ``part``."""
        return metric_series(getattr(self, part), key).shape[1] > 0


def run_metrics(run: Path | str) -> RunMetrics:
    """Read a run's metrics files and evaluation reports (unreadable reports are skipped)."""
    run = Path(run)
    kind = run_kind(run)
    records = read_metrics(run, runs.METRICS)
    reports = []
    for path in sorted((run / "eval").glob("*/report.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    if kind == "online":
        return RunMetrics(kind, records, records, "env steps", "env steps", reports)
    return RunMetrics(kind, records, read_metrics(run, runs.BEHAVIOR_METRICS), "world-model updates",
                      "behavior updates", reports)


def metric_series(records: list[dict[str, Any]], key: str) -> np.ndarray:
    """``[2, n]``: the steps and values where ``key`` was logged with a finite number."""
    points = [(r["step"], float(r[key])) for r in records
              if isinstance(r.get(key), (int, float)) and np.isfinite(r[key]) and "step" in r]
    return np.array(points, np.float64).T if points else np.zeros((2, 0))


def return_curves(metrics: RunMetrics) -> dict[str, np.ndarray]:
    """Imagined and real return over training.

    Returns:
        ``imagined``: ``imag/return`` (the mean lambda-return of the actor's imagined rollouts:
        a discounted return from replayed states) against ``behavior_unit``; ``train``: the
        training episodes' returns (online runs; none for staged ones); ``eval``: evaluation
        returns, online ``eval/return`` against env steps, staged the ``dreamer evaluate``
        reports against the behavior update they evaluated; ``eval_std``: their spread.

    Shapes:
        imagined, train, eval: ``[2, n]`` (steps, values); eval_std: ``[n]``.
    """
    imagined = metric_series(metrics.behavior, "imag/return")
    if metrics.kind == "online":
        evals = metric_series(metrics.world_model, "eval/return")
        stds = [r.get("eval/return_std", np.nan) for r in metrics.world_model
                if isinstance(r.get("eval/return"), (int, float)) and np.isfinite(r["eval/return"])]
        return {"imagined": imagined, "train": metric_series(metrics.world_model, "train/return"),
                "eval": evals, "eval_std": np.asarray(stds, np.float64)}
    reports = sorted((r for r in metrics.evaluations if "behavior_update" in r and "return_mean" in r),
                     key=lambda r: r["behavior_update"])
    evals = np.array([[r["behavior_update"] for r in reports], [r["return_mean"] for r in reports]], np.float64)
    return {"imagined": imagined, "train": np.zeros((2, 0)), "eval": evals.reshape(2, -1),
            "eval_std": np.array([r.get("return_std", np.nan) for r in reports], np.float64)}
