"""The Python API of dreamer-core: everything a script or notebook needs, in one namespace.

    import dreamer_core as dc            # the same names, imported on first use
    from dreamer_core.api import WorldModel, world_model_update, train_world_model

What is here:

- **Models**: ``WorldModel`` and ``WorldModelConfig`` (with ``world_model_config`` to start from
  the stages' presets), ``ActorCritic`` and ``BehaviorConfig`` (``behavior_config``).
- **Updates**: ``world_model_update`` and ``behavior_update``, the steps every stage runs (with
  ``make_optimizer`` and ``OptimConfig``), on a ``Batch`` of ``[B, T]`` windows.
- **Data**: ``Dataset`` (a directory written by ``collect``) and ``SequenceSampler`` (uniform
  ``[B, T]`` windows from one or more datasets).
- **Runs**: ``load_world_model``, ``load_agent`` and ``load_policy`` rebuild what a run wrote.
- **Stages as functions**: ``collect``, ``train_world_model``, ``train_behavior``, ``evaluate`` and
  ``train`` (online): the commands of the CLI, taking its settings as keyword arguments and
  returning the stage's result.
- **Extension points**: ``register_encoder`` / ``register_decoder`` (your own networks, rebuilt
  from the checkpoint by name) and ``Callback`` (hooks after updates, evaluations, checkpoints).

Settings are keyword arguments named as the config keys of the CLI's ``--set``: a top-level
key as it is (``updates=200``), a nested one with ``__`` for each dot (``model__rssm__deter=64``,
or ``**{"model.rssm.deter": 64}``). They apply after the defaults, the ``config`` file and the
``presets``, exactly as the CLI applies its flags; a wrong key or value raises ``DreamerError``
naming it. Errors the user can fix are ``DreamerError`` throughout.

Imports: the stages (make_config + run), runs, world_model, behavior, data, optim, nets
(the registry), config; it sits beside the CLI at the top of the layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic, BehaviorConfig
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.errors import DreamerError
from dreamer_core.nets.encoders import (
    decoder_names,
    encoder_names,
    register_decoder,
    register_encoder,
)
from dreamer_core.optim import OptimConfig, make_optimizer
from dreamer_core.runs import load_agent, load_policy, load_world_model
from dreamer_core.stages.common import Callback
from dreamer_core.stages.updates import behavior_update, world_model_update
from dreamer_core.types import Batch
from dreamer_core.world_model import EncoderConfig, WorldModel, WorldModelConfig

if TYPE_CHECKING:
    from dreamer_core.envs import EnvConfig
    from dreamer_core.stages.collect import CollectResult
    from dreamer_core.stages.evaluate import EvalResult

__all__ = [
    "ActorCritic",
    "Batch",
    "BehaviorConfig",
    "Callback",
    "Dataset",
    "DreamerError",
    "EncoderConfig",
    "OptimConfig",
    "SequenceSampler",
    "WorldModel",
    "WorldModelConfig",
    "behavior_config",
    "behavior_update",
    "collect",
    "decoder_names",
    "encoder_names",
    "evaluate",
    "load_agent",
    "load_policy",
    "load_world_model",
    "make_optimizer",
    "register_decoder",
    "register_encoder",
    "train",
    "train_behavior",
    "train_world_model",
    "world_model_config",
    "world_model_update",
]

PathLike = str | Path


# --- configs from presets ---------------------------------------------------------------------


def world_model_config(*presets: str, **settings: Any) -> WorldModelConfig:
    """A world-model config: the defaults (DreamerV3, size S), then ``presets``, then ``settings``.

    Args:
        *presets: preset names as ``dreamer train-world-model --preset`` takes them, in order
            (``"tiny"``, ``"XS"``, ``"dreamerv2"``, ...); only their ``model.*`` settings are used.
        **settings: fields of ``WorldModelConfig``, nested with ``__``
            (``rssm__deter=64``, ``encoder__name="mine"``).

    Returns:
        The config, checked as the stages check it.

    Raises:
        DreamerError: an unknown preset or key, a wrong value, or an encoder or decoder name
            nobody registered.

    Example:
        ```python
        cfg = world_model_config("tiny", rssm__deter=32)  # cfg.rssm.deter == 32
        ```
    """
    from dreamer_core.stages.train_world_model import TrainWorldModelConfig
    from dreamer_core.world_model import network_problems

    cfg = config_lib.apply_presets(TrainWorldModelConfig(), "train-world-model", presets)
    cfg = config_lib.apply_overrides(cfg, {f"model.{key}": value for key, value in _dotted(settings).items()})
    problems = config_lib.Problems("train-world-model")
    problems.world_model("model", cfg.model)
    for problem in network_problems(cfg.model):
        problems.add(problem)
    problems.raise_any()
    return cfg.model


def behavior_config(*presets: str, **settings: Any) -> BehaviorConfig:
    """An actor-critic config: the defaults (DreamerV3), then ``presets``, then ``settings``.

    Args:
        *presets: preset names as ``dreamer train-behavior --preset`` takes them (``"tiny"``,
            ``"dreamerv2"``, ...); only their ``behavior.*`` settings are used.
        **settings: fields of ``BehaviorConfig``, nested with ``__`` (``actor__units=64``,
            ``horizon=10``).

    Returns:
        The config, checked as the stages check it.

    Raises:
        DreamerError: an unknown preset or key, or a wrong value.
    """
    from dreamer_core.stages.train_behavior import TrainBehaviorConfig

    cfg = config_lib.apply_presets(TrainBehaviorConfig(), "train-behavior", presets)
    cfg = config_lib.apply_overrides(cfg, {f"behavior.{key}": value for key, value in _dotted(settings).items()})
    problems = config_lib.Problems("train-behavior")
    problems.behavior("behavior", cfg.behavior)
    problems.raise_any()
    return cfg.behavior


# --- the stages as functions ------------------------------------------------------------------


def collect(env: str | EnvConfig, out: PathLike, *, presets: Sequence[str] = (), config: PathLike | None = None,
            progress: bool = True, **settings: Any) -> CollectResult:
    """Stage 01: run a policy in the env and write the episodes as a dataset (``dreamer collect``).

    Args:
        env: an env id (``"CartPole-v1"``, ``"dreamer/DummyDiscrete-v0"``, ``"ALE/Pong-v5"``, ...)
            or a full ``EnvConfig``.
        out: the dataset directory (created; collecting into an existing dataset adds shards).
        presets: collect's presets (``"atari"``, ``"dmc_vision"``, ...).
        config: a YAML config file, as ``--config``.
        progress: show progress (a bar in a terminal, plain lines elsewhere).
        **settings: ``CollectConfig`` keys: ``steps``, ``episodes``, ``num_envs``, ``policy``
            (``"random"`` or a run directory), ``seed``, ``env__obs="pixels"``, ...

    Returns:
        The ``CollectResult``: steps, episodes, returns, seconds, shards, ``out``.

    Raises:
        DreamerError: a bad setting, an unknown env, or an output that cannot be written.

    Example:
        ```python
        collect("CartPole-v1", "data/cartpole", steps=5000)
        ```
    """
    from dreamer_core.stages import collect as stage

    flags = {"env.id": env} if isinstance(env, str) else {"env": env}
    flags.update(_dotted(settings))
    with _using_config(config, "collect"):
        cfg = stage.make_config(str(out), list(presets), [], flags)
    return stage.run(cfg, progress=progress)


def train_world_model(datasets: PathLike | Sequence[PathLike] | None, out: PathLike, *,
                      presets: Sequence[str] = (), config: PathLike | None = None, resume: bool = False,
                      callbacks: Sequence[Callback] = (), progress: bool = True,
                      **settings: Any) -> dict[str, Any]:
    """Stage 02: train a world model from datasets into a run directory (``dreamer train-world-model``).

    Args:
        datasets: one dataset directory or several (None or empty with ``resume``: the run's own).
        out: the run directory (new or empty; with ``resume``, the run to continue).
        presets: model presets (``"tiny"``, ``"S"``, ``"dreamerv2"``, ...), in order.
        config: a YAML config file, as ``--config`` (a run's ``config.yaml`` works).
        resume: continue the run in ``out`` from its last checkpoint; ``updates`` may then give a
            new total, ``datasets`` new data, ``loggers`` new trackers; other settings are refused.
        callbacks: ``Callback`` objects (step = updates).
        progress: show progress (a bar in a terminal, plain lines elsewhere).
        **settings: ``TrainWorldModelConfig`` keys: ``updates``, ``batch_size``, ``seq_len``,
            ``loggers="none"``, ``model__encoder__name="mine"``, ``optim__lr=3e-4``, ...

    Returns:
        The last logged metrics (``wm/*``, and ``val/wm/*`` of the last evaluation) and ``updates``.

    Raises:
        DreamerError: a bad setting, data that cannot be read, or a run directory that holds
            another run.

    Example:
        ```python
        train_world_model("data/cartpole", "runs/cartpole", presets=["tiny"], updates=2000)
        ```
    """
    from dreamer_core.stages import train_world_model as stage

    flags = _dotted(settings)
    given = _paths(datasets)
    if given:
        flags["datasets"] = given
    updates, loggers = _resume_only(resume, flags, "train_world_model", ("updates", "datasets", "loggers"))
    with _using_config(config, "train-world-model"):
        cfg = stage.make_config([], str(out), list(presets), [], flags)
    return stage.run(cfg, resume=resume, progress=progress, resume_updates=updates, loggers=loggers,
                     callbacks=callbacks)


def train_behavior(run: PathLike, *, datasets: PathLike | Sequence[PathLike] | None = None,
                   presets: Sequence[str] = (), config: PathLike | None = None, resume: bool = False,
                   callbacks: Sequence[Callback] = (), progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Stage 03: train the actor-critic in imagination against the run's frozen world model
    (``dreamer train-behavior``).

    The defaults follow the run's world model (its batch shape, width, depth and variant),
    and the replay data is the datasets it was trained on unless ``datasets`` is given.

    Args:
        run: the run directory holding ``world_model.pt``.
        datasets: replay data instead of the run's own datasets.
        presets: behavior presets (``"tiny"``, ``"dreamerv2"``, ...), in order.
        config: a YAML config file, as ``--config``.
        resume: continue from the last behavior checkpoint; ``updates`` may then give a new
            total, ``datasets`` new data, ``loggers`` new trackers; other settings are refused.
        callbacks: ``Callback`` objects (step = updates; stage 03 does not evaluate).
        progress: show progress (a bar in a terminal, plain lines elsewhere).
        **settings: ``TrainBehaviorConfig`` keys: ``updates``, ``batch_size``,
            ``behavior__horizon=10``, ``behavior__actor__grad="dynamics"``, ``loggers="none"``, ...

    Returns:
        The last logged metrics (``actor/*``, ``critic/*``, ``imag/*``) and ``updates``.

    Raises:
        DreamerError: a run without a world model, a bad setting, or data that does not fit.

    Example:
        ```python
        train_behavior("runs/cartpole", updates=2000)
        ```
    """
    from dreamer_core.stages import train_behavior as stage

    flags = _dotted(settings)
    updates, loggers = _resume_only(resume, flags, "train_behavior", ("updates", "datasets", "loggers"))
    with _using_config(config, "train-behavior"):
        cfg = stage.make_config(str(run), _paths(datasets), list(presets), [], flags)
    return stage.run(cfg, resume=resume, progress=progress, resume_updates=updates, loggers=loggers,
                     callbacks=callbacks)


def evaluate(run: PathLike, *, presets: Sequence[str] = (), config: PathLike | None = None, progress: bool = True,
             **settings: Any) -> EvalResult:
    """Stage 04: play episodes with the run's agent in the real env (``dreamer evaluate``).

    Writes ``RUN/eval/<timestamp>/`` (``report.json``, ``returns.png``, videos with ``video=True``).

    Args:
        run: the run directory holding ``world_model.pt`` and ``behavior.pt``.
        presets: presets in order, as ``dreamer evaluate --preset`` takes them.
        config: a YAML config file, as ``--config``.
        progress: show progress (a bar in a terminal, plain lines elsewhere).
        **settings: ``EvaluateConfig`` keys: ``episodes``, ``mode`` (``"greedy"`` or ``"sample"``),
            ``seed``, ``env`` (another env id), ``video``, ``max_steps``, ...

    Returns:
        The ``EvalResult``: ``report`` (per-episode returns and lengths, mean, std, ...) and the
        ``folder`` it was written to.

    Raises:
        DreamerError: a run without an agent, or a bad setting.

    Example:
        ```python
        evaluate("runs/cartpole", episodes=20).report["return_mean"]
        ```
    """
    from dreamer_core.stages import evaluate as stage

    with _using_config(config, "evaluate"):
        cfg = stage.make_config(str(run), list(presets), [], _dotted(settings))
    return stage.run(cfg, progress=progress)


def train(env: str | EnvConfig | None, out: PathLike, *, presets: Sequence[str] = (),
          config: PathLike | None = None, resume: bool = False, callbacks: Sequence[Callback] = (),
          progress: bool = True, **settings: Any) -> dict[str, Any]:
    """Online Dreamer: act, store, update the world model and the behavior, repeat (``dreamer train``).

    Args:
        env: an env id or an ``EnvConfig`` (None with ``resume``: the run's own).
        out: the run directory (new or empty; with ``resume``, the run to continue).
        presets: presets in order (``"XS"``, ``"atari100k"``, ``"dreamerv3-2025"``, ...).
        config: a YAML config file, as ``--config``.
        resume: continue the run in ``out`` from its last checkpoint; ``steps`` may then give a
            new total, ``threads`` and ``loggers`` new values; other settings are refused.
        callbacks: ``Callback`` objects (step = env steps).
        progress: show progress (a bar in a terminal, plain lines elsewhere).
        **settings: ``TrainConfig`` keys: ``steps``, ``prefill``, ``train_ratio``, ``eval_every``,
            ``eval_episodes``, ``num_envs``, ``loggers="none"``, ``model__rssm__deter=256``, ...

    Returns:
        A summary: ``env_steps``, ``updates``, ``episodes``, ``eval_return``, ``best_eval_return``,
        ``seconds``, ``interrupted``, ``run``, and speeds.

    Raises:
        DreamerError: a bad setting, an unknown env, or a run directory that holds another run.

    Example:
        ```python
        train("CartPole-v1", "runs/cartpole-online", steps=20_000)
        ```
    """
    from dreamer_core.stages import online as stage

    flags = _dotted(settings)
    if resume:
        extra = sorted(set(flags) - {"steps", "threads", "loggers"}) + (["env"] if env is not None else [])
        if extra:
            raise DreamerError(f"train(resume=True) continues the run with its own config: only steps, threads "
                               f"and loggers may change, got {', '.join(extra)}.")
        cfg = stage.TrainConfig(out=str(out))
        return stage.run(cfg, resume=True, progress=progress, steps=flags.get("steps"),
                         threads=flags.get("threads"), loggers=flags.get("loggers"), callbacks=callbacks)
    if env is None:
        raise DreamerError("train() needs the env (an id such as 'CartPole-v1', or an EnvConfig); only "
                           "train(out=..., resume=True) continues a run without one.")
    flags = {"env.id": env} if isinstance(env, str) else {"env": env}
    flags.update(_dotted(settings))
    with _using_config(config, "train"):
        cfg = stage.make_config(str(out), list(presets), [], flags)
    return stage.run(cfg, progress=progress, callbacks=callbacks)


# --- helpers ------------------------------------------------------------------------------------


def _dotted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword settings as dotted config keys (``a__b`` -> ``a.b``; dotted keys stay)."""
    return {key.replace("__", "."): value for key, value in settings.items()}


def _paths(paths: PathLike | Sequence[PathLike] | None) -> list[str]:
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        return [str(paths)]
    return [str(p) for p in paths]


def _resume_only(resume: bool, flags: dict[str, Any], name: str, allowed: tuple[str, ...],
                 ) -> tuple[int | None, str | None]:
    """On resume, refuse settings a run keeps; return the new total and loggers (None: keep)."""
    if not resume:
        return None, None
    extra = sorted(set(flags) - set(allowed))
    if extra:
        raise DreamerError(f"{name}(resume=True) continues the run with its own config: only "
                           f"{', '.join(allowed)} may change, got {', '.join(extra)}.")
    return flags.get("updates"), flags.get("loggers")


@contextlib.contextmanager
def _using_config(path: PathLike | None, command: str) -> Iterator[None]:
    """Apply a ``--config`` file for ``command`` within the block (nothing when None)."""
    file = None if path is None else config_lib.ConfigFile.load(path, command)
    with config_lib.using_file(file):
        yield
