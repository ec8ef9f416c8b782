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
their own. Every command with a config takes ``--config FILE`` (applied over the defaults, before
``--preset``, the flags and ``--set``; a run's ``config.yaml`` gives the section of the command
being run) and ``--print-config`` (the resolved config as YAML on stdout; nothing is written), and
spells the shared options the same: ``--seed``, ``--device``, ``--threads`` (where the config
has threads), ``--dataset`` (repeatable). A :class:`~dreamer_core.errors.DreamerError` is printed as one paragraph on
stderr with exit code 2 and no traceback, and so is a full disk, a read-only file system or a
refused permission (``user_errors``); anything else is a bug and shows its traceback.

Imports: stages, data, config, errors (top of the package; nothing imports this but the
scripts and ``__main__``).
"""

from __future__ import annotations

import errno
import functools
import importlib
import importlib.util
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from dreamer_core import __version__
from dreamer_core import config as config_lib
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


# errno values that are the user's disk or permissions, not a bug: a message instead of a traceback.
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission is denied"}
_H5_ERRNO = re.compile(r"errno = (\d+)")
_H5_FILENAME = re.compile(r"(?:file)?name = '([^']*)'")
# Where each command writes: its parameter and how the user gives it (for the message's fix).
OUTPUTS = {"collect": ("out", "--out"), "train_world_model": ("out", "--out"), "train_behavior": ("run", "--run"),
           "evaluate": ("run", "--run"), "train": ("out", "--out"), "plot": ("out", "--out"),
           "dream": ("out", "--out"), "sweep": ("out", "SWEEP_DIR"), "data_import_minari": ("dataset", "DATASET"),
           "data_export_minari": ("dst", "DST")}
TRAINING_COMMANDS = ("train", "train_world_model", "train_behavior")
# Each command's config class (stage module, class name), so that a refused preset names the
# commands it is for (config.commands_for); imported only then.
COMMAND_CONFIGS = {
    "collect": ("collect", "CollectConfig"), "train-world-model": ("train_world_model", "TrainWorldModelConfig"),
    "train-behavior": ("train_behavior", "TrainBehaviorConfig"),
    "train-controller": ("train_controller", "TrainControllerConfig"),  # train-behavior on a World Models run
    "evaluate": ("evaluate", "EvaluateConfig"),
    "train": ("online", "TrainConfig"), "dream": ("dream", "DreamConfig"),
}


def _config_class(module: str, name: str) -> type:
    return getattr(importlib.import_module(f"dreamer_core.stages.{module}"), name)


config_lib.register_commands({command: functools.partial(_config_class, *where)
                              for command, where in COMMAND_CONFIGS.items()})


def disk_error(exc: BaseException) -> tuple[int, str | None] | None:
    """(errno, file name or None) when ``exc`` or an exception it arose from is a full disk, a
    read-only file system or a refused permission: an OSError with that errno, or an h5py
    error whose text carries it. None for anything else (a bug: its traceback is shown)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc.errno, exc.filename if isinstance(exc.filename, str) else None
        if isinstance(exc, (OSError, RuntimeError)):
            found = _H5_ERRNO.search(str(exc))
            if found and int(found.group(1)) in DISK_ERRNOS:
                name = _H5_FILENAME.search(str(exc))
                return int(found.group(1)), name.group(1) if name else None
        exc = exc.__cause__ or exc.__context__
    return None


def disk_error_message(code: int, filename: str | None, output: Any = None, flag: str | None = None,
                       resumable: bool = False) -> str:
    """One paragraph: what happened, where (the file when known, and the command's output
    ``output``, given as ``flag``), and what to do."""
    if output is not None:
        where = f" while writing {output}" + (f" ({filename})" if filename and filename != str(output) else "")
    else:
        where = f" at {filename}" if filename else ""
    target = f"give {flag} a path" if flag else "use a path"
    if code in (errno.ENOSPC, errno.EDQUOT):
        fix = f"Free some disk space (or raise the quota), or {target} on another disk"
    elif code == errno.EROFS:
        fix = f"{target[0].upper()}{target[1:]} on a writable disk"
    else:
        fix = f"{target[0].upper()}{target[1:]} you may write to, or fix the permissions"
    again = "; a training run then continues from its last checkpoint with --resume" if resumable else ""
    return (f"Stopped: {DISK_ERRNOS[code]} ({errno.errorcode.get(code, code)}){where}. {fix}, then run the "
            f"command again{again}.")


def replay_write_message(exc: DreamerError, run: Any) -> str | None:
    """For a replay shard (or its manifest) that the disk refused during `dreamer train`: the
    writer's account of what is kept, with the way to go on (running the same command again
    would be refused: the run exists). None for any other error."""
    from dreamer_core.data.store import WriteRefusedError  # loaded already when it was raised

    if not isinstance(exc, WriteRefusedError):
        return None
    if exc.code in (errno.ENOSPC, errno.EDQUOT):
        fix = "Free some disk space (or raise the quota)"
    else:
        fix = f"Make {run} writable again (or move the run to a disk you may write to)"
    return (f"{exc.state} {fix}, then continue the run with `dreamer train --resume --out {run}`: it goes on "
            "from its last checkpoint (if it wrote one) with every episode the replay's shards hold.")


