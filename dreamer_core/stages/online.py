"""Online Dreamer: the stages alternating in one process (`dreamer train`).

    dreamer train --env CartPole-v1 --out runs/cartpole-online --steps 20000

Stage 01 (acting in K envs), 02 (a world-model update) and 03 (a behavior update) take turns:
random actions until ``prefill`` env steps, then the current agent acts, and after every env
step the loop runs as many updates as the train ratio owes. The train ratio is DreamerV3's:
replayed steps (``batch_size * seq_len`` per update) per env step. Each behavior update starts
its imagination from the posterior states of the world-model update on the same batch.

Finished episodes go to the in-memory replay (uniform windows, as in DreamerV3) and to the
dataset ``RUN/replay`` as crash-safe shards, so stages 02-04, the dream views and the
notebooks can use everything an online run produced. Greedy evaluation episodes run every
``eval_every`` env steps in a separate env. Checkpoints are written every
``checkpoint_seconds`` and at the end: ``RUN/checkpoints/online_latest.pt`` (everything needed
to resume) plus ``world_model.pt`` and ``behavior.pt`` in the formats stages 03/04 load.

Resuming (``--resume``, also after ``kill -9``) restores weights, optimizers, the return
normaliser, counters and RNG states from the checkpoint and rebuilds the replay from the
shards. Episodes flushed after the checkpoint are kept and their steps counted; episodes in
progress at the kill are lost (they were never written).

With ``replay_context`` (off by default) windows that start mid-episode begin from the latent
state the world model computed for the row before them when it was last replayed
(:class:`ReplayContext`).

Writes into RUN/: ``train_config.yaml``, ``metrics.jsonl`` (step = env steps), ``tb/``,
``replay/`` (dataset), ``world_model.pt``, ``behavior.pt``, ``checkpoints/``.

Imports: world_model, behavior, policies, envs, data, checkpoint, config, logging, and the
stage modules whose update steps and checkpoint formats it reuses.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dreamer_core import checkpoint, runtime
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic, BehaviorConfig
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.data.store import is_dataset_dir
from dreamer_core.data.writer import DatasetWriter, EpisodeRecorder
from dreamer_core.envs import EnvConfig, make_env, make_env_pool
from dreamer_core.errors import DreamerError
from dreamer_core.files import atomic_write_bytes
from dreamer_core.logging import MetricsSink, ProgressBar
from dreamer_core.nets.rssm import RSSM, RSSMState
from dreamer_core.optim import OptimConfig, make_optimizer
from dreamer_core.policies import AgentPolicy, RandomPolicy
from dreamer_core.stages.agents import BEHAVIOR, play_episode
from dreamer_core.stages.collect import StopRequest
from dreamer_core.stages.train_behavior import TrainBehaviorConfig, behavior_update
from dreamer_core.stages.train_world_model import (
    WORLD_MODEL,
    TrainWorldModelConfig,
    autocast,
    resolve_device,
    truncate_metrics,
    world_model_update,
)
from dreamer_core.world_model import WorldModel, WorldModelConfig

LATEST = Path("checkpoints") / "online_latest.pt"
REPLAY = "replay"
MAX_NONFINITE = 5  # non-finite world-model losses in a row before the run stops
CONFIG = "train_config.yaml"


@dataclass(frozen=True)
class TrainConfig:
    """Everything `dreamer train` needs. ``steps``, ``prefill`` and ``eval_every`` count env
    steps: agent steps summed over the K envs (after action repeat)."""

    out: str = "runs/online"
    env: EnvConfig = field(default_factory=lambda: EnvConfig(id="CartPole-v1"))
    steps: int = 20_000
    num_envs: int = 1
    prefill: int = 1000  # random-policy env steps before the first update
    train_ratio: float = 64.0  # replayed steps (batch_size * seq_len per update) per env step
    batch_size: int = 16
    seq_len: int = 64
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    precision: str = "float32"
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default (use 1 beside other busy processes)
    backend: str = "auto"
    eval_every: int = 2000
    eval_episodes: int = 10
    log_every: int = 500
    checkpoint_seconds: float = 300.0
    shard_seconds: float = 60.0
    replay_context: bool = False  # start mid-episode windows from the latent stored when last replayed


# What `dreamer train` changes from the DreamerV3 paper's settings, so that a 2-core CPU learns a
# task in minutes (each measured in benchmarks/RESULTS.md): the `tiny` model size, 16 x 32 replay
# windows, and learning rates raised 10x (world model 1e-3 instead of 1e-4, actor and critic 3e-4
# instead of 3e-5): with a few thousand updates the paper's rates barely move the actor (CartPole
# stayed at the random policy's return after 2000 updates). `--preset paper-lr` restores them;
# `--preset XS` (S, M...) picks a bigger model.
ONLINE_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in config_lib.PRESETS["train"]["tiny"].items() if k not in ("batch_size", "seq_len")},
    "batch_size": 16, "seq_len": 32,
    "optim.lr": 1e-3, "behavior.actor_optim.lr": 3e-4, "behavior.critic_optim.lr": 3e-4,
}


def make_config(out: str, presets: list[str], sets: list[str], flags: dict[str, Any]) -> TrainConfig:
    """The online defaults (ONLINE_DEFAULTS over TrainConfig), then presets in order, then the
    flags given (None = not given), then --set."""
    base = config_lib.apply_overrides(TrainConfig(out=out), ONLINE_DEFAULTS)
    cfg = config_lib.resolve(base, "train", presets, flags, sets)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    problems = []
    if cfg.steps < 1:
        problems.append(f"--steps must be positive (got {cfg.steps})")
    if cfg.num_envs < 1:
        problems.append(f"--num-envs must be at least 1 (got {cfg.num_envs})")
    if cfg.train_ratio <= 0:
        problems.append(f"--train-ratio must be positive (got {cfg.train_ratio})")
    if cfg.prefill < cfg.seq_len:
        problems.append(f"prefill ({cfg.prefill}) must hold at least one window of seq_len={cfg.seq_len} steps")
    if cfg.eval_every < 0 or cfg.eval_episodes < 0:
        problems.append("eval_every and eval_episodes must be >= 0")
    if problems:
        raise DreamerError("Invalid `dreamer train` config: " + "; ".join(problems) + ". Fix these and try again.")


def replay_path(cfg: TrainConfig) -> str:
    """The run's dataset as an absolute path (what its world model and behavior record)."""
    return str((Path(cfg.out) / REPLAY).resolve())


