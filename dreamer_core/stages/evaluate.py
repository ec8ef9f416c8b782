"""Stage 04: run a trained agent in the real environment and report how it does.

    dreamer evaluate --run runs/cartpole --episodes 20 --video

Plays N episodes with the run's agent (``RUN/world_model.pt`` + ``RUN/behavior.pt``) in the
env its data came from (or ``--env``), one episode after another with seeds ``seed + i``.
Writes a new folder ``RUN/eval/<timestamp>/`` per evaluation (earlier ones are kept):
``report.json`` (per-episode returns and lengths, mean, std, min, max, seed, action mode),
``returns.png``, and with ``--video`` one GIF/MP4 per episode (up to ``video_episodes``) with
the real frames | the world model's posterior reconstruction | an open-loop dream that sees
only the first ``context`` frames and then imagines under the actions the agent took.

Imports: runs (loading the agent), policies, envs, analysis (the reconstruction and dream of a
played episode), viz (its frames, the returns plot), config, the stage kit (stages.outputs: the
RUN/eval check). No other stage.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamer_core import analysis, viz
from dreamer_core import config as config_lib
from dreamer_core.checkpoint import BehaviorArtifact
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.errors import DreamerError
from dreamer_core.files import atomic_write_bytes
from dreamer_core.logging import ProgressDisplay
from dreamer_core.policies import AgentPolicy, play_episode
from dreamer_core.runs import BEHAVIOR, load_agent
from dreamer_core.runtime import resolve_device
from dreamer_core.stages.outputs import check_folder


@dataclass(frozen=True)
class EvaluateConfig:
    run: str = ""
    env: str = ""  # env id; empty: the env the run's data came from (with the same options)
    episodes: int = 10
    seed: int = 0
    mode: str = "mode"  # mode (= greedy) | greedy | sample: config.ACTION_MODES, the words of train --eval-mode
    device: str = "auto"
    threads: int = 0
    max_steps: int = 0  # cap per episode (0: the env's own limit)
    video: bool = False
    video_episodes: int = 3
    video_format: str = "gif"  # gif | mp4
    fps: int = 15
    context: int = 5  # real frames the dream sees before imagining


def make_config(run: str, presets: list[str], sets: list[str], flags: dict[str, Any]) -> EvaluateConfig:
    cfg = config_lib.resolve(EvaluateConfig(run=run), "evaluate", presets, flags, sets)
    validate(cfg)
    return cfg


FLAGS = {"episodes": "--episodes", "video_format": "--video-format", "mode": "--mode", "device": "--device"}


def validate(cfg: EvaluateConfig) -> None:
    """Every problem of a resolved config in one DreamerError (see ``config_lib.Problems``)."""
    p = config_lib.Problems("evaluate", FLAGS)
    p.at_least("episodes", cfg.episodes, 1)
    p.one_of("mode", cfg.mode, config_lib.ACTION_MODES)
    p.device("device", cfg.device)
    p.at_least("threads", cfg.threads, 0, " (0 = torch's default)")
    p.at_least("max_steps", cfg.max_steps, 0, " (0 = the env's own limit)")
    p.require(cfg.video_format in ("gif", "mp4"), f"--video-format must be gif or mp4 (got {cfg.video_format!r})")
    p.at_least("video_episodes", cfg.video_episodes, 0)
    p.at_least("fps", cfg.fps, 1)
    p.at_least("context", cfg.context, 1)
    p.raise_any()


@dataclass
class EvalResult:
    report: dict[str, Any]
    folder: Path

    def summary_line(self) -> str:
        r = self.report
        return (f"evaluated {r['episodes']} episodes of {r['env_id']} ({r['mode']} actions): return "
                f"{r['return_mean']:.2f} +- {r['return_std']:.2f} (min {r['return_min']:.2f}, max "
                f"{r['return_max']:.2f}), length {r['length_mean']:.1f} -> {self.folder / 'report.json'}")


def env_config_for(artifact: BehaviorArtifact, env_id: str) -> EnvConfig:
    """The recorded env options, with the id replaced when one is given."""
    recorded = dict(artifact.env_config or {})
    if not recorded and not env_id:
        raise DreamerError(
            "The run does not record which env its data came from. Pass --env ID (with the same options "
            "the data was collected with)."
        )
    if env_id:
        recorded["id"] = env_id
    return EnvConfig.from_dict(recorded)


def run(cfg: EvaluateConfig, progress: bool = True) -> EvalResult:
    validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run)
    device = resolve_device(cfg.device)
    world_model, agent, artifact = load_agent(run_dir, device)
    check_folder(run_dir / "eval", "The evaluation folder")
    env_cfg = env_config_for(artifact, cfg.env)
    has_image = any(v.dtype == np.uint8 for v in world_model.observation_space.spaces.values())
    render = "rgb_array" if cfg.video and not has_image else None
    env = make_env(env_cfg, seed=cfg.seed, render_mode=render)
    try:
        artifact.check_spaces(env.observation_space, env.action_space, f"The environment {env_cfg.id}",
                              run_dir / BEHAVIOR)
        policy = AgentPolicy(world_model, agent, 1, mode=config_lib.ACTION_MODES[cfg.mode], seed=cfg.seed,
                             device=device)
        folder = _new_folder(run_dir / "eval")
        returns, lengths, videos = [], [], []
        start = time.perf_counter()
        with ProgressDisplay(cfg.episodes, f"evaluate {env_cfg.id}", enabled=bool(progress)) as bar:
            for i in range(cfg.episodes):
                record = cfg.video and i < cfg.video_episodes
                played = play_episode(env, policy, cfg.seed + i, cfg.max_steps, render=record and render is not None)
                ret = played.ret
                returns.append(ret)
                lengths.append(played.episode.steps)
                if record:
                    path = folder / f"episode_{i:03d}.{cfg.video_format}"
                    views = analysis.episode_views(world_model, played.episode, cfg.context, device)
                    videos.append(str(viz.write_video(viz.episode_frames(views, played.frames), path, cfg.fps)))
                bar.update(i + 1, f"return {ret:.1f} | mean {np.mean(returns):.1f}")
    finally:
        env.close()
    report = {
        "run": str(run_dir), "env_id": env_cfg.id, "env_config": env_cfg.to_dict(), "episodes": cfg.episodes,
        "seed": cfg.seed, "episode_seeds": [cfg.seed + i for i in range(cfg.episodes)], "mode": cfg.mode,
        "returns": returns, "lengths": lengths,
        "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
        "return_min": float(np.min(returns)), "return_max": float(np.max(returns)),
        "length_mean": float(np.mean(lengths)), "behavior_update": artifact.update,
        "world_model_update": artifact.world_model_update, "videos": videos,
        "seconds": time.perf_counter() - start,
    }
    atomic_write_bytes(folder / "report.json", json.dumps(report, indent=2).encode())
    viz.plot_returns(returns, folder / "returns.png", f"{env_cfg.id}: {cfg.episodes} episodes ({cfg.mode})")
    return EvalResult(report, folder)


def _new_folder(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        folder = root / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise DreamerError(f"Could not create a new evaluation folder under {root}.")