def user_errors(fn):
    """Print DreamerError, and disk errors (full, read-only, no permission), as one paragraph
    and exit non-zero (typer.Exit passes through); anything else is a bug and shows its traceback.
    A replay shard the disk refused in `dreamer train` ends with how to continue the run.

    Errors that h5py reports while it frees objects after such a failure (printed through
    ``sys.unraisablehook`` and ``sys.excepthook`` while the command runs) are held back:
    dropped when the command fails with a disk error, printed at the end otherwise."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        held: list[str] = []
        hooks = sys.unraisablehook, sys.excepthook
        sys.unraisablehook = lambda u: held.append(_describe_unraisable(u))  # text only: keeps no object alive
        sys.excepthook = lambda *info: held.append("".join(traceback.format_exception(*info)))
        disk = False
        try:
            return fn(*args, **kwargs)
        except DreamerError as exc:
            message = str(exc)
            if fn.__name__ == "train" and kwargs.get("out") is not None:
                message = replay_write_message(exc, kwargs["out"]) or message
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=exc.exit_code) from None
        except (OSError, RuntimeError) as exc:
            found = disk_error(exc)
            if found is None:
                raise
            disk = True
            key, flag = OUTPUTS.get(fn.__name__, (None, None))
            message = disk_error_message(*found, kwargs.get(key) if key else None, flag,
                                         resumable=fn.__name__ in TRAINING_COMMANDS)
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(code=DreamerError.exit_code) from None
        finally:
            sys.unraisablehook, sys.excepthook = hooks
            if not disk:
                for text in held:
                    sys.stderr.write(text)

    return wrapper


def _describe_unraisable(unraisable: Any) -> str:
    """What the default ``sys.unraisablehook`` would print."""
    where = f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n"
    return where + "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                                      unraisable.exc_traceback))


# Options shared by every stage command (spelled the same on each; see README "Config files").
PresetOpt = Annotated[list[str], typer.Option("--preset", help="Named preset; repeat to compose, applied in order.")]
SetOpt = Annotated[list[str], typer.Option("--set", help="Override any config key: --set a.b=value (repeatable).")]
LoggerOpt = Annotated[str | None, typer.Option(
    "--logger", help="Experiment trackers, comma-separated: tensorboard (default), wandb, mlflow, or none "
    "(RUN/metrics.jsonl is always written). wandb logs offline into RUN/wandb unless WANDB_MODE is set; "
    "mlflow into RUN/mlruns unless MLFLOW_TRACKING_URI is set. With --resume: the trackers from now on.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto (default) | cpu | cuda (auto picks cuda when present).")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="torch CPU threads (0 = torch's default; 1 beside other busy processes).")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="YAML config applied over the defaults, before --preset, the flags and --set (a run's "
    "config.yaml: this command's section).")]
PrintConfigOpt = Annotated[bool, typer.Option(
    "--print-config", help="Print the resolved config (YAML, usable as --config) and exit; nothing is written.")]
ProgressSecondsOpt = Annotated[float | None, typer.Option(
    "--progress-seconds", help="When stderr is not a terminal (nohup, SLURM, CI): seconds between plain progress "
    "lines, also printed at each evaluation (default 30).")]


def _config_file(path: Path | None, command: str) -> config_lib.ConfigFile | None:
    """The --config file's settings for ``command`` (checked against its config), or None."""
    return None if path is None else config_lib.ConfigFile.load(path, command)


def _required(value: Any, file: config_lib.ConfigFile | None, key: str, option: str, what: str) -> str:
    """A value the command cannot run without: the flag, else the --config file's ``key``."""
    if value is not None:
        return str(value)
    if file is not None and file.get(key) is not None:
        return str(file.get(key))
    raise DreamerError(
        f"Missing option '{option}': give {what} with {option}, or a --config file that sets `{key}` (e.g. a "
        "run's config.yaml); nothing was written."
    )


def _print_config(command: str, cfg: Any) -> None:
    """--print-config: the resolved config on stdout, as a --config file; nothing else happens."""
    typer.echo(config_lib.print_text(command, cfg), nl=False)


def _resumed_config(command: str, run: Path, new: dict[str, Any]) -> Any:
    """The config a resumed run continues with: the one it started with (its section of
    RUN/config.yaml, or its file of 0.3.0 and earlier) and the ``new`` values a resume takes."""
    from dreamer_core import runs

    stored = runs.read_config(run, command)
    if stored is None:
        raise DreamerError(
            f"--resume was given, but {run} holds no config of `dreamer {command}` ({runs.CONFIG} has no "
            f"{command} section), so there is no run of it to continue. Check the path, or start the run without "
            "--resume."
        )
    cfg = config_lib.from_dict(config_lib.COMMANDS[command](), stored)
    return config_lib.apply_given(cfg, new)


def _refuse_changes_on_resume(run: Path, command: str, flags: dict[str, Any], allowed: tuple[str, ...],
                              preset: list[str], set_: list[str], can_change: str,
                              file: config_lib.ConfigFile | None = None, **switches: bool) -> None:
    """A resumed run keeps the config it was started with: refuse options that would change it
    (``allowed``: the flag keys a resume takes; ``switches``: boolean flags given, by name). A
    flag, or a --config setting, repeating the value the run was started with is no change."""
    from dreamer_core import runs

    stored = runs.read_config(run, command) or {}
    given = [k for k, v in flags.items() if v is not None and k not in allowed and not (k == "device" and v == "auto")
             and not _same_as_stored(stored, k, v)]
    if file is not None:
        base = config_lib.from_dict(config_lib.COMMANDS[command](), stored)
        flagged = {k for k, v in flags.items() if v is not None}
        changed = config_lib.changes(file.apply(base), base) if stored else dict.fromkeys(file.overrides)
        given += [f"{key} (set in --config {file.path})" for key in changed if key not in flagged]
    given += ["--preset"] * bool(preset) + ["--set"] * bool(set_)
    given += [f"--{name.replace('_', '-')}" for name, on in switches.items() if on]
    if given:
        raise DreamerError(
            f"--resume continues {run} with the config it was started with, so {', '.join(sorted(set(given)))} "
            f"cannot change now (only {can_change} can). Drop those options, or start a new run in another "
            "directory."
        )


