"""The `dreamer dream` command: one recorded episode as a video of what the world model dreams.

    dreamer dream --run runs/cartpole --episode 3 --context 5 --out dreams.gif

Loads the run's world model (with ``--actor`` also its agent) and the dataset it was trained
on (or ``--dataset``) through ``runs``, dreams one episode window with
``analysis.dream_episode`` and writes the video (``viz.dream_frames``) and, beside it, the
error-vs-horizon plot ``<stem>_error.png`` (``viz.plot_error``). The views themselves, as
numpy arrays for notebooks, are analysis.py's.

A World Models run (VAE + MDN-RNN) dreams from M's samples at its temperature, or at each
``--tau`` given (several: one video and one error plot per temperature, ``<stem>_tau<T>``), and
the video draws the mixture's uncertainty over time (``dream_std``: M's std behind each row).

Imports: analysis, viz, runs, runtime, config, errors, the stage kit (stages.outputs: the --out
check). No other stage; cli imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamer_core import analysis, runs, viz, worldmodels
from dreamer_core import config as config_lib
from dreamer_core.analysis import DreamResult
from dreamer_core.errors import DreamerError
from dreamer_core.runtime import resolve_device
from dreamer_core.stages.outputs import check_output_file


@dataclass(frozen=True)
class DreamConfig:
    """Everything `dreamer dream` needs."""

    run: str = ""
    out: str = "dreams.gif"  # .gif or .mp4; the error plot goes beside it as <stem>_error.png
    dataset: str = ""  # empty: the first dataset recorded in RUN/world_model.pt
    episode: int = 0
    context: int = 5  # real rows the dream observes
    horizon: int = 0  # imagined steps after the context; 0: to the end of the episode
    actor: bool = False  # also dream under the actor's own actions (needs RUN/behavior.pt)
    fps: int = 15
    height: int = 128  # pixels of each image panel
    seed: int = 0
    device: str = "auto"
    tau: tuple[float, ...] = ()  # World Models runs: M's temperatures, one video each (empty: the model's own)


def make_config(run: str, out: str, presets: list[str], sets: list[str], flags: dict[str, Any]) -> DreamConfig:
    cfg = config_lib.resolve(DreamConfig(run=run, out=out), "dream", presets, flags, sets)
    validate(cfg)
    return cfg


FLAGS = {"out": "--out", "dataset": "--dataset", "episode": "--episode", "context": "--context",
         "horizon": "--horizon", "fps": "--fps", "device": "--device"}


def validate(cfg: DreamConfig) -> None:
    """Every problem of a resolved config in one DreamerError (see ``config_lib.Problems``)."""
    p = config_lib.Problems("dream", FLAGS)
    p.require(Path(cfg.out).suffix in (".gif", ".mp4"), f"--out must end in .gif or .mp4 (got {Path(cfg.out).name!r})")
    p.require(cfg.context >= 1, f"--context must be at least 1 (got {cfg.context}): the dream starts from a real row")
    p.require(cfg.horizon >= 0, f"--horizon must be 0 (to the end of the episode) or positive (got {cfg.horizon})")
    p.at_least("fps", cfg.fps, 1)
    p.at_least("height", cfg.height, 1)
    p.device("device", cfg.device)
    p.require(all(t >= 0 for t in cfg.tau), f"--tau must be at least 0 (got {', '.join(map(str, cfg.tau))})")
    p.require(len(set(cfg.tau)) == len(cfg.tau), "--tau repeats a temperature; give each one once")
    p.raise_any()


@dataclass
class DreamReport:
    video: Path
    error_plot: Path
    result: DreamResult
    episode: int
    rows: int
    more: list[tuple[float, Path, Path]] = field(default_factory=list)  # further --tau: (tau, video, plot)
    tau: float | None = None  # the first video's temperature (World Models runs)

    def summary_line(self) -> str:
        h = self.result.horizon()
        parts = ""
        if len(h["dream"]):
            parts = (f"; open-loop MSE mean {np.mean(h['dream']):.4g} vs repeat-last "
                     f"{np.mean(h['baseline']):.4g} over {len(h['dream'])} imagined steps")
        at = "" if self.tau is None else f" at tau {self.tau:g}"
        line = (f"dreamed episode {self.episode} ({self.result.length} of its {self.rows} rows, context "
                f"{self.result.context}){at}{parts} -> {self.video}, {self.error_plot}")
        for tau, video, plot in self.more:
            line += f"; tau {tau:g} -> {video}, {plot}"
        return line


def run(cfg: DreamConfig) -> DreamReport:
    """Load the run and the episode, dream, and write the video and the error plot."""
    validate(cfg)
    out = check_output_file(cfg.out, (".gif", ".mp4"))
    outputs = [(None, out)] if len(cfg.tau) <= 1 else [(t, out.with_name(f"{out.stem}_tau{t:g}{out.suffix}"))
                                                         for t in cfg.tau]
    for _, video in outputs:
        check_output_file(video, (".gif", ".mp4"))
        check_output_file(video.with_name(f"{video.stem}_error.png"), (".png",), "--out's error plot")
    device = resolve_device(cfg.device)
    world_model, artifact = runs.load_world_model(cfg.run, device)
    family = "worldmodels" if worldmodels.is_family(artifact.model_config) else "rssm"
    if cfg.tau and family != "worldmodels":
        raise DreamerError(
            f"--tau is the sampling temperature of a World Models (VAE + MDN-RNN) world model, but {cfg.run} holds a "
            "DreamerV3 (RSSM) one, which has no temperature. Drop --tau; nothing was written.")
    agent = runs.load_agent(cfg.run, device)[1] if cfg.actor else None
    if agent is not None and not hasattr(agent, "value"):
        raise DreamerError(
            f"--actor dreams under the actor-critic's own actions and draws its values, but {cfg.run}'s behavior.pt is "
            "a World Models controller, which has no critic. Drop --actor; nothing was written.")
    dataset = runs.run_dataset(cfg.run, cfg.dataset or None, artifact)
    rows = analysis.episode_ref(dataset, cfg.episode).rows
    if cfg.context >= rows:
        raise DreamerError(
            f"--context {cfg.context} leaves nothing to dream: episode {cfg.episode} has {rows} rows "
            f"({rows - 1} steps). Use a context below {rows}, or pick a longer episode."
        )
    length = rows if cfg.horizon == 0 else min(rows, cfg.context + cfg.horizon)
    batch = analysis.load_episode_batch(dataset, cfg.episode, 0, length, device)
    written = []
    for tau, video in (outputs if cfg.tau else [(None, out)]):
        tau = tau if tau is not None else (cfg.tau[0] if cfg.tau else None)
        if family == "worldmodels" and tau is not None:
            world_model.tau = tau  # dream_step's default temperature
        result = analysis.dream_episode(world_model, batch, cfg.context, agent=agent, seed=cfg.seed)
        result.title = f"{Path(cfg.run).name}: episode {cfg.episode}" + ("" if tau is None else f", tau {tau:g}")
        if family == "worldmodels":
            with torch.random.fork_rng(devices=[]):  # the same draws as the dream above
                torch.manual_seed(cfg.seed)
                std = world_model.reconstruct_and_dream(batch, cfg.context)["dream_std"]
            result.dream_std = std[0].float().cpu().numpy()  # [L]: M's uncertainty, drawn by viz.dream_frames
        path = viz.write_video(viz.dream_frames(result, cfg.height), video, cfg.fps)
        written.append((world_model.tau if family == "worldmodels" else None, path,
                        viz.plot_error(result, video.with_name(f"{video.stem}_error.png")), result))
    (tau, video, error_plot, result), rest = written[0], written[1:]
    return DreamReport(video, error_plot, result, cfg.episode, rows, more=[(t, v, e) for t, v, e, _ in rest],
                       tau=tau)