def wm_config(cfg: TrainConfig, updates: int) -> TrainWorldModelConfig:
    """The stage-02 config an online run's world model is stored under (so stages 03/04 load it)."""
    return TrainWorldModelConfig(
        datasets=(replay_path(cfg),), out=cfg.out, model=cfg.model, optim=cfg.optim,
        batch_size=cfg.batch_size, seq_len=cfg.seq_len, updates=updates, seed=cfg.seed, device=cfg.device,
        precision=cfg.precision, threads=cfg.threads, val_fraction=0.0,
    )


def behavior_config(cfg: TrainConfig, updates: int) -> TrainBehaviorConfig:
    """The stage-03 config an online run's actor-critic is stored under."""
    return TrainBehaviorConfig(
        run=cfg.out, datasets=(replay_path(cfg),), behavior=cfg.behavior, batch_size=cfg.batch_size,
        seq_len=cfg.seq_len, updates=updates, seed=cfg.seed, device=cfg.device, threads=cfg.threads,
    )


class Clock:
    """Wall-clock seconds per part of the loop (collect, world model, behavior, data, eval...)."""

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals: dict[str, float] = dict(totals or {})
        self._part: str | None = None
        self._since = 0.0

    def switch(self, part: str | None) -> None:
        now = time.perf_counter()
        if self._part is not None:
            self.totals[self._part] = self.totals.get(self._part, 0.0) + now - self._since
        self._part, self._since = part, now


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

    def __init__(self, deter: int, stoch: int, classes: int, categorical: bool):
        self.categorical, self.classes = categorical, classes
        self.deter = np.zeros((0, deter), np.float32)
        self.stoch = np.zeros((0, stoch), np.int16 if categorical else np.float32)
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

    def initial_state(self, rssm: RSSM, starts: np.ndarray, is_first: torch.Tensor) -> RSSMState | None:
        """The state before each window (``starts`` [B], ``is_first`` [B, T]); None when no
        window has a stored context (the model then starts every window from its initial state)."""
        prev = np.asarray(starts) - 1
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
        init = rssm.initial(len(starts))
        mask = torch.from_numpy(use).to(device)[:, None]
        stoch_mask = mask[:, :, None] if self.categorical else mask
        # Only deter and stoch of the state before a window feed the next step; the other fields
        # (the initial state's logits or mean/std) are carried along unused.
        return dataclasses.replace(init, deter=torch.where(mask, deter, init.deter),
                                   stoch=torch.where(stoch_mask, stoch, init.stoch))

    def store(self, starts: np.ndarray, post: RSSMState) -> None:
        """Remember the posterior ``[B, T]`` of the windows at ``starts``."""
        T = post.deter.shape[1]
        rows = (np.asarray(starts)[:, None] + np.arange(T)).reshape(-1)
        self._ensure(int(rows.max()) + 1)
        self.deter[rows] = post.deter.reshape(len(rows), -1).float().cpu().numpy()
        stoch = post.stoch.flatten(0, 1)
        self.stoch[rows] = (stoch.argmax(-1) if self.categorical else stoch.float()).cpu().numpy()
        self.valid[rows] = True