def _same_as_stored(stored: dict[str, Any], key: str, value: Any) -> bool:
    node: Any = stored
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node == value or (isinstance(value, (tuple, list)) and list(value) == node)


def _main_rank() -> bool:
    """False in the ranks of a torchrun launch other than rank 0 (they print nothing of their own)."""
    return os.environ.get("RANK", "0") == "0"


def _show_config(command: str, cfg: Any, run: Path, quiet: bool, resume: bool = False,
                 new: dict[str, Any] | None = None) -> None:
    """Print, unless ``quiet``, what the run's resolved config changes from the built-in defaults
    (the DreamerV3 settings of the config dataclass): presets, flags and --set at a glance, in a
    few lines; all of it is saved in the run's config file. On ``resume`` the config is the
    stored one, with the ``new`` values a resume may change (e.g. steps). On stderr, beside the
    progress bar."""
    from dreamer_core import runs

    if quiet or not _main_rank():
        return
    if resume:
        try:
            cfg = _resumed_config(command, run, new or {})
        except (TypeError, ValueError, DreamerError):
            return  # no or an unreadable config: the stage refuses the resume with its own message
    title = "resuming with the stored config" if resume else "config"
    saved = f"{runs.config_file(run, command)}, section {command}"
    typer.echo(f"{title} of `dreamer {command}`, what differs from the defaults (all of it: {saved}):", err=True)
    for line in config_lib.describe_changes(cfg, type(cfg)()) or ["(nothing)"]:
        typer.echo(f"  {line}", err=True)


def _refuse_resume_of_nothing(run: Path, resume: bool) -> None:
    if resume and not run.is_dir():
        raise DreamerError(
            f"--resume was given, but {run} does not exist, so there is no run to continue. Check the path "
            "(--out), or start a new run there without --resume."
        )


def _import_env_modules(modules: list[str], load: bool = True) -> list[str]:
    """Import each --env-module, a module name (``mypkg.envs``) or a path to a .py file
    (``./my_envs.py``); returns them with file paths made absolute, as the run's config records
    them (so a resume or a worker process finds the file from any folder). ``load=False``
    (--print-config) checks and names them without importing (an import may write __pycache__)."""
    from dreamer_core.envs.make import import_env_module

    imported = []
    for name in modules:
        if name.endswith(".py") or "/" in name or os.sep in name:
            path = Path(name).expanduser().resolve()
            if path.suffix != ".py":
                raise DreamerError(
                    f"--env-module {name!r} looks like a path but is not a .py file. Give a Python file "
                    "that registers your environments (e.g. --env-module ./my_envs.py) or an importable "
                    "module name (e.g. --env-module mypkg.envs)."
                )
            if not path.is_file():
                raise DreamerError(
                    f"--env-module {name!r}: there is no file {path}. Check the path (it is relative to the "
                    "folder you run dreamer in), or give an importable module name instead."
                )
            if load:
                import_env_module(str(path))
            imported.append(str(path))
            continue
        try:
            if load:
                importlib.import_module(name)
            elif importlib.util.find_spec(name) is None:
                raise ImportError(f"No module named {name!r}")
        except ImportError as exc:
            raise DreamerError(
                f"--env-module {name!r} could not be imported ({exc}). Make it importable (install "
                "its package or add its folder to PYTHONPATH), or give the path to its .py file "
                "(e.g. --env-module ./my_envs.py), so it can register your environments."
            ) from None
        imported.append(name)
    return imported


def _progress(quiet: bool, seconds: float | None) -> bool | float:
    """A training stage's ``progress``: False for --quiet, else the seconds between plain
    progress lines when stderr is not a terminal (True: the default, 30)."""
    if seconds is not None and not seconds > 0:
        raise DreamerError(f"--progress-seconds must be above 0, got {seconds:g}. Use --quiet for no progress "
                           "output.")
    return False if quiet else (seconds or True)


