"""Dreams: what a trained world model sees, remembers and imagines along one recorded episode.

    dreamer dream --run runs/cartpole --episode 3 --context 5 --out dreams.gif

Users look at decoded dreams to ask "is the model wrong, or is the policy?". This module
computes the views from a run's checkpoints and a dataset, as plain numpy arrays that
notebooks plot, and renders them for ``dreamer dream``:

- ``load_world_model`` / ``run_dataset`` / ``load_episode_batch``: a run's model, its data
  (checked against the checkpoint's spaces) and one episode window as a ``[1, L]`` Batch.
- ``dream_episode``: ground truth, posterior reconstructions, an open-loop dream after a
  context of C real rows under the recorded actions (``WorldModel.reconstruct_and_dream``)
  and, given an actor, under the actor's own actions; per-step errors against the truth and
  the repeat-last-frame baseline; predicted vs real reward and continue; which latent
  classes fire at each step. ``error_vs_horizon`` averages the errors over many episodes.
- ``imagine_with_actor``: rollouts of the actor inside the model (rewards, continues,
  values, lambda-returns, action distributions), as stage 03 trains on them;
  ``play_episode`` plays the actor in the real env for comparison.
- ``dream_frames`` / ``plot_error`` / ``run``: the video and the error plot of the CLI.
- ``dataset_overview`` and ``demo_run``: what the notebooks need besides the above.

Row alignment (data/schema.py): row t holds obs_t, the action that led to it and the reward
received on arriving. The dream of rows ``t >= C`` starts from the posterior of row C-1 and
never sees those rows' observations, so "horizon h" is row ``C - 1 + h``.

Layer: a stage module (it reads the other stages' artifacts like stage 04 does): imports
world_model, behavior, policies, data, envs, viz, checkpoint, config, and
stages.train_world_model / stages.agents / stages.collect / stages.train_behavior to load and
build runs. It must not import cli; the notebooks and cli import it.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dreamer_core import checkpoint, losses, viz
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic
from dreamer_core.data.dataset import Dataset, EpisodeRef
from dreamer_core.data.schema import Episode
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.errors import DreamerError
from dreamer_core.files import atomic_write_bytes
from dreamer_core.policies import AgentPolicy
from dreamer_core.stages import agents
from dreamer_core.stages.agents import BEHAVIOR, load_agent
from dreamer_core.stages.train_world_model import (
    WORLD_MODEL,
    resolve_device,
    world_model_from_checkpoint,
)
from dreamer_core.types import Batch
from dreamer_core.viz import write_video  # noqa: F401 (part of this module's API for the notebooks)
from dreamer_core.world_model import WorldModel

Tensor = torch.Tensor
ACTOR = (40, 150, 60)  # colour of the actor's dream, beside viz.REAL / RECON / DREAM


# --- loading -----------------------------------------------------------------------------------


def load_world_model(run: Path | str, device: str | torch.device = "cpu") -> tuple[WorldModel, dict]:
    """The world model of ``RUN/world_model.pt`` in eval mode, and its checkpoint blob."""
    run = Path(run)
    if not run.is_dir():
        raise DreamerError(
            f"No run directory at {run}. Pass --run with a directory written by "
            "`dreamer train-world-model DATASET --out RUN`."
        )
    if not (run / WORLD_MODEL).exists():
        raise DreamerError(
            f"The run {run} has no {WORLD_MODEL}, so there is no world model to dream with. "
            f"Train one with `dreamer train-world-model DATASET --out {run}`."
        )
    model, blob = world_model_from_checkpoint(run / WORLD_MODEL, device)
    return model.eval(), blob


def run_dataset(run: Path | str, dataset: Path | str | None = None, blob: dict | None = None) -> Dataset:
    """Open ``dataset`` (default: the first dataset in ``RUN/config.yaml``) and check that its
    spaces fit the run's world model (``blob``: its checkpoint, loaded when not given)."""
    run = Path(run)
    if dataset is None:
        recorded = _recorded_datasets(run, blob)
        if not recorded:
            raise DreamerError(
                f"The run {run} records no dataset (no config.yaml with config.datasets). "
                "Pass --dataset DATASET."
            )
        dataset = Path(recorded[0])
        if not dataset.exists():
            raise DreamerError(
                f"The run {run} was trained on {dataset} (recorded in its config.yaml), but that path "
                "does not exist from here (relative paths count from where training ran). "
                "Pass --dataset DATASET."
            )
    ds = Dataset(dataset)
    blob = blob if blob is not None else checkpoint.load(run / WORLD_MODEL)
    checkpoint.check_spaces(blob, ds.observation_space, ds.action_space, f"The dataset {ds.path}",
                            run / WORLD_MODEL)
    return ds


