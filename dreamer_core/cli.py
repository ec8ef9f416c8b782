"""The `dreamer` command line: one typer app, one command per stage, plus `data` tools.

    dreamer collect --env CartPole-v1 --out data/cartpole --steps 20000
    dreamer train-world-model data/cartpole --out runs/cartpole
    dreamer train-behavior --run runs/cartpole
    dreamer evaluate --run runs/cartpole --episodes 20 --video
    dreamer train --env CartPole-v1 --out runs/cartpole-online       # the stages alternating online
    dreamer plot runs/cartpole-online
    dreamer data info data/cartpole
    dreamer data import-minari ~/.minari/datasets/cartpole/random-v0 data/cartpole-minari
    dreamer data export-minari data/cartpole exported/cartpole

Commands parse flags, resolve a config and call a stage's ``run``; they hold no logic of
their own. A :class:`~dreamer_core.errors.DreamerError` is printed as one paragraph on
stderr with exit code 2 and no traceback; anything else is a bug and shows its traceback.

Imports: stages, data, config, errors (top of the package; nothing imports this but the
scripts and ``__main__``).
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from dreamer_core import __version__
from dreamer_core.errors import DreamerError

app = typer.Typer(
    name="dreamer",
    help="dreamer-core: collect -> train world model -> train behavior -> evaluate, or all of them online (train).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect and convert datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def user_errors(fn):
    """Print DreamerError as one paragraph and exit 2 (typer.Exit passes through)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DreamerError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=exc.exit_code) from None

    return wrapper


# Options shared by every stage command.
PresetOpt = Annotated[list[str], typer.Option("--preset", help="Named preset; repeat to compose, applied in order.")]
SetOpt = Annotated[list[str], typer.Option("--set", help="Override any config key: --set a.b=value (repeatable).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda (auto picks cuda when present).")]