@app.command()
@user_errors
def collect(
    env: Annotated[str | None, typer.Option("--env", help="Env id: any gymnasium id, ALE/Pong-v5, retro:Airstriker-Genesis-v0, dmc:cartpole-balance (or env.id in --config).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Dataset directory (created, or appended to; or out in --config).")] = None,
    steps: Annotated[int | None, typer.Option(help="Env steps to collect (default 10000; with --follow default 0 = until stopped).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Finished episodes to collect (instead of --steps; with --follow 0 = until stopped).")] = None,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Environments stepped in parallel.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for envs and policy (default 0; with --follow default: drawn from the OS). Env i gets seed+i: give collectors seeds at least --num-envs apart.")] = None,
    policy: Annotated[str | None, typer.Option(help="'random', 'smooth-random' (a random walk) or a run directory with a trained agent.")] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Keep collecting with the newest agent of the run --policy RUN while it trains (waits for its first agent), appending to --out (e.g. RUN/replay); until Ctrl-C/SIGTERM unless --steps/--episodes.")] = False,
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
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = None,
) -> None:
    """Stage 01: run a policy in K envs and write the rollouts to a dataset."""
    from dreamer_core.stages import collect as stage

    file = _config_file(config, "collect")
    env_module = _import_env_modules(env_module, load=not print_config)
    if pixels and obs not in (None, "pixels"):
        raise DreamerError(f"--pixels and --obs {obs} disagree; give one of them.")
    _required(env, file, "env.id", "--env", "the environment id (e.g. --env CartPole-v1)")
    out_dir = _required(out, file, "out", "--out", "the dataset directory")
    flags = {
        "out": None if out is None else str(out),
        "env.id": env, "env.obs": "pixels" if pixels else obs,
        "env.size": None if size is None else [size, size], "env.grayscale": grayscale,
        "env.action_repeat": action_repeat, "env.sticky_actions": sticky_actions,
        "env.life_loss_terminal": life_loss_terminal, "env.full_action_space": full_action_space,
        "env.time_limit": time_limit, "env.env_module": env_module[0] if env_module else None,
        "steps": steps, "episodes": episodes, "num_envs": num_envs, "seed": seed, "policy": policy,
        "backend": backend, "shard_episodes": shard_episodes, "shard_seconds": shard_seconds,
        "compression": compression, "device": device, "follow": True if follow else None,
    }
    if file is not None and steps is None and episodes is None and file.get("steps") is None and file.get("episodes"):
        flags["steps"] = 0  # a file's episodes budget alone replaces the default step budget (as --episodes does)
    with config_lib.using_file(file):
        cfg = stage.make_config(out_dir, preset, set_, flags)
    if print_config:
        return _print_config("collect", cfg)
    result = stage.run(cfg, progress=not quiet)
    typer.echo(result.summary_line())
    if result.interrupted:
        raise typer.Exit(code=130)


@app.command("train-world-model")
@user_errors
def train_world_model(
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (created; or out in --config).")] = None,
    datasets: Annotated[list[Path] | None, typer.Argument(help="One or more dataset directories (with --resume: default the run's own).")] = None,
    dataset: Annotated[list[Path], typer.Option("--dataset", help="A dataset directory (repeatable; the same as the DATASETS arguments).")] = [],
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or lines.")] = False,
    progress_seconds: ProgressSecondsOpt = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = None,
    logger: LoggerOpt = None,
) -> None:
    """Stage 02: train the world model (DreamerV3 by default) offline from datasets."""
    from dreamer_core import runs
    from dreamer_core.stages import train_world_model as stage

    command = "train-world-model"
    progress = _progress(quiet, progress_seconds)
    file = _config_file(config, command)
    out_dir = Path(_required(out, file, "out", "--out", "the run directory"))
    given = [str(d) for d in [*(datasets or []), *dataset]]
    flags = {
        "out": None if out is None else str(out), "datasets": given or None,
        "updates": updates, "batch_size": batch_size, "seq_len": seq_len, "seed": seed,
        "model.inverse.enabled": inverse_model, "balance": balance, "optim.name": optimizer,
        "precision": precision, "threads": threads, "device": device, "skip_corrupt": skip_corrupt or None,
        "loggers": logger,
    }
    _refuse_resume_of_nothing(out_dir, resume)
    if resume:
        _refuse_changes_on_resume(out_dir, command, flags, ("updates", "datasets", "out", "loggers"), preset, set_,
                                  "--updates, the new total, the datasets and --logger", file)
        if print_config:
            return _print_config(command, _resumed_config(command, out_dir, {"updates": updates,
                                                                              "datasets": given or None}))
    with config_lib.using_file(file):
        cfg = stage.make_config([], str(out_dir), preset, set_, flags)
    if print_config:
        return _print_config(command, cfg)
    _show_config(command, cfg, out_dir, quiet, resume, {"updates": updates, "loggers": logger})
    result = stage.run(cfg, resume=resume, progress=progress, resume_updates=updates,
                       loggers=logger if resume else None)
    labels = {"wm/loss": "train loss", "val/wm/loss": "held-out loss",
              "val/wm/openloop_mse_last": "open-loop MSE@15", "val/wm/openloop_baseline_mse_last": "repeat-last MSE@15"}
    parts = [f"{label} {result[key]:.4g}" for key, label in labels.items() if key in result]
    if _main_rank():  # under torchrun the other ranks stay quiet
        typer.echo(f"trained {result['updates']} updates -> {out_dir / runs.WORLD_MODEL}" + (f" ({', '.join(parts)})" if parts else ""))