class OnlineTrainer:
    """One online run (fresh or resumed)."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True, steps: int | None = None,
                 threads: int | None = None):
        """``steps`` and ``threads``: new values for a resumed run (None: keep the stored ones)."""
        self.run_dir = Path(cfg.out)
        self.progress = progress
        blob = self._resume_or_refuse(resume)
        if blob is not None:
            cfg = replace(config_lib.from_dict(TrainConfig, blob["config"]), out=cfg.out)
        if steps is not None:
            cfg = replace(cfg, steps=steps)
        if threads is not None:
            cfg = replace(cfg, threads=threads)
        validate(cfg)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        runtime.setup(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.resumes = 0 if blob is None else int(blob["resumes"]) + 1
        self.env_seed = cfg.seed + 7919 * self.resumes  # a resumed run meets new episodes, not the same ones again
        self.pool = make_env_pool(cfg.env, num_envs=cfg.num_envs, seed=self.env_seed, backend=cfg.backend)
        self.eval_env = None  # made at the first evaluation, kept for the run
        try:
            self._build(blob)
        except BaseException:
            self.pool.close()
            raise

    def _resume_or_refuse(self, resume: bool) -> dict[str, Any] | None:
        latest = self.run_dir / LATEST
        if resume:
            if not latest.exists():
                raise DreamerError(
                    f"--resume was given, but {latest} does not exist: the run {self.run_dir} never wrote "
                    "a checkpoint (it is written every checkpoint_seconds and at the end). Start it afresh "
                    "without --resume (delete the folder first if it holds partial data)."
                )
            return checkpoint.load(latest)
        taken = [p for p in (latest, self.run_dir / WORLD_MODEL, self.run_dir / BEHAVIOR, self.run_dir / REPLAY)
                 if p.exists()]
        if taken:
            raise DreamerError(
                f"The run {self.run_dir} already holds {', '.join(p.name for p in taken)}. Pass --resume to "
                "continue it, or choose another --out; nothing was changed."
            )
        return None

    def _build(self, blob: dict[str, Any] | None) -> None:
        cfg = self.cfg
        obs_space, act_space = self.pool.observation_space, self.pool.action_space
        self.observation_space, self.action_space = obs_space, act_space
        if blob is not None:
            checkpoint.check_spaces(blob, obs_space, act_space, "The environment", self.run_dir / LATEST)
        self.world_model = WorldModel(cfg.model, obs_space, act_space).to(self.device)
        self.wm_optim = make_optimizer(self.world_model.parameters(), cfg.optim)
        self.agent = ActorCritic(cfg.behavior, self.world_model.rssm.feat_dim, act_space,
                                 self.world_model.rssm.feat_onehot).to(self.device)
        groups = self.agent.parameter_groups()
        self.actor_optim = make_optimizer(groups["actor"], cfg.behavior.actor_optim)
        self.critic_optim = make_optimizer(groups["critic"], cfg.behavior.critic_optim)
        self.replay = SequenceSampler.from_spaces(obs_space, act_space, cfg.batch_size, cfg.seq_len, seed=cfg.seed)
        rssm = cfg.model.rssm
        self.context = ReplayContext(rssm.deter, rssm.stoch, rssm.classes, rssm.latent == "categorical") \
            if cfg.replay_context else None
        self.random_policy = RandomPolicy(act_space, cfg.num_envs, seed=self.env_seed)
        self.policy = AgentPolicy(self.world_model, self.agent, cfg.num_envs, mode="sample", seed=self.env_seed,
                                  device=self.device)
        self.eval_policy = AgentPolicy(self.world_model, self.agent, 1, mode="mode", seed=cfg.seed, device=self.device)
        self.env_steps = self.updates = self.episodes = self.evals = 0
        self.clock = Clock()
        self.last_eval: float | None = None
        self.best_eval: float | None = None
        replay_dir = self.run_dir / REPLAY
        flushed = 0
        if blob is not None:
            self._restore(blob)
            flushed = self._reload_replay(replay_dir)
            self.replay.load_state_dict(blob["replay_sampler"])  # continues the stream over the rebuilt rows
            extra = max(0, flushed - int(blob["dataset_steps"]))  # flushed after the checkpoint
            truncate_metrics(self.run_dir, self.env_steps)
            self.env_steps += extra
        self.writer = DatasetWriter(
            replay_dir, env_id=cfg.env.id, env_config=cfg.env.to_dict(), observation_space=obs_space,
            action_space=act_space, policy=f"online:{self.run_dir}", seed=cfg.seed, shard_episodes=100_000,
            shard_seconds=cfg.shard_seconds,
        )

    def _reload_replay(self, replay_dir: Path) -> int:
        """Fill the replay with every episode in the run's shards; returns their env steps."""
        if not is_dataset_dir(replay_dir):
            return 0
        dataset = Dataset(replay_dir)
        for episode in dataset.iter_episodes():
            self.replay.add_episode(episode)
        return dataset.num_steps

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.run_dir / CONFIG, yaml.safe_dump(
            {"stage": "train", "config": config_lib.to_dict(cfg)}, sort_keys=False).encode())
        obs = self.pool.reset(seed=self.env_seed)
        recorder = EpisodeRecorder(self.observation_space, self.action_space, obs)
        self.policy.reset()
        recent: deque[float] = deque(maxlen=20)
        sums: dict[str, float] = {}
        count = 0
        start_time, start_steps, start_updates = time.perf_counter(), self.env_steps, self.updates
        last_checkpoint = time.monotonic()
        next_log = (self.env_steps // cfg.log_every + 1) * cfg.log_every
        next_eval = 0 if self.evals == 0 else (self.env_steps // max(cfg.eval_every, 1) + 1) * cfg.eval_every
        interrupted = False
        nonfinite = 0
        with self.writer, MetricsSink(self.run_dir) as sink, StopRequest() as stop, \
                ProgressBar(cfg.steps, f"train {cfg.env.id}", self.progress) as bar:
            self.sink = sink
            bar.update(self.env_steps, force=True)
            while self.env_steps < cfg.steps and not stop.requested:
                if cfg.eval_every and cfg.eval_episodes and self.env_steps >= next_eval and self.env_steps >= cfg.prefill:
                    self.evaluate()
                    next_eval = (self.env_steps // cfg.eval_every + 1) * cfg.eval_every
                # --- act ---
                self.clock.switch("collect")
                acting = self.random_policy if self.env_steps < cfg.prefill else self.policy
                actions = acting.act(obs, recorder.is_first)
                obs, reward, terminated, truncated = self.pool.step(actions)
                added, finished = recorder.record(actions, obs, reward, terminated, truncated)
                self.env_steps += added
                self.clock.switch("data")
                for episode in finished:
                    self.writer.add_episode(episode)
                    self.replay.add_episode(episode)
                    self.episodes += 1
                    recent.append(float(episode.reward.sum()))
                    sink.log(self.env_steps, {"train/return": recent[-1], "train/length": float(episode.steps)})
                self.writer.maybe_close_shard()
                # --- learn ---
                while self.updates < self.updates_owed() and self.replay.num_rows >= cfg.seq_len:
                    metrics = self.train_step()
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + v
                    count += 1
                    nonfinite = nonfinite + 1 if "wm/nonfinite" in metrics else 0
                    if nonfinite >= MAX_NONFINITE:
                        self.writer.close_shard()  # keep the data collected so far
                        raise DreamerError(
                            f"Stopped after {nonfinite} non-finite world-model losses in a row at update {self.updates} "
                            f"(env step {self.env_steps}); those updates changed nothing, and the last checkpoint "
                            f"({self.run_dir / LATEST}) is kept. Lower the learning rate (--set optim.lr=...) or check "
                            "the env for extreme observations or rewards; then continue with --resume."
                        )
                self.clock.switch(None)
                # --- report ---
                if self.env_steps >= next_log:
                    self._log(sums, count, start_time, start_steps, start_updates)
                    sums, count = {}, 0
                    next_log = (self.env_steps // cfg.log_every + 1) * cfg.log_every
                if time.monotonic() - last_checkpoint >= cfg.checkpoint_seconds:
                    self.save()
                    last_checkpoint = time.monotonic()
                if bar.due():
                    bar.update(self.env_steps, self._status(recent, start_time, start_steps, start_updates))
            interrupted = stop.requested
            # Keep the episodes in progress (real data, cut by the loop: a truncation), so the
            # dataset holds every env step counted.
            for episode in recorder.in_progress():
                self.writer.add_episode(episode)
                self.replay.add_episode(episode)
            if count:
                self._log(sums, count, start_time, start_steps, start_updates)
            if not interrupted and cfg.eval_episodes:
                self.evaluate()
            self.save()
            bar.update(self.env_steps, self._status(recent, start_time, start_steps, start_updates), force=True)
        elapsed = time.perf_counter() - start_time
        return {
            "env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes,
            "eval_return": self.last_eval, "best_eval_return": self.best_eval, "seconds": elapsed,
            "time": dict(self.clock.totals), "interrupted": interrupted, "run": str(self.run_dir),
            **self._rates(elapsed, start_steps, start_updates),
        }

    def updates_owed(self) -> int:
        """Updates the train ratio asks for after ``env_steps`` (none before the prefill ends)."""
        cfg = self.cfg
        if self.env_steps < cfg.prefill:
            return 0
        return 1 + int((self.env_steps - cfg.prefill) * cfg.train_ratio / (cfg.batch_size * cfg.seq_len))

    def train_step(self) -> dict[str, float]:
        """One world-model update, then one behavior update from its posterior states."""
        cfg = self.cfg
        self.clock.switch("data")
        starts = self.replay.draw_starts()
        batch = self.replay.gather(starts).to(self.device)
        state = None if self.context is None else self.context.initial_state(self.world_model.rssm, starts, batch.is_first)
        self.clock.switch("world_model")
        ok, metrics, post = world_model_update(self.world_model, self.wm_optim, cfg.optim, self.updates, batch,
                                               cfg.precision, state)
        out = {f"wm/{k}": v for k, v in metrics.items()}
        self.updates += 1
        if not ok:
            return {"wm/nonfinite": 1.0}
        if self.context is not None:
            self.context.store(starts, post)
        self.clock.switch("behavior")
        self.world_model.requires_grad_(False)  # behavior learning never changes the world model
        try:
            with autocast(self.device, cfg.precision):
                out.update(behavior_update(self.world_model, self.agent, self.actor_optim, self.critic_optim,
                                           cfg.behavior, batch, post=post))
        finally:
            self.world_model.requires_grad_(True)
        return out

    def evaluate(self) -> float:
        """Greedy episodes in a separate env; logs eval/* at the current env step."""
        cfg = self.cfg
        self.clock.switch("eval")
        if self.eval_env is None:
            self.eval_env = make_env(cfg.env, seed=None)
        returns, lengths = [], []
        for i in range(cfg.eval_episodes):
            played = play_episode(self.eval_env, self.eval_policy,
                                  seed=cfg.seed + 1_000_000 + self.evals * cfg.eval_episodes + i)
            returns.append(played.ret)
            lengths.append(played.episode.steps)
        self.evals += 1
        mean = float(np.mean(returns))
        self.last_eval = mean
        self.best_eval = mean if self.best_eval is None else max(self.best_eval, mean)
        self.sink.log(self.env_steps, {
            "eval/return": mean, "eval/return_std": float(np.std(returns)), "eval/return_min": float(np.min(returns)),
            "eval/return_max": float(np.max(returns)), "eval/length": float(np.mean(lengths)),
            "eval/updates": float(self.updates), "eval/wall_seconds": self.wall_seconds(),
        })
        self.clock.switch(None)
        return mean

    def wall_seconds(self) -> float:
        """Seconds spent in the loop over all sessions of this run (resumes included)."""
        return float(sum(self.clock.totals.values()))

    def _log(self, sums: dict[str, float], count: int, start_time: float, start_steps: int,
             start_updates: int) -> None:
        """Log the update metrics averaged since the last record, plus speed and time shares."""
        record = {k: v / count for k, v in sums.items()} if count else {}
        record.update(self._rates(time.perf_counter() - start_time, start_steps, start_updates))
        self.sink.log(self.env_steps, record)

    def _rates(self, elapsed: float, start_steps: int, start_updates: int) -> dict[str, float]:
        out = {
            "speed/env_steps_per_second": (self.env_steps - start_steps) / max(elapsed, 1e-9),
            "speed/updates_per_second": (self.updates - start_updates) / max(elapsed, 1e-9),
            "speed/updates": float(self.updates), "speed/episodes": float(self.episodes),
        }
        total = self.wall_seconds()
        out.update({f"time/{k}": v for k, v in self.clock.totals.items()})
        out.update({f"time_share/{k}": v / max(total, 1e-9) for k, v in self.clock.totals.items()})
        return out

    def _status(self, recent: deque, start_time: float, start_steps: int, start_updates: int) -> str:
        elapsed = max(time.perf_counter() - start_time, 1e-9)
        phase = " prefill |" if self.env_steps < self.cfg.prefill else ""
        ret = f"{np.mean(recent):.1f}" if recent else "-"
        ev = "-" if self.last_eval is None else f"{self.last_eval:.1f}"
        return (f"{phase} {(self.env_steps - start_steps) / elapsed:.1f} steps/s | {self.updates} updates "
                f"({(self.updates - start_updates) / elapsed:.2f}/s) | return {ret} | eval {ev}")

    # --- checkpoints --------------------------------------------------------------------------

    def save(self) -> None:
        """Flush finished episodes to a shard, then write the resume checkpoint and the stage
        artifacts (each file atomically)."""
        self.clock.switch("checkpoint")
        self.writer.close_shard()
        cfg_dict = config_lib.to_dict(self.cfg)
        dataset_steps = sum(s.num_steps for s in self.writer.shards)
        state = {
            "world_model": self.world_model.state_dict(),
            "wm_optim": self.wm_optim.state_dict(),
            "agent": self.agent.state_dict(),
            "actor_optim": self.actor_optim.state_dict(),
            "critic_optim": self.critic_optim.state_dict(),
            "replay_sampler": self.replay.state_dict(),
            "random_policy_rng": self.random_policy.rng.bit_generator.state,
            "policy_rng": self.policy.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes, "evals": self.evals,
            "resumes": self.resumes, "dataset_steps": dataset_steps, "clock": dict(self.clock.totals),
            "last_eval": self.last_eval, "best_eval": self.best_eval,
        }
        checkpoint.save(self.run_dir / LATEST, state, cfg_dict, self.observation_space, self.action_space)
        checkpoint.save(self.run_dir / WORLD_MODEL, {"model": self.world_model.state_dict(), "update": self.updates},
                        config_lib.to_dict(wm_config(self.cfg, self.updates)), self.observation_space,
                        self.action_space)
        meta = {"update": self.updates, "world_model_update": self.updates, "env_config": self.cfg.env.to_dict(),
                "env_steps": self.env_steps}
        checkpoint.save(self.run_dir / BEHAVIOR, {"agent": self.agent.state_dict(), **meta},
                        config_lib.to_dict(behavior_config(self.cfg, self.updates)), self.observation_space,
                        self.action_space)
        self.clock.switch(None)

    def _restore(self, blob: dict[str, Any]) -> None:
        self.world_model.load_state_dict(blob["world_model"])
        self.wm_optim.load_state_dict(blob["wm_optim"])
        self.agent.load_state_dict(blob["agent"])
        self.actor_optim.load_state_dict(blob["actor_optim"])
        self.critic_optim.load_state_dict(blob["critic_optim"])
        self.random_policy.rng.bit_generator.state = blob["random_policy_rng"]
        self.policy.generator.set_state(blob["policy_rng"])
        torch.set_rng_state(blob["torch_rng"])
        self.env_steps, self.updates = int(blob["env_steps"]), int(blob["updates"])
        self.episodes, self.evals = int(blob["episodes"]), int(blob["evals"])
        self.clock = Clock(blob["clock"])
        self.last_eval, self.best_eval = blob["last_eval"], blob["best_eval"]

    def close(self) -> None:
        self.pool.close()
        if self.eval_env is not None:
            self.eval_env.close()
            self.eval_env = None


def run(cfg: TrainConfig, resume: bool = False, progress: bool = True, steps: int | None = None,
        threads: int | None = None) -> dict[str, Any]:
    """Train online (or resume) and return a summary."""
    trainer = OnlineTrainer(cfg, resume=resume, progress=progress, steps=steps, threads=threads)
    try:
        result = trainer.run()
    finally:
        trainer.close()
    return result


def summary_line(result: dict[str, Any]) -> str:
    """One line for the CLI: final evaluation, counts, speed and where the artifacts are."""
    run = Path(result["run"])
    ev = "-" if result["eval_return"] is None else f"{result['eval_return']:.1f}"
    best = "-" if result["best_eval_return"] is None else f"{result['best_eval_return']:.1f}"
    stop = " [interrupted; continue with --resume]" if result["interrupted"] else ""
    return (
        f"trained {result['env_steps']} env steps, {result['updates']} updates, {result['episodes']} episodes in "
        f"{result['seconds'] / 60:.1f} min: eval return {ev} (best {best}){stop}\n"
        f"  dataset     {run / REPLAY}\n"
        f"  checkpoints {run / LATEST}, {run / WORLD_MODEL}, {run / BEHAVIOR}\n"
        f"  metrics     {run / 'metrics.jsonl'} (curve: dreamer plot {run})"
    )