def _import_env_modules(modules: list[str]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise DreamerError(
                f"--env-module {name!r} could not be imported ({exc}). Make it importable (install "
                "its package or add its folder to PYTHONPATH) so it can register your environments."
            ) from None


@app.command()
@user_errors
def collect(
    env: Annotated[str, typer.Option("--env", help="Env id: any gymnasium id, ALE/Pong-v5, retro:Airstriker-Genesis-v0, dmc:cartpole-balance.")],
    out: Annotated[Path, typer.Option("--out", help="Dataset directory (created, or appended to).")],
    steps: Annotated[int | None, typer.Option(help="Env steps to collect (default 10000).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Finished episodes to collect (instead of --steps).")] = None,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Environments stepped in parallel.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for envs and policy (default 0).")] = None,
    policy: Annotated[str | None, typer.Option(help="'random' or a run directory with a trained agent.")] = None,
    pixels: Annotated[bool, typer.Option("--pixels", help="Observe rendered 64x64 frames instead of the state vector.")] = False,
    obs: Annotated[str | None, typer.Option("--obs", help="default | pixels | both (image and vector).")] = None,
    size: Annotated[int | None, typer.Option(help="Image height and width (default 64).")] = None,
    grayscale: Annotated[bool | None, typer.Option("--grayscale/--rgb", help="Grayscale images [H,W,1].")] = None,
    action_repeat: Annotated[int | None, typer.Option("--action-repeat", help="0 = suite default (Atari 4, DMC 2, else 1).")] = None,
    sticky_actions: Annotated[float | None, typer.Option("--sticky-actions", help="Atari repeat-action probability (0 disables).")] = None,
    life_loss_terminal: Annotated[bool | None, typer.Option("--life-loss-terminal/--no-life-loss-terminal", help="Atari: losing a life ends the episode.")] = None,
    full_action_space: Annotated[bool | None, typer.Option("--full-action-space/--minimal-action-space", help="Atari action set.")] = None,
    time_limit: Annotated[int | None, typer.Option("--time-limit", help="Max env steps per episode (0 = the env's own).")] = None,
    env_module: Annotated[list[str], typer.Option("--env-module", help="Import this module first (it registers your envs).")] = [],
    backend: Annotated[str | None, typer.Option(help="auto | serial | async | ale: how the K envs run.")] = None,
    shard_episodes: Annotated[int | None, typer.Option("--shard-episodes", help="Close a shard every K episodes (default 1000).")] = None,
    shard_seconds: Annotated[float | None, typer.Option("--shard-seconds", help="...or every S seconds (default 60).")] = None,
    compression: Annotated[str | None, typer.Option(help="Image compression: lzf (default) | gzip | none.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = "auto",
) -> None:
    """Stage 01: run a policy in K envs and write the rollouts to a dataset."""
    from dreamer_core.stages import collect as stage

    _import_env_modules(env_module)
    if pixels and obs not in (None, "pixels"):
        raise DreamerError(f"--pixels and --obs {obs} disagree; give one of them.")
    flags = {
        "env.id": env, "env.obs": "pixels" if pixels else obs,
        "env.size": None if size is None else [size, size], "env.grayscale": grayscale,
        "env.action_repeat": action_repeat, "env.sticky_actions": sticky_actions,
        "env.life_loss_terminal": life_loss_terminal, "env.full_action_space": full_action_space,
        "env.time_limit": time_limit, "env.env_module": env_module[0] if env_module else None,
        "steps": steps, "episodes": episodes, "num_envs": num_envs, "seed": seed, "policy": policy,
        "backend": backend, "shard_episodes": shard_episodes, "shard_seconds": shard_seconds,
        "compression": compression, "device": device,
    }
    cfg = stage.make_config(str(out), preset, set_, flags)
    result = stage.run(cfg, progress=not quiet)
    typer.echo(result.summary_line())
    if result.interrupted:
        raise typer.Exit(code=130)


@app.command("train-world-model")
@user_errors
def train_world_model(
    out: Annotated[Path, typer.Option("--out", help="Run directory (created).")],
    datasets: Annotated[list[Path] | None, typer.Argument(help="One or more dataset directories (with --resume: default the run's own).")] = None,
    updates: Annotated[int | None, typer.Option(help="Gradient updates in total (default 5000).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="B (default 16).")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="T (default 64).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    inverse_model: Annotated[bool | None, typer.Option("--inverse-model/--no-inverse-model", help="Train an inverse-dynamics head.")] = None,
    balance: Annotated[str | None, typer.Option(help="fixed (paper loss scales) | calibrate (measure, then weight by priority).")] = None,
    optimizer: Annotated[str | None, typer.Option("--optimizer", help="adam (2023) | laprop (2025, with AGC).")] = None,
    precision: Annotated[str | None, typer.Option(help="float32 (default) | bf16 autocast: for GPUs and AMX CPUs; 6-10x slower on AVX2-only CPUs.")] = None,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Skip unreadable shards.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = "auto",
) -> None:
    """Stage 02: train the world model (DreamerV3 by default) offline from datasets."""
    from dreamer_core import runs
    from dreamer_core.stages import train_world_model as stage

    flags = {
        "updates": updates, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
        "model.inverse.enabled": inverse_model, "balance": balance, "optim.name": optimizer,
        "precision": precision, "device": device, "skip_corrupt": skip_corrupt or None,
    }
    cfg = stage.make_config([str(d) for d in datasets or []], str(out), preset, set_, flags)
    result = stage.run(cfg, resume=resume, progress=not quiet, resume_updates=updates)
    labels = {"wm/loss": "train loss", "val/wm/loss": "held-out loss",
              "val/wm/openloop_mse_last": "open-loop MSE@15", "val/wm/openloop_baseline_mse_last": "repeat-last MSE@15"}
    parts = [f"{label} {result[key]:.4g}" for key, label in labels.items() if key in result]
    typer.echo(f"trained {result['updates']} updates -> {out / runs.WORLD_MODEL}" + (f" ({', '.join(parts)})" if parts else ""))


@app.command("train-behavior")
@user_errors
def train_behavior(
    run: Annotated[Path, typer.Option("--run", help="Run directory holding world_model.pt (from train-world-model).")],
    dataset: Annotated[list[Path], typer.Option("--dataset", help="Replay data (repeatable); default: the run's own datasets.")] = [],
    updates: Annotated[int | None, typer.Option(help="Actor-critic updates in total (default 5000).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the behavior in --run from its last checkpoint.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="B replay windows (default: the world model's).")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="T (default: the world model's); B*T start states.")] = None,
    horizon: Annotated[int | None, typer.Option(help="Imagination horizon H (default 15).")] = None,
    actor_grad: Annotated[str | None, typer.Option("--actor-grad", help="auto | reinforce | dynamics.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Skip unreadable shards.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = "auto",
) -> None:
    """Stage 03: train the actor-critic in imagination from the run's frozen world model."""
    from dreamer_core import runs
    from dreamer_core.stages import train_behavior as stage

    flags = {
        "updates": updates, "batch_size": batch_size, "seq_len": seq_len, "behavior.horizon": horizon,
        "behavior.actor.grad": actor_grad, "seed": seed, "device": device, "skip_corrupt": skip_corrupt or None,
    }
    cfg = stage.make_config(str(run), [str(d) for d in dataset], preset, set_, flags)
    result = stage.run(cfg, resume=resume, progress=not quiet, resume_updates=updates)
    parts = [f"{label} {result[key]:.4g}" for key, label in
             (("imag/return", "imagined return"), ("actor/entropy", "entropy"), ("critic/value", "value")) if key in result]
    typer.echo(f"trained {result['updates']} behavior updates -> {run / runs.BEHAVIOR}"
               + (f" ({', '.join(parts)})" if parts else ""))


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Option("--run", help="Run directory with world_model.pt and behavior.pt.")],
    env: Annotated[str | None, typer.Option("--env", help="Env id (default: the env the run's data came from).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes to play (default 10).")] = None,
    video: Annotated[bool, typer.Option("--video", help="Write real | reconstruction | dream videos.")] = False,
    video_format: Annotated[str | None, typer.Option("--video-format", help="gif (default) | mp4.")] = None,
    mode: Annotated[str | None, typer.Option(help="mode (greedy, default) | sample.")] = None,
    seed: Annotated[int | None, typer.Option(help="Episode i uses seed + i (default 0).")] = None,
    env_module: Annotated[list[str], typer.Option("--env-module", help="Import this module first (it registers your envs).")] = [],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = "auto",
) -> None:
    """Stage 04: play episodes with the run's agent in the real env; report, plot, videos."""
    from dreamer_core.stages import evaluate as stage

    _import_env_modules(env_module)
    flags = {"env": env, "episodes": episodes, "video": video or None, "video_format": video_format,
             "mode": mode, "seed": seed, "device": device}
    cfg = stage.make_config(str(run), preset, set_, flags)
    result = stage.run(cfg, progress=not quiet)
    typer.echo(result.summary_line())


@app.command()
@user_errors
def train(
    out: Annotated[Path, typer.Option("--out", help="Run directory (created; holds the replay dataset, checkpoints, metrics).")],
    env: Annotated[str | None, typer.Option("--env", help="Env id (as for collect). Not needed with --resume.")] = None,
    steps: Annotated[int | None, typer.Option(help="Env steps in total (default 20000; with --resume: a new total).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Envs stepped in parallel (default 1).")] = None,
    train_ratio: Annotated[float | None, typer.Option("--train-ratio", help="Replayed steps per env step (default 64).")] = None,
    prefill: Annotated[int | None, typer.Option(help="Random-policy env steps before learning starts (default 1000).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="B (default 16).")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="T (default 32).")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Env steps between evaluations (default 2000; 0 = never).")] = None,
    eval_episodes: Annotated[int | None, typer.Option("--eval-episodes", help="Greedy episodes per evaluation (default 10).")] = None,
    checkpoint_seconds: Annotated[float | None, typer.Option("--checkpoint-seconds", help="Seconds between checkpoints (default 300).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    pixels: Annotated[bool, typer.Option("--pixels", help="Observe rendered 64x64 frames instead of the state vector.")] = False,
    action_repeat: Annotated[int | None, typer.Option("--action-repeat", help="0 = suite default (Atari 4, DMC 2, else 1).")] = None,
    env_module: Annotated[list[str], typer.Option("--env-module", help="Import this module first (it registers your envs).")] = [],
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (0 = default; 1 beside other busy processes).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = "auto",
) -> None:
    """Online Dreamer: act, store, update the world model and the behavior, repeat (stages 01-03 alternating)."""
    from dreamer_core.stages import online as stage

    _import_env_modules(env_module)
    if env is None and not resume:
        raise DreamerError("Give the environment with --env ID (e.g. --env CartPole-v1), or --resume an existing run.")
    flags = {
        "env.id": env, "env.obs": "pixels" if pixels else None, "env.action_repeat": action_repeat,
        "env.env_module": env_module[0] if env_module else None, "steps": steps, "num_envs": num_envs,
        "train_ratio": train_ratio, "prefill": prefill, "batch_size": batch_size, "seq_len": seq_len,
        "eval_every": eval_every, "eval_episodes": eval_episodes, "checkpoint_seconds": checkpoint_seconds,
        "seed": seed, "threads": threads, "device": device,
    }
    if resume:
        given = [k for k, v in flags.items() if v is not None and k not in ("steps", "threads", "device")]
        given += ["--preset"] * bool(preset) + ["--set"] * bool(set_) + ["--pixels"] * pixels
        if device != "auto":
            given.append("device")
        if given:
            raise DreamerError(
                f"--resume continues {out} with the config it was started with, so {', '.join(sorted(set(given)))} "
                "cannot change now (only --steps, the new total, and --threads can). Drop those options, or "
                "start a new run in another --out directory."
            )
        cfg = stage.TrainConfig(out=str(out))
    else:
        cfg = stage.make_config(str(out), preset, set_, flags)
    result = stage.run(cfg, resume=resume, progress=not quiet, steps=steps if resume else None,
                       threads=threads if resume else None)
    typer.echo(stage.summary_line(result))
    if result["interrupted"]:
        raise typer.Exit(code=130)


@app.command()
@user_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories (several: one line each, e.g. seeds).")],
    out: Annotated[Path | None, typer.Option("--out", help="PNG to write (default RUN/curve.png of the first run).")] = None,
    key: Annotated[list[str], typer.Option("--key", help="Plot this metric instead of the default panels (repeatable).")] = [],
    title: Annotated[str | None, typer.Option("--title", help="Figure title.")] = None,
) -> None:
    """Learning curves (PNG) from the runs' metrics: returns, losses, imagined returns."""
    from dreamer_core.stages.plot import plot_runs

    typer.echo(f"wrote {plot_runs(runs, out, key or None, title)}")


@app.command()
@user_errors
def dream(
    run: Annotated[Path, typer.Option("--run", help="Run directory with world_model.pt.")],
    out: Annotated[Path, typer.Option("--out", help="Video to write (.gif or .mp4; replaced if it exists); the error plot goes beside it as <stem>_error.png.")],
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Dataset to take the episode from (default: the run's first dataset).")] = None,
    episode: Annotated[int | None, typer.Option("--episode", help="Episode index in the dataset (default 0; -1 = the last).")] = None,
    context: Annotated[int | None, typer.Option("--context", help="Real rows the dream observes before imagining (default 5).")] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", help="Imagined steps after the context (default: to the end of the episode).")] = None,
    actor: Annotated[bool, typer.Option("--actor", help="Also dream under the actor's own actions (needs behavior.pt).")] = False,
    fps: Annotated[int | None, typer.Option(help="Frames per second (default 15).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the dream's latent samples (default 0).")] = None,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = "auto",
) -> None:
    """Video of real | reconstruction | open-loop dream along a recorded episode, plus error vs horizon."""
    from dreamer_core.stages import dream as stage

    flags = {"dataset": None if dataset is None else str(dataset), "episode": episode, "context": context,
             "horizon": horizon, "actor": actor or None, "fps": fps, "seed": seed, "device": device}
    cfg = stage.make_config(str(run), str(out), preset, set_, flags)
    typer.echo(stage.run(cfg).summary_line())


@data_app.command("info")
@user_errors
def data_info(
    dataset: Annotated[Path, typer.Argument(help="Dataset directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Skip unreadable shards instead of failing.")] = False,
) -> None:
    """Summarise a dataset: shards, episodes, steps, returns, spaces, env id, size on disk."""
    from dreamer_core.data.dataset import Dataset

    summary = Dataset(dataset, skip_corrupt=skip_corrupt).summary()
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(format_summary(summary))


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"dataset      {s['path']}",
        f"env          {', '.join(s['env_ids'])}   (policy: {', '.join(s['policies'])})",
        f"shards       {s['shards']}   size on disk {s['size_bytes'] / 2**20:.2f} MiB   schema v{s['schema_version']}",
        f"episodes     {s['episodes']}   ({s['terminated_episodes']} terminated, mean length {s['length_mean']:.1f})",
        f"steps        {s['steps']}",
        f"return       mean {s['return_mean']:.3f}   min {s['return_min']:.3f}   max {s['return_max']:.3f}",
        "observation  " + "   ".join(f"{k}: {v}" for k, v in s["observation_space"].items()),
        f"action       {s['action_space']}",
    ]
    if s["partial_shards"]:
        lines.append(f"unfinished   {len(s['partial_shards'])} shard(s) from a stopped collector (ignored)")
    if s["skipped_corrupt"]:
        lines.append(f"skipped      {len(s['skipped_corrupt'])} corrupt shard(s): {', '.join(s['skipped_corrupt'])}")
    return "\n".join(lines)


@data_app.command("import-minari")
@user_errors
def data_import_minari(
    src: Annotated[str, typer.Argument(help="Minari dataset directory (or local dataset id, e.g. cartpole/random-v0).")],
    dataset: Annotated[Path, typer.Argument(help="Dataset directory to write.")],
) -> None:
    """Convert a Farama Minari dataset into a dreamer-core dataset."""
    from dreamer_core.data.minari import import_minari

    summary = import_minari(src, dataset)
    typer.echo(f"imported {summary['episodes']} episodes, {summary['steps']} steps -> {dataset}")


@data_app.command("export-minari")
@user_errors
def data_export_minari(
    dataset: Annotated[Path, typer.Argument(help="dreamer-core dataset directory.")],
    dst: Annotated[Path, typer.Argument(help="Minari dataset directory to create (must not exist).")],
    dataset_id: Annotated[str | None, typer.Option("--dataset-id", help="Minari id, e.g. cartpole/random-v0.")] = None,
) -> None:
    """Convert a dreamer-core dataset into a Farama Minari dataset (lossless frames)."""
    from dreamer_core.data.minari import export_minari

    summary = export_minari(dataset, dst, dataset_id=dataset_id)
    typer.echo(f"exported {summary['episodes']} episodes, {summary['steps']} steps -> {dst}")


@app.command()
def version() -> None:
    """Print the dreamer-core version."""
    typer.echo(__version__)


def main() -> None:
    app(prog_name="dreamer")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