@app.command("train-behavior")
@user_errors
def train_behavior(
    run: Annotated[Path | None, typer.Option("--run", help="Run directory holding world_model.pt (from train-world-model; or run in --config).")] = None,
    dataset: Annotated[list[Path], typer.Option("--dataset", help="Replay data (repeatable); default: the run's own datasets.")] = [],
    updates: Annotated[int | None, typer.Option(help="Actor-critic updates in total (default 5000).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the behavior in --run from its last checkpoint.")] = False,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="B replay windows (default: the world model's).")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="T (default: the world model's); B*T start states.")] = None,
    horizon: Annotated[int | None, typer.Option(help="Imagination horizon H (default 15).")] = None,
    actor_grad: Annotated[str | None, typer.Option("--actor-grad", help="auto | reinforce | dynamics.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    generations: Annotated[int | None, typer.Option(help="World Models runs: CMA-ES generations in total (default 20; with --resume: a new total).")] = None,
    population: Annotated[int | None, typer.Option(help="World Models runs: CMA-ES population (default 16).")] = None,
    scorer: Annotated[str | None, typer.Option(help="World Models runs: real (default: episodes in the env) | dream (rollouts of M).")] = None,
    tau: Annotated[float | None, typer.Option(help="World Models runs, --scorer dream: M's temperature (default 1.0).")] = None,
    workers: Annotated[int | None, typer.Option(help="World Models runs: processes scoring candidates (default 0 = one per CPU; 1 = none).")] = None,
    rollouts: Annotated[int | None, typer.Option(help="World Models runs: episodes or dreams per candidate (default 4).")] = None,
    hidden: Annotated[int | None, typer.Option(help="World Models runs: the controller's tanh hidden layer (default 0 = linear).")] = None,
    keep: Annotated[str | None, typer.Option(help="World Models runs: what behavior.pt holds: best (default: the best-scoring candidate) | mean (CMA-ES's mean; steadier with noisy scores). A resume may change it.")] = None,
    skip_corrupt: Annotated[bool, typer.Option("--skip-corrupt", help="Skip unreadable shards.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or lines.")] = False,
    progress_seconds: ProgressSecondsOpt = None,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = None,
    logger: LoggerOpt = None,
) -> None:
    """Stage 03: train the actor-critic in imagination from the run's frozen world model (a World Models run: the CMA-ES controller search)."""
    from dreamer_core import runs
    from dreamer_core.stages import train_behavior as stage

    command = "train-behavior"
    progress = _progress(quiet, progress_seconds)
    controller_flags = {"generations": generations, "search.population": population, "scorer": scorer, "tau": tau,
                        "search.workers": workers, "rollouts": rollouts, "controller.hidden": hidden,
                        "search.keep": keep}
    rssm_flags = {"--updates": updates, "--batch-size": batch_size, "--seq-len": seq_len, "--horizon": horizon,
                  "--actor-grad": actor_grad, "--device": device}
    if _behavior_command(run, config) == "train-controller":
        stage.refuse_data_parallel_controller(run_dir_text(run, config))  # under torchrun
        return _train_controller(run, dataset, resume, seed, skip_corrupt, quiet, progress, threads, config,
                                 print_config, preset, set_, logger, controller_flags, rssm_flags)
    given_controller = [f"--{k.rpartition('.')[2]}" for k, v in controller_flags.items() if v is not None]
    if given_controller and run is not None and not (run / runs.WORLD_MODEL).is_file():
        raise DreamerError(f"{run} has no {runs.WORLD_MODEL}, so it is neither a World Models run nor an RSSM run "
                           f"yet. Train a world model into it first: `dreamer train-world-model DATASET --out {run} "
                           "--preset worldmodels` (then --generations, --scorer and the other search options apply).")
    if given_controller:
        raise DreamerError(
            f"{', '.join(given_controller)} {'is' if len(given_controller) == 1 else 'are'} for the controller search "
            f"of a World Models run (train-world-model --preset worldmodels), but {run_dir_text(run, config)} holds an "
            "RSSM world model, whose stage 03 trains the actor-critic (--updates, --horizon, --actor-grad, ...). "
            "Drop those options; nothing was written.")
    file = _config_file(config, command)
    run_dir = Path(_required(run, file, "run", "--run", "the run directory (with world_model.pt)"))
    given = [str(d) for d in dataset]
    flags = {
        "run": None if run is None else str(run), "datasets": given or None,
        "updates": updates, "batch_size": batch_size, "seq_len": seq_len, "behavior.horizon": horizon,
        "behavior.actor.grad": actor_grad, "seed": seed, "threads": threads, "device": device,
        "skip_corrupt": skip_corrupt or None,
        "loggers": logger,
    }
    if resume:
        _refuse_changes_on_resume(run_dir, command, flags, ("updates", "datasets", "run", "loggers"), preset, set_,
                                  "--updates, the new total, and --dataset", file)
        if print_config:
            return _print_config(command, _resumed_config(command, run_dir, {"updates": updates,
                                                                              "datasets": given or None}))
    with config_lib.using_file(file):
        cfg = stage.make_config(str(run_dir), [], preset, set_, flags)
    if print_config:
        return _print_config(command, cfg)
    _show_config(command, cfg, run_dir, quiet, resume, {"updates": updates, "loggers": logger})
    result = stage.run(cfg, resume=resume, progress=progress, resume_updates=updates,
                       loggers=logger if resume else None)
    parts = [f"{label} {result[key]:.4g}" for key, label in
             (("imag/return", "imagined return"), ("actor/entropy", "entropy"), ("critic/value", "value")) if key in result]
    if _main_rank():  # under torchrun the other ranks stay quiet
        typer.echo(f"trained {result['updates']} behavior updates -> {run_dir / runs.BEHAVIOR}"
                   + (f" ({', '.join(parts)})" if parts else ""))


def run_dir_text(run: Path | None, config: Path | None) -> str:
    return str(run) if run is not None else f"the run of {config}"


def _behavior_command(run: Path | None, config: Path | None) -> str:
    """``train-controller`` when stage 03 of the run is the World Models controller search (its
    world_model.pt is of that family; without --run: a --config file with that section)."""
    from dreamer_core import runs

    if run is not None:
        return "train-controller" if runs.world_model_family(run) == "worldmodels" else "train-behavior"
    if config is not None and config.is_file():
        found = config_lib.sections(config_lib.read_yaml(config)) or {}
        if "train-controller" in found and "train-behavior" not in found:
            return "train-controller"
    return "train-behavior"


def _train_controller(run: Path | None, dataset: list[Path], resume: bool, seed: int | None, skip_corrupt: bool,
                      quiet: bool, progress: bool | float, threads: int | None, config: Path | None,
                      print_config: bool, preset: list[str], set_: list[str], logger: str | None,
                      controller_flags: dict[str, Any], rssm_flags: dict[str, Any]) -> None:
    """`dreamer train-behavior` on a World Models run: the CMA-ES controller search."""
    from dreamer_core import runs
    from dreamer_core.stages import train_controller as stage

    command = stage.COMMAND
    given_rssm = [flag for flag, value in rssm_flags.items() if value is not None]
    if given_rssm:
        raise DreamerError(
            f"{', '.join(given_rssm)} {'is' if len(given_rssm) == 1 else 'are'} for the actor-critic of an RSSM run, "
            f"but {run_dir_text(run, config)} holds a World Models (VAE + MDN-RNN) world model, whose stage 03 is the "
            "CMA-ES controller search: use --generations, --population, --scorer real|dream, --tau, --workers, "
            "--rollouts, --hidden and --keep (or --set KEY=VALUE of its config). Drop those options; nothing was written.")
    file = _config_file(config, command)
    run_dir = Path(_required(run, file, "run", "--run", "the run directory (with world_model.pt)"))
    given = [str(d) for d in dataset]
    flags = {"run": None if run is None else str(run), "datasets": given or None, "search.seed": seed,
             "threads": threads, "skip_corrupt": skip_corrupt or None, "loggers": logger, **controller_flags}
    resumable = {key: controller_flags[key] for key in stage.RESUMABLE}  # what a resume may change
    if resume:
        _refuse_changes_on_resume(run_dir, command, flags, (*resumable, "run", "loggers"), preset, set_,
                                  "--generations, the new total, --workers, --keep and --logger", file)
        if print_config:
            return _print_config(command, _resumed_config(command, run_dir, resumable))
    with config_lib.using_file(file):
        cfg = stage.make_config(str(run_dir), given, preset, set_, flags)
    if print_config:
        return _print_config(command, cfg)
    _show_config(command, cfg, run_dir, quiet, resume, {**resumable, "loggers": logger})
    result = stage.run(cfg, resume=resume, progress=progress, resume_changes=resumable,
                       loggers=logger if resume else None)
    best = result.get("best_score")
    typer.echo(f"searched {result['generations']} controller generations -> {run_dir / runs.BEHAVIOR}"
               + (f" (best mean return {best:.4g}, last generation's best {result['cma/best']:.4g})"
                  if "cma/best" in result else f" (best mean return {best:.4g})"))


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path | None, typer.Option("--run", help="Run directory with world_model.pt and behavior.pt (or run in --config).")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Env id (default: the env the run's data came from).")] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes to play (default 10).")] = None,
    video: Annotated[bool, typer.Option("--video", help="Write real | reconstruction | dream videos.")] = False,
    video_format: Annotated[str | None, typer.Option("--video-format", help="gif (default) | mp4.")] = None,
    mode: Annotated[str | None, typer.Option(help="greedy (default; alias: mode) | sample: the policy's most likely or sampled actions (as train --eval-mode).")] = None,
    seed: Annotated[int | None, typer.Option(help="Episode i uses seed + i (default 0).")] = None,
    env_module: Annotated[list[str], typer.Option("--env-module", help="Import this module first (it registers your envs).")] = [],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    threads: ThreadsOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = None,
) -> None:
    """Stage 04: play episodes with the run's agent in the real env; report, plot, videos."""
    from dreamer_core.stages import evaluate as stage

    file = _config_file(config, "evaluate")
    run_dir = _required(run, file, "run", "--run", "the run directory (with behavior.pt)")
    _import_env_modules(env_module, load=not print_config)
    flags = {"run": None if run is None else str(run), "env": env, "episodes": episodes, "video": video or None,
             "video_format": video_format, "mode": mode, "seed": seed, "threads": threads, "device": device}
    with config_lib.using_file(file):
        cfg = stage.make_config(run_dir, preset, set_, flags)
    if print_config:
        return _print_config("evaluate", cfg)
    result = stage.run(cfg, progress=not quiet)
    typer.echo(result.summary_line())


@app.command()
@user_errors
def train(
    out: Annotated[Path | None, typer.Option("--out", help="Run directory (created; holds the replay dataset, checkpoints, metrics; or out in --config).")] = None,
    env: Annotated[str | None, typer.Option("--env", help="Env id (as for collect; or env.id in --config). Not needed with --resume.")] = None,
    steps: Annotated[int | None, typer.Option(help="Env steps in total (default 20000; with --resume: a new total).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    num_envs: Annotated[int | None, typer.Option("--num-envs", help="Envs stepped in parallel (default 1).")] = None,
    train_ratio: Annotated[float | None, typer.Option("--train-ratio", help="Replayed steps per env step (default 64).")] = None,
    prefill: Annotated[int | None, typer.Option(help="Random-policy env steps before learning starts (default 1000).")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="B (default 16).")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="T (default 32).")] = None,
    eval_every: Annotated[int | None, typer.Option("--eval-every", help="Env steps between evaluations (default 2000; 0 = never).")] = None,
    eval_episodes: Annotated[int | None, typer.Option("--eval-episodes", help="Episodes per evaluation (default 10).")] = None,
    eval_mode: Annotated[str | None, typer.Option("--eval-mode", help="greedy (default; alias: mode) | sample: the evaluation episodes' actions (as evaluate --mode); training episodes always sample.")] = None,
    checkpoint_seconds: Annotated[float | None, typer.Option("--checkpoint-seconds", help="Seconds between checkpoints (default 300).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    pixels: Annotated[bool, typer.Option("--pixels", help="Observe rendered 64x64 frames instead of the state vector.")] = False,
    action_repeat: Annotated[int | None, typer.Option("--action-repeat", help="0 = suite default (Atari 4, DMC 2, else 1).")] = None,
    env_module: Annotated[list[str], typer.Option("--env-module", help="Import this module first (it registers your envs).")] = [],
    learner_only: Annotated[bool | None, typer.Option("--learner-only/--no-learner-only", help="Step no envs: learn from the shards collectors (`dreamer collect --policy RUN --follow --out RUN/replay`) write into RUN/replay, up to --steps of theirs (learner_only; may change on --resume).")] = None,
    threads: ThreadsOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or lines.")] = False,
    progress_seconds: ProgressSecondsOpt = None,
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = None,
    logger: LoggerOpt = None,
) -> None:
    """Online Dreamer: act, store, update the world model and the behavior, repeat (stages 01-03 alternating).

    Under `torchrun --nproc-per-node N` data-parallel (each rank its own envs, --batch-size per rank)."""
    from dreamer_core.stages import online as stage

    progress = _progress(quiet, progress_seconds)
    file = _config_file(config, "train")
    out_dir = Path(_required(out, file, "out", "--out", "the run directory"))
    env_module = _import_env_modules(env_module, load=not print_config)
    if env is None and not resume and (file is None or file.get("env.id") is None):
        raise DreamerError("Give the environment with --env ID (e.g. --env CartPole-v1) or a --config file that sets "
                           "env.id, or --resume an existing run.")
    flags = {
        "out": None if out is None else str(out),
        "env.id": env, "env.obs": "pixels" if pixels else None, "env.action_repeat": action_repeat,
        "env.env_module": env_module[0] if env_module else None, "steps": steps, "num_envs": num_envs,
        "train_ratio": train_ratio, "prefill": prefill, "batch_size": batch_size, "seq_len": seq_len,
        "eval_every": eval_every, "eval_episodes": eval_episodes, "eval_mode": eval_mode,
        "checkpoint_seconds": checkpoint_seconds, "seed": seed, "threads": threads, "device": device,
        "loggers": logger, "learner_only": learner_only,
    }
    _refuse_resume_of_nothing(out_dir, resume)
    if resume:
        _refuse_changes_on_resume(out_dir, "train", flags, ("steps", "threads", "out", "loggers", "learner_only"),
                                  preset, set_, "--steps, the new total, --threads, --logger and --learner-only",
                                  file, pixels=pixels)
        if print_config:
            return _print_config("train", _resumed_config("train", out_dir, {"steps": steps, "threads": threads,
                                                                              "out": str(out_dir),
                                                                              "learner_only": learner_only}))
        cfg = stage.TrainConfig(out=str(out_dir))
    else:
        with config_lib.using_file(file):
            cfg = stage.make_config(str(out_dir), preset, set_, flags)
        if print_config:
            return _print_config("train", cfg)
    _show_config("train", cfg, out_dir, quiet, resume, {"steps": steps, "threads": threads, "out": str(out_dir),
                                                        "loggers": logger, "learner_only": learner_only})
    result = stage.run(cfg, resume=resume, progress=progress, steps=steps if resume else None,
                       threads=threads if resume else None, loggers=logger if resume else None,
                       learner_only=learner_only if resume else None)
    if _main_rank():  # under torchrun the other ranks stay quiet
        typer.echo(stage.summary_line(result))
    if result["interrupted"]:
        raise typer.Exit(code=130)


@app.command()
@user_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="One or more run directories (several: one line each, e.g. seeds; see --group).")],
    out: Annotated[Path | None, typer.Option("--out", help="PNG to write (default RUN/curve.png of the first run).")] = None,
    key: Annotated[list[str], typer.Option("--key", help="Plot this metric instead of the default panels (repeatable).")] = [],
    title: Annotated[str | None, typer.Option("--title", help="Figure title.")] = None,
    group: Annotated[bool, typer.Option("--group", help="One line per setting: runs whose configs differ only in the seed (or length, threads, device) are drawn as their mean with a 95% bootstrap confidence band.")] = False,
) -> None:
    """Learning curves (PNG) from the runs' metrics: returns, losses, imagined returns."""
    from dreamer_core.stages.plot import plot_runs

    typer.echo(f"wrote {plot_runs(runs, out, key or None, title, group=group)}")