def _recorded_datasets(run: Path, blob: dict | None) -> list[str]:
    path = run / "config.yaml"
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
        return list((data.get("config") or {}).get("datasets") or [])
    return list(((blob or {}).get("config") or {}).get("datasets") or [])


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
    return Batch.from_episode(ep, start, stop).to(device)


# --- dreams ------------------------------------------------------------------------------------


@dataclass
class DreamResult:
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

    @property
    def image_keys(self) -> list[str]:
        return [k for k, v in self.real.items() if v.dtype == np.uint8]

    @property
    def vector_keys(self) -> list[str]:
        return [k for k, v in self.real.items() if v.dtype != np.uint8]

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


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global torch RNG for a block and restore it afterwards (the model's sampling
    draws from the global RNG; forking keeps a caller's own random stream untouched)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
        post, _ = world_model.rssm.observe(world_model.encoder(batch.obs), world_model.codec.encode(batch.action),
                                           batch.is_first)  # [1, L]: the states behind out["recon"]
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
    if post.is_categorical:
        result.latent_fired = post.stoch[0].cpu().numpy() > 0
        result.latent_probs = post.logits[0].exp().float().cpu().numpy()
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
    result.value = agent.value(post.feat()).mean[0].float().cpu().numpy()
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


# --- the actor in imagination ---------------------------------------------------------------------


@dataclass
class Imagination:
    """Rollouts of the actor inside the world model from real start states.

    Index 0 of the horizon axis is the start state (the posterior of row ``context - 1``);
    quantities of transitions (``reward``, ``cont``, ``lambda_return``) have H entries, with
    entry h belonging to the step out of state h (DreamerV3 / behavior.py convention).

    Attributes:
        obs: key -> ``[N, H+1, ...]`` decoded states (images float in [0, 1]).
        action: ``[N, H+1, A]`` actor-space actions (one-hot for Discrete); the last one is
            never executed. ``env_action``: ``[N, H+1, ...]`` the same in the env's encoding.
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
    cfg = agent.cfg
    with _seeded(seed, batch.reward.device):
        obs = {k: v[:, :context] for k, v in batch.obs.items()}
        action = world_model.codec.encode(batch.action[:, :context])
        post, _ = world_model.rssm.observe(world_model.encoder(obs), action, batch.is_first[:, :context])
        start = post[:, context - 1].map(lambda x: x.repeat_interleave(samples, 0))  # [N]
        states, actions, _, entropy = agent.imagine(world_model, start, horizon, dynamics=False)
    feat = states.feat()  # [N, H+1, F]
    reward = world_model.reward_dist(feat[:, 1:]).mean  # [N, H]
    cont_dist = world_model.cont_dist(feat[:, 1:])
    disc = cfg.gamma * cont_dist.mode  # as stage 03 discounts
    value = agent.value(feat).mean  # [N, H+1]
    returns = losses.lambda_return(reward, value, disc, cfg.lam)  # [N, H]
    first = 1.0 - batch.is_terminal[:, context - 1].float().repeat_interleave(samples)
    weight = losses.discount_weights(disc, first, cfg.gamma)
    policy = agent.policy(feat)
    probs = getattr(policy, "probs", None) if agent.head.kind != "box" else None
    N, H1 = actions.shape[:2]
    env_action = agent.head.to_env(actions.flatten(0, 1))
    return Imagination(
        obs={k: v.float().cpu().numpy() for k, v in _decode(world_model, feat).items()},
        action=actions.float().cpu().numpy(), env_action=env_action.reshape(N, H1, *env_action.shape[1:]),
        policy_probs=None if probs is None else probs.float().cpu().numpy(),
        entropy=entropy.float().cpu().numpy(), reward=reward.float().cpu().numpy(),
        cont=cont_dist.mean.float().cpu().numpy(), value=value.float().cpu().numpy(),
        lambda_return=returns.float().cpu().numpy(), weight=weight.float().cpu().numpy(),
    )


def _decode(world_model: WorldModel, feat: Tensor) -> dict[str, Tensor]:
    """Decoder means in display units (images shifted from [-0.5, 0.5] to [0, 1]), as
    ``reconstruct_and_dream`` shows them."""
    image_keys = set(world_model.decoder.image_keys)
    return {k: (d.mode + 0.5).clamp(0, 1) if k in image_keys else d.mode
            for k, d in world_model.decoder(feat).items()}


@torch.no_grad()
def play_episode(world_model: WorldModel, agent: ActorCritic, env: EnvConfig | dict[str, Any], seed: int = 0,
                 mode: str = "mode", max_steps: int = 0, device: str | torch.device = "cpu") -> Episode:
    """Play one episode with the agent in the real env (``env``: e.g. ``blob["env_config"]`` of
    ``stages.agents.load_agent``), greedily by default like ``dreamer evaluate``.

    Returns:
        the episode in the dataset's row layout (data/schema.py), ready for
        ``episode_to_batch`` and ``dream_episode``.
    """
    env_cfg = env if isinstance(env, EnvConfig) else EnvConfig.from_dict(dict(env))
    gym_env = make_env(env_cfg, seed=seed)
    policy = AgentPolicy(world_model, agent, 1, mode=mode, seed=seed, device=device)
    try:
        return agents.play_episode(gym_env, policy, seed, max_steps).episode
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


# --- frames ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _font(size: int = 11):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text_strip(width: int, items: list[tuple[int, str, tuple[int, int, int]]], height: int = 14) -> np.ndarray:
    """A white ``[height, width, 3]`` strip with coloured labels ``(x, text, colour)``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for x, text, color in items:
        draw.text((x, 1), text, fill=color, font=_font(height - 3))
    return np.asarray(image).copy()


@functools.lru_cache(maxsize=64)
def _label(width: int, text: str, color: tuple[int, int, int]) -> np.ndarray:
    """The same panel labels repeat on every frame: render each once."""
    return _text_strip(width, [(2, text, color)])


def _polyline(canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, color: tuple[int, int, int]) -> None:
    """Draw connected points into ``canvas`` in place (integer pixel coordinates)."""
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        canvas[np.linspace(y0, y1, n).round().astype(int), np.linspace(x0, x1, n).round().astype(int)] = color
    if len(xs) == 1:
        canvas[ys[0], xs[0]] = color


@dataclass
class _Traces:
    """Line plots of every vector dimension (plus reward and continue) over the whole window:
    ``full`` has all lines drawn, ``base`` only axes and labels; frame t reveals ``full`` up to
    step t (drawing once and revealing keeps a long episode fast to render)."""

    base: np.ndarray
    full: np.ndarray
    xs: np.ndarray  # [L] pixel column of each row
    rows: list[tuple[int, int]] = field(default_factory=list)  # (top, bottom) of each plot


def _trace_series(result: DreamResult, max_dims: int) -> list[tuple[str, list[np.ndarray], tuple[float, float] | None]]:
    """(label, [real, recon, dream, (actor)] each ``[L]``, fixed y-range or None) per plot."""
    out = []
    for key in result.vector_keys:
        flat = [np.asarray(s[key], np.float32).reshape(result.length, -1) for s in _series(result)]
        for d in range(flat[0].shape[1]):
            out.append((f"{key}[{d}]", [f[:, d] for f in flat], None))
    out = out[:max_dims]
    rewards = [result.reward, result.reward_recon, result.reward_dream]
    if result.reward_actor is not None:
        rewards.append(result.reward_actor)
    out.append(("reward", rewards, None))
    out.append(("continue", [result.cont, result.cont_recon, result.cont_dream], (0.0, 1.0)))
    return out


def _series(result: DreamResult) -> list[dict[str, np.ndarray]]:
    series = [result.real, result.recon, result.dream]
    return series + [result.actor_dream] if result.actor_dream is not None else series


def _make_traces(result: DreamResult, width: int, plot_height: int = 42, margin: int = 64,
                 max_dims: int = 16) -> _Traces:
    L, C = result.length, result.context
    plots = _trace_series(result, max_dims)
    colors = [viz.REAL, viz.RECON, viz.DREAM, ACTOR]
    gap = 4
    base = np.full((len(plots) * (plot_height + gap), width, 3), 255, np.uint8)
    xs = margin + np.round(np.arange(L) * (width - margin - 3) / max(L - 1, 1)).astype(int)
    x_context = (xs[C - 1] + xs[C]) // 2 if C < L else xs[-1]
    traces = _Traces(base, base.copy(), xs)
    for i, (label, series, fixed) in enumerate(plots):
        top = i * (plot_height + gap)
        bottom = top + plot_height - 1
        traces.rows.append((top, bottom))
        lo, hi = fixed or _value_range(series[:2])
        for canvas in (traces.base, traces.full):
            canvas[top:bottom + 1, margin - 1] = (170, 170, 170)
            canvas[bottom, margin - 1:] = (170, 170, 170)
            canvas[top:bottom, x_context] = (245, 190, 180)  # the dream starts right of this line
            # the name in the middle of the margin, the y-range at its ends
            for y, text, color, size in ((top, f"{hi:.3g}", (150, 150, 150), 11),
                                         (top + plot_height // 2 - 7, label, (60, 60, 60), 14),
                                         (bottom - 10, f"{lo:.3g}", (150, 150, 150), 11)):
                canvas[y:y + size, 2:margin - 4] = _text_strip(margin - 6, [(0, text, color)], size)
        for values, color in zip(series, colors):
            v = np.clip((np.asarray(values, np.float64) - lo) / (hi - lo), 0, 1)
            ys = (bottom - 1 - np.round(np.nan_to_num(v, nan=0.5) * (bottom - top - 2))).astype(int)
            _polyline(traces.full, xs, ys, color)
    return traces


def _value_range(series: list[np.ndarray]) -> tuple[float, float]:
    """y-range from the real and reconstructed values (a wild dream is clipped, not rescaled)."""
    values = np.concatenate([np.asarray(s, np.float64).ravel() for s in series])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    pad = max(0.1 * (hi - lo), 0.05 * max(abs(lo), abs(hi)), 1e-3)
    return lo - pad, hi + pad


def dream_frames(result: DreamResult, height: int = 128, trace_width: int = 440) -> list[np.ndarray]:
    """Video frames: a header; real | reconstruction | dream (| actor's dream) images per image
    key; below them, bars of the current vector values beside line plots of every vector
    dimension, reward and continue up to the current step (black real, blue reconstruction,
    red dream, green actor's dream). A red strip on top marks the imagined rows.

    Shapes:
        returns: ``L`` frames, uint8 ``[Hf, Wf, 3]`` (all the same size).
    """
    L, C = result.length, result.context
    series = _series(result)
    names = ["real", "recon", "dream", "actor dream"][:len(series)]
    colors = [viz.REAL, viz.RECON, viz.DREAM, ACTOR]
    scales = {k: np.maximum(np.abs(result.real[k].reshape(L, -1)).max(0), 1e-3) * 1.25
              for k in result.vector_keys}
    traces = _make_traces(result, trace_width)
    legend = _text_strip(trace_width, [(64 + 52 * i, name, color) for i, (name, color) in enumerate(zip(names, colors))])
    frames = []
    for t in range(L):
        panels = []
        for key in result.image_keys:
            panels += [_labelled(_border(viz.fit(viz.to_rgb(s[key][t]), height)), f"{name} {key}", color)
                       for s, name, color in zip(series, names, colors)]
        bars = None
        if result.vector_keys:
            values = [np.concatenate([np.asarray(s[k][t], np.float32).ravel() for k in result.vector_keys])
                      for s in series]
            scale = np.concatenate([scales[k] for k in result.vector_keys])
            bars = _labelled(viz.vector_panel(values, colors[:len(series)], scale, height), "values", viz.REAL)
        plot = traces.base.copy()
        x = traces.xs[t]
        plot[:, :x + 1] = traces.full[:, :x + 1]
        for top, bottom in traces.rows:
            column = plot[top:bottom, x]
            column[(column == 255).all(-1)] = (200, 200, 200)  # the current step
        plot = _stack([legend, plot])
        bottom_row = viz.side_by_side([bars, plot]) if bars is not None else plot
        body = _stack([viz.side_by_side(panels), bottom_row]) if panels else bottom_row
        imagined = t >= C
        header = _text_strip(body.shape[1], [(4, f"{result.title}  row {t}/{L - 1}  context {C}"
                                                  + ("  (imagined)" if imagined else "  (observed)"),
                                              viz.DREAM if imagined else viz.REAL)], 16)
        strip = np.full((3, body.shape[1], 3), viz.DREAM if imagined else (255, 255, 255), np.uint8)
        frames.append(_stack([strip, header, body]))
    return frames


def _border(image: np.ndarray) -> np.ndarray:
    """A 1-pixel grey frame, so panels with white backgrounds stay apart."""
    return np.pad(image, ((1, 1), (1, 1), (0, 0)), constant_values=160)


def _labelled(panel: np.ndarray, label: str, color: tuple[int, int, int]) -> np.ndarray:
    return _stack([_label(panel.shape[1], label, color), panel])


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Stack images vertically, left-aligned, padded white to the widest."""
    width = max(p.shape[1] for p in parts)
    padded = [np.concatenate([p, np.full((p.shape[0], width - p.shape[1], 3), 255, np.uint8)], 1) for p in parts]
    return np.concatenate(padded, 0)


def plot_error(result: DreamResult, path: Path | str) -> Path:
    """PNG: observation MSE and reward error against the horizon (dream, repeat-last baseline,
    reconstruction), written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = result.horizon()
    h = np.arange(1, len(errors["dream"]) + 1)
    fig, (ax_obs, ax_rew) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_obs.plot(h, errors["dream"], color=np.array(viz.DREAM) / 255, marker=".", label="open-loop dream")
    ax_obs.plot(h, errors["baseline"], color="0.5", ls="--", label="repeat last context row")
    ax_obs.plot(h, errors["recon"], color=np.array(viz.RECON) / 255, label="reconstruction (sees the row)")
    ax_obs.set_title("observation MSE")
    ax_rew.plot(h, errors["reward_dream"], color=np.array(viz.DREAM) / 255, marker=".", label="dream")
    ax_rew.plot(h, errors["reward_recon"], color=np.array(viz.RECON) / 255, label="reconstruction")
    ax_rew.set_title("|predicted - real reward|")
    for ax in (ax_obs, ax_rew):
        ax.set_xlabel(f"horizon (steps after the {result.context} context rows)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(result.title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# --- the `dreamer dream` command -------------------------------------------------------------------


@dataclass(frozen=True)
class DreamConfig:
    """Everything `dreamer dream` needs."""

    run: str = ""
    out: str = "dreams.gif"  # .gif or .mp4; the error plot goes beside it as <stem>_error.png
    dataset: str = ""  # empty: the first dataset recorded in RUN/config.yaml
    episode: int = 0
    context: int = 5  # real rows the dream observes
    horizon: int = 0  # imagined steps after the context; 0: to the end of the episode
    actor: bool = False  # also dream under the actor's own actions (needs RUN/behavior.pt)
    fps: int = 15
    height: int = 128  # pixels of each image panel
    seed: int = 0
    device: str = "auto"


def make_config(run: str, out: str, presets: list[str], sets: list[str], flags: dict[str, Any]) -> DreamConfig:
    return config_lib.resolve(DreamConfig(run=run, out=out), "dream", presets, flags, sets)


@dataclass
class DreamReport:
    video: Path
    error_plot: Path
    result: DreamResult
    episode: int
    rows: int

    def summary_line(self) -> str:
        h = self.result.horizon()
        parts = ""
        if len(h["dream"]):
            parts = (f"; open-loop MSE mean {np.mean(h['dream']):.4g} vs repeat-last "
                     f"{np.mean(h['baseline']):.4g} over {len(h['dream'])} imagined steps")
        return (f"dreamed episode {self.episode} ({self.result.length} of its {self.rows} rows, context "
                f"{self.result.context}){parts} -> {self.video}, {self.error_plot}")


def run(cfg: DreamConfig) -> DreamReport:
    """Load the run and the episode, dream, and write the video and the error plot."""
    out = Path(cfg.out)
    if out.suffix not in (".gif", ".mp4"):
        raise DreamerError(f"--out must end in .gif or .mp4 (got {out.name!r}).")
    if cfg.context < 1:
        raise DreamerError(f"--context must be at least 1 (got {cfg.context}): the dream starts from a real row.")
    if cfg.horizon < 0:
        raise DreamerError(f"--horizon must be 0 (to the end of the episode) or positive (got {cfg.horizon}).")
    device = resolve_device(cfg.device)
    world_model, blob = load_world_model(cfg.run, device)
    agent = load_agent(cfg.run, device)[1] if cfg.actor else None
    dataset = run_dataset(cfg.run, cfg.dataset or None, blob)
    rows = episode_ref(dataset, cfg.episode).rows
    if cfg.context >= rows:
        raise DreamerError(
            f"--context {cfg.context} leaves nothing to dream: episode {cfg.episode} has {rows} rows "
            f"({rows - 1} steps). Use a context below {rows}, or pick a longer episode."
        )
    length = rows if cfg.horizon == 0 else min(rows, cfg.context + cfg.horizon)
    batch = load_episode_batch(dataset, cfg.episode, 0, length, device)
    result = dream_episode(world_model, batch, cfg.context, agent=agent, seed=cfg.seed)
    result.title = f"{Path(cfg.run).name}: episode {cfg.episode}"
    video = write_video(dream_frames(result, cfg.height), out, cfg.fps)
    error_plot = plot_error(result, out.with_name(f"{out.stem}_error.png"))
    return DreamReport(video, error_plot, result, cfg.episode, rows)


# --- a small run for the notebooks -----------------------------------------------------------------


def demo_run(root: Path | str, env: str = "CartPole-v1", steps: int = 4000, world_model_updates: int = 600,
             behavior_updates: int = 200, upto: str = "behavior", seed: int = 0, world_model_lr: float = 1e-3,
             progress: bool = True) -> tuple[Path, Path]:
    """Build (or reuse) a small run with the ``tiny`` preset: ``root/data`` (random policy)
    and ``root/run``, about two minutes on a CPU for the defaults.

    ``upto``: ``dataset``, ``world_model`` or ``behavior``, the last stage needed. A finished
    stage leaves a marker and is reused; an unfinished one (a killed notebook) is redone.
    ``world_model_lr``: the tiny model learns much faster at 1e-3 than at the default 1e-4
    (CartPole: held-out open-loop MSE 0.028 after 600 updates, vs 0.053 after 2000 at 1e-4).
    The behavior keeps its defaults; 200 updates only show the machinery, not a good agent.
    Returns ``(run, dataset)``.
    """
    from dreamer_core.stages import collect, train_behavior, train_world_model

    order = ["dataset", "world_model", "behavior"]
    if upto not in order:
        raise DreamerError(f"upto must be one of {order} (got {upto!r}).")
    root = Path(root)
    data, run_dir = root / "data", root / "run"
    root.mkdir(parents=True, exist_ok=True)
    for stage in order[:order.index(upto) + 1]:
        marker = root / f".{stage}.done"
        if marker.exists():
            continue
        if stage == "dataset":
            shutil.rmtree(data, ignore_errors=True)
            collect.run(collect.make_config(str(data), [], [], {"env.id": env, "steps": steps, "seed": seed}),
                        progress=progress)
        elif stage == "world_model":
            shutil.rmtree(run_dir, ignore_errors=True)
            train_world_model.run(train_world_model.make_config(
                [str(data)], str(run_dir), ["tiny"], [], {"updates": world_model_updates, "seed": seed, "optim.lr": world_model_lr}),
                progress=progress)
        else:
            for name in (BEHAVIOR, train_behavior.LATEST, train_behavior.METRICS, "behavior_config.yaml"):
                (run_dir / name).unlink(missing_ok=True)
            train_behavior.run(train_behavior.make_config(
                str(run_dir), [], ["tiny"], [], {"updates": behavior_updates, "seed": seed}), progress=progress)
        marker.touch()
    return run_dir, data
