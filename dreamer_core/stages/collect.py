"""Stage 01: run a policy in K environments and write the rollouts as a dataset.

    dreamer collect --env CartPole-v1 --out data/cartpole --steps 20000 --num-envs 2

The loop steps an EnvPool (autoreset on the step after an episode ends), asks the policy for
K actions at once, and records each env's rows with an EpisodeRecorder. Finished episodes go
to the DatasetWriter, which closes a shard every few episodes or seconds, so a killed
collector loses little. Ctrl-C or SIGTERM ends collection early but keeps everything
collected, including the episodes in progress (written as truncated); the command then exits
with code 130.

Imports: envs, data, policies, config, logging, runs, and the stage kit (stages.common: stop
requests; stages.outputs: the --out check).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dreamer_core import config as config_lib
from dreamer_core.data.writer import COMPRESSIONS, DatasetWriter, EpisodeRecorder
from dreamer_core.envs import EnvConfig, make_env_pool
from dreamer_core.envs.pool import BACKENDS
from dreamer_core.logging import ProgressDisplay
from dreamer_core.runs import load_policy
from dreamer_core.stages.common import StopRequest
from dreamer_core.stages.outputs import check_writable


@dataclass(frozen=True)
class CollectConfig:
    """Everything `dreamer collect` needs.

    ``steps`` counts env steps (transitions) over all envs; ``episodes`` counts finished
    episodes. Exactly one of them is positive.
    """

    out: str
    env: EnvConfig = field(default_factory=lambda: EnvConfig(id="CartPole-v1"))
    steps: int = 10_000
    episodes: int = 0
    num_envs: int = 1
    seed: int | None = 0
    policy: str = "random"
    backend: str = "auto"
    shard_episodes: int = 1000
    shard_seconds: float = 60.0
    compression: str = "lzf"
    device: str = "auto"


@dataclass
class CollectResult:
    steps: int
    episodes: int
    returns: list[float]
    seconds: float
    shards: int
    out: str
    interrupted: bool = False

    @property
    def steps_per_second(self) -> float:
        return self.steps / max(self.seconds, 1e-9)

    def summary_line(self) -> str:
        if self.returns:
            r = np.asarray(self.returns)
            ret = f"return mean {r.mean():.2f} (min {r.min():.2f}, max {r.max():.2f})"
        else:
            ret = "no finished episode"
        stop = " [interrupted]" if self.interrupted else ""
        return (
            f"collected {self.steps} steps, {self.episodes} episodes, {ret}, "
            f"{self.steps_per_second:,.0f} env steps/s -> {self.out} ({self.shards} shards){stop}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "episodes": self.episodes, "seconds": self.seconds,
            "steps_per_second": self.steps_per_second, "shards": self.shards, "out": self.out,
            "return_mean": float(np.mean(self.returns)) if self.returns else None,
            "interrupted": self.interrupted,
        }


FLAGS = {"steps": "--steps", "episodes": "--episodes", "num_envs": "--num-envs", "backend": "--backend",
         "shard_episodes": "--shard-episodes", "shard_seconds": "--shard-seconds", "compression": "--compression",
         "device": "--device", "policy": "--policy"}


def validate(cfg: CollectConfig) -> None:
    """Every problem of a resolved config in one DreamerError (see ``config_lib.Problems``)."""
    p = config_lib.Problems("collect", FLAGS)
    if cfg.steps < 0 or cfg.episodes < 0:
        p.add(f"--steps and --episodes cannot be negative (got steps={cfg.steps}, episodes={cfg.episodes})")
    elif (cfg.steps > 0) == (cfg.episodes > 0):
        p.add(f"give exactly one budget: --steps N or --episodes N (got steps={cfg.steps}, episodes={cfg.episodes})")
    p.at_least("num_envs", cfg.num_envs, 1)
    p.at_least("shard_episodes", cfg.shard_episodes, 1)
    p.positive("shard_seconds", cfg.shard_seconds)
    p.one_of("compression", cfg.compression, COMPRESSIONS)
    p.one_of("backend", cfg.backend, BACKENDS)
    p.device("device", cfg.device)
    p.require(bool(cfg.policy.strip()), "--policy is empty: give 'random' or a run directory")
    p.raise_any()


def run(cfg: CollectConfig, progress: bool = True) -> CollectResult:
    """Collect until the step or episode budget is reached; return what was written."""
    validate(cfg)
    check_writable(cfg.out, f"--out {cfg.out}")
    pool = make_env_pool(cfg.env, num_envs=cfg.num_envs, seed=cfg.seed, backend=cfg.backend)
    try:
        policy = load_policy(
            cfg.policy, pool.observation_space, pool.action_space, cfg.num_envs, seed=cfg.seed, device=cfg.device
        )
        writer = DatasetWriter(
            cfg.out,
            env_id=cfg.env.id,
            env_config=cfg.env.to_dict(),
            observation_space=pool.observation_space,
            action_space=pool.action_space,
            policy=policy.name,
            seed=cfg.seed,
            shard_episodes=cfg.shard_episodes,
            shard_seconds=cfg.shard_seconds,
            compression=cfg.compression,
        )
        with writer, StopRequest() as stop:
            return _loop(cfg, pool, policy, writer, progress, stop)
    finally:
        pool.close()


def _loop(
    cfg: CollectConfig, pool, policy, writer: DatasetWriter, progress: bool, stop: StopRequest
) -> CollectResult:
    obs = pool.reset(seed=cfg.seed)
    recorder = EpisodeRecorder(pool.observation_space, pool.action_space, obs)
    steps = episodes = 0
    returns: list[float] = []
    recent: deque[float] = deque(maxlen=100)
    target = cfg.steps if cfg.steps > 0 else cfg.episodes
    start = time.perf_counter()
    bar = ProgressDisplay(target, f"collect {cfg.env.id}", enabled=progress)
    with bar:
        while (steps if cfg.steps > 0 else episodes) < target and not stop.requested:
            actions = policy.act(obs, recorder.is_first)
            obs, reward, terminated, truncated = pool.step(actions)
            # A step budget reached mid-batch drops the batch's extra steps; an episode budget
            # keeps the first episodes to finish (in env order).
            added, finished = recorder.record(actions, obs, reward, terminated, truncated,
                                              limit=cfg.steps - steps if cfg.steps > 0 else None)
            steps += added
            if cfg.episodes > 0:
                finished = finished[: cfg.episodes - episodes]
            for episode in finished:
                writer.add_episode(episode)
                returns.append(episode.ret)
                recent.append(episode.ret)
                episodes += 1
            writer.maybe_close_shard()
            if bar.due():
                rate = steps / max(time.perf_counter() - start, 1e-9)
                mean = f"{np.mean(recent):.1f}" if recent else "-"
                bar.update(
                    steps if cfg.steps > 0 else episodes,
                    f"{rate:,.0f} steps/s | episodes {episodes} | return {mean}",
                )
        bar.update(steps if cfg.steps > 0 else episodes, f"episodes {episodes}", force=True)
    interrupted = stop.requested
    if cfg.steps > 0 or interrupted:
        # Keep the episodes in progress: they are real data, cut by the collector (a truncation).
        for episode in recorder.in_progress():
            writer.add_episode(episode)
    seconds = time.perf_counter() - start
    writer.close()
    return CollectResult(steps, episodes, returns, seconds, len(writer.shards), str(cfg.out), interrupted)


def make_config(out: str, presets: list[str], sets: list[str], flags: dict[str, Any]) -> CollectConfig:
    """Resolve a CollectConfig: defaults, then presets in order, then the flags the user gave
    (dotted keys; None means not given), then ``--set`` overrides."""
    flags = dict(flags)
    if flags.get("episodes") is not None and flags.get("steps") is None:
        flags["steps"] = 0  # --episodes N alone replaces the default step budget
    cfg = config_lib.resolve(CollectConfig(out=out), "collect", presets, flags, sets)
    validate(cfg)
    return cfg