@app.command(context_settings={"allow_extra_args": True})
@user_errors
def sweep(
    ctx: typer.Context,
    out: Annotated[Path, typer.Argument(help="Sweep directory: one run directory per trial (trial-NNNN/), summary.csv, plots, study.db.")],
    param: Annotated[list[str], typer.Option("--param", help="KEY=float:LOW:HIGH[:log|:STEP], KEY=int:LOW:HIGH[:log|:STEP] or KEY=choice:A,B,... (repeatable).")] = [],
    space: Annotated[Path | None, typer.Option("--space", help="YAML search space: KEY: SPEC per line (SPEC as after --param KEY=), KEY: [A, B] or KEY: {type, low, high, log, step, values}.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Finished (complete or pruned) trials the study should hold (default 20); the same command again continues the study.")] = 20,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default: the name of SWEEP_DIR).")] = None,
    storage: Annotated[str | None, typer.Option("--storage", help="optuna storage URL (default sqlite:///SWEEP_DIR/study.db). Workers with the same --storage and --study share the study.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe (default) | random | qmc | cmaes | gp.")] = "tpe",
    seed: Annotated[int | None, typer.Option("--seed", help="The sampler's seed (default: random). Each trial's own seed is a train option (--seed after --) or a parameter.")] = None,
    pruner: Annotated[str, typer.Option("--pruner", help="median[:STARTUP[:WARMUP_STEPS]] (default median: 5 complete trials before pruning) | percentile:P[:STARTUP[:WARMUP_STEPS]] | halving | hyperband | threshold:LIMIT | none.")] = "median",
    metric: Annotated[str, typer.Option("--metric", help="The metric of metrics.jsonl reported to the pruner and scored (default eval/return).")] = "eval/return",
    objective: Annotated[str, typer.Option("--objective", help="A trial's value: last (default) | best | mean of its logged metric values.")] = "last",
    direction: Annotated[str, typer.Option("--direction", help="maximize (default) | minimize.")] = "maximize",
    max_failures: Annotated[int, typer.Option("--max-failures", help="Stop this worker after this many failed trials in a row (default 3).")] = 3,
) -> None:
    """Hyperparameter sweep with optuna: each trial is a `dreamer train` run; give train's options after `--`."""
    from typer.main import get_command

    from dreamer_core.stages import sweep as stage

    train_args = list(ctx.args)
    try:  # the options after -- are `dreamer train`'s: parse them now, before any trial runs
        get_command(app).commands["train"].make_context("train", ["--out", str(out / "trial"), *train_args])
    except Exception as exc:  # a usage error (typer's own click, or click itself: both have format_message)
        if not hasattr(exc, "format_message"):
            raise
        raise DreamerError(
            f"The options after -- go to `dreamer train`, which refuses them: {exc.format_message().rstrip('.')}. Give "
            "`dreamer train` options there (e.g. -- --env CartPole-v1 --steps 3000), and the sweep's own "
            "options (--param, --trials, ...) before the --."
        ) from None
    cfg = stage.SweepConfig(
        out=str(out), params=tuple(param), space=str(space) if space else "", train_args=tuple(train_args),
        trials=trials, study=study or "", storage=storage or "", sampler=sampler, seed=seed, pruner=pruner,
        metric=metric, objective=objective, direction=direction, max_failures=max_failures,
    )
    result = stage.run(cfg, config_class=_config_class("online", "TrainConfig"),
                       log=lambda line: typer.echo(line, err=True))
    typer.echo(result.table())
    typer.echo(result.summary_line())
    if result.interrupted:
        raise typer.Exit(code=130)


# `dreamer plot` with --group (replaces the current function; only `group` and the call change).
@app.command()
@user_errors
def dream(
    run: Annotated[Path | None, typer.Option("--run", help="Run directory with world_model.pt (or run in --config).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Video to write (.gif or .mp4; replaced if it exists); the error plot goes beside it as <stem>_error.png (or out in --config).")] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", help="Dataset to take the episode from (default: the run's first dataset).")] = None,
    episode: Annotated[int | None, typer.Option("--episode", help="Episode index in the dataset (default 0; -1 = the last).")] = None,
    context: Annotated[int | None, typer.Option("--context", help="Real rows the dream observes before imagining (default 5).")] = None,
    horizon: Annotated[int | None, typer.Option("--horizon", help="Imagined steps after the context (default: to the end of the episode).")] = None,
    actor: Annotated[bool, typer.Option("--actor", help="Also dream under the actor's own actions (needs behavior.pt).")] = False,
    fps: Annotated[int | None, typer.Option(help="Frames per second (default 15).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the dream's latent samples (default 0).")] = None,
    tau: Annotated[list[float], typer.Option("--tau", help="World Models runs: M's sampling temperature; repeat for one video per temperature (<stem>_tau<T>).")] = [],
    config: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    preset: PresetOpt = [],
    set_: SetOpt = [],
    device: DeviceOpt = None,
) -> None:
    """Video of real | reconstruction | open-loop dream along a recorded episode, plus error vs horizon (World Models runs: per --tau, with M's uncertainty)."""
    from dreamer_core.stages import dream as stage

    file = _config_file(config, "dream")
    run_dir = _required(run, file, "run", "--run", "the run directory (with world_model.pt)")
    out_file = _required(out, file, "out", "--out", "the video to write (.gif or .mp4)")
    flags = {"run": None if run is None else str(run), "out": None if out is None else str(out),
             "dataset": None if dataset is None else str(dataset), "episode": episode, "context": context,
             "horizon": horizon, "actor": actor or None, "fps": fps, "seed": seed, "device": device,
             "tau": tuple(tau) or None}
    with config_lib.using_file(file):
        cfg = stage.make_config(run_dir, out_file, preset, set_, flags)
    if print_config:
        return _print_config("dream", cfg)
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
