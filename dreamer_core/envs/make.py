"""Environment construction: ``make_env`` and the table of suites.

This module owns the one place where an env id becomes a ``gymnasium.Env`` that follows the
package's observation convention (see ``wrappers.ObsAdapter``)::

    id                              suite   built by
    'ALE/<Game>-v5'                 atari   atari.make_atari   (Dreamer preprocessing)
    'retro:<Game>[-v0]'             retro   retro.make_retro   (stable-retro, one emulator per process)
    'dmc:<domain>-<task>'           dmc     dmc.make_dmc       (dm_control suite)
    anything else                   gym     make_gym           (gymnasium registry, incl. dreamer/Dummy*)

Every env goes through the same tail: suite builder (with action repeat) -> optional
``TimeLimit`` (counted in agent steps, i.e. after action repeat) -> ``ObsAdapter`` (Dict
observations, resized images, float32 vectors, seed applied at the first reset).

Errors the user can fix are raised as ``DreamerError`` subclasses with the fix in the message.

The config it builds from, ``EnvConfig``, lives in ``config.py`` (which the suite modules
import too, so none of them needs this module).

Imports: gymnasium, ``dreamer_core.errors`` and the sibling env modules (config, wrappers,
atari, dmc, retro; none of them imports this one); nothing else from dreamer_core, and never
torch. Optional suites are imported lazily by their modules.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
from collections.abc import Callable

import gymnasium as gym

from dreamer_core import files
from dreamer_core.envs import atari, dmc, retro, wrappers
from dreamer_core.envs.config import DMC_PREFIX, RETRO_PREFIX, EnvConfig
from dreamer_core.errors import DreamerError, MissingDependencyError, UnknownEnvError


def make_env(cfg: EnvConfig, seed: int | None = None, render_mode: str | None = None) -> gym.Env:
    """Build the environment described by ``cfg``.

    The returned env has a ``gymnasium.spaces.Dict`` observation space (``image`` uint8
    ``[H, W, C]``, ``vector`` float32 ``[V]``, or the env's own Dict keys converted the same
    way); its action space is the env's own.

    Args:
        cfg: The environment config.
        seed: Seed for the first ``reset()`` that is called without a seed (and for the
            action space); later resets continue the env's own random stream.
        render_mode: ``"rgb_array"`` makes ``env.render()`` return frames (e.g. for videos).

    Returns:
        The wrapped environment. Call ``close()`` when done (retro allows one open emulator
        per process).

    Raises:
        UnknownEnvError: No suite knows the id; the message lists close ids.
        MissingDependencyError: The suite's optional package is not installed.
        DreamerError: Any other problem the user can fix (bad module, missing ROM, ...).
    """
    import_env_module(cfg.env_module)
    needs_frames = cfg.obs != "default"
    if needs_frames and render_mode not in (None, "rgb_array"):
        raise DreamerError(
            f"obs={cfg.obs!r} renders frames with render_mode='rgb_array', which cannot be "
            f"combined with render_mode={render_mode!r}. Use obs='default' to watch the env "
            f"in {render_mode!r} mode, or drop the render mode."
        )
    env = SUITES[cfg.suite](cfg, render_mode)
    try:
        if cfg.time_limit:
            env = gym.wrappers.TimeLimit(env, max_episode_steps=cfg.time_limit)
        env = wrappers.ObsAdapter(
            env, obs=cfg.obs, size=cfg.size, grayscale=cfg.grayscale, seed=seed
        )
    except BaseException:
        env.close()
        raise
    if seed is not None:
        env.action_space.seed(seed)
    return env


def import_env_module(module: str | None) -> None:
    """Import ``module`` (which registers user envs); None does nothing.

    ``module`` is a dotted module name (``my_envs``, ``pkg.envs``) or a path to a ``.py``
    file (``./my_envs.py``), which is imported under its file stem. Importing twice is a no-op.

    Raises:
        DreamerError: The module cannot be imported.
    """
    if not module:
        return
    try:
        if module.endswith(".py") or os.sep in module:
            files.import_file(module)
        else:
            importlib.import_module(module)
    except (ImportError, OSError) as error:
        raise DreamerError(
            f"Could not import the env module {module!r} ({error}). Pass an importable module "
            f"name (an installed package, or a module on PYTHONPATH, e.g. run with "
            f"PYTHONPATH=. for my_envs.py in the current folder) or a path to a .py file as "
            f"--env-module (EnvConfig.env_module)."
        ) from error


def make_gym(cfg: EnvConfig, render_mode: str | None) -> gym.Env:
    """Build a plain gymnasium env (classic control, Box2D, MuJoCo, dummy, user envs).

    Args:
        cfg: The environment config (suite ``"gym"``).
        render_mode: Render mode requested by the caller.

    Returns:
        The env with action repeat applied (observations not yet converted).
    """
    if cfg.id not in gym.registry and not _register_ale_ids(cfg.id):
        raise unknown_env_error(cfg.id)
    if cfg.obs != "default":
        render_modes = _render_modes(cfg.id)
        if render_modes is not None and "rgb_array" not in render_modes:
            raise DreamerError(
                f"{cfg.id} cannot render 'rgb_array' frames (its render modes are "
                f"{list(render_modes)}), so obs={cfg.obs!r} is not possible. Use obs='default'."
            )
        render_mode = "rgb_array"
    kwargs = dict(cfg.kwargs)
    repeat = cfg.effective_action_repeat
    if cfg.time_limit:
        # Lift the env's own limit so that ours (in agent steps) decides.
        kwargs.setdefault("max_episode_steps", cfg.time_limit * repeat)
    try:
        env = gym.make(cfg.id, render_mode=render_mode, **kwargs)
    except gym.error.DependencyNotInstalled as error:
        raise dependency_error(cfg.id, error) from error
    except TypeError as error:
        raise DreamerError(
            f"Could not create {cfg.id} with kwargs {kwargs}: {error}. Check the extra env "
            f"kwargs (EnvConfig.kwargs) against the env's constructor."
        ) from error
    if repeat > 1:
        env = wrappers.ActionRepeat(env, repeat)
    return env


def dependency_error(env_id: str, error: Exception) -> DreamerError:
    """Translate gymnasium's ``DependencyNotInstalled`` into a fix-it error."""
    text = str(error).lower()
    if "box2d" in text:
        return MissingDependencyError(
            "box2d",
            "box2d",
            f"{env_id} (a Box2D environment: LunarLander, BipedalWalker, CarRacing)",
        )
    if "mujoco" in text:
        return DreamerError(
            f"{env_id} needs MuJoCo, which is not installed ({error}). Install it with: "
            f"pip install 'gymnasium[mujoco]'."
        )
    if "pygame" in text:
        return DreamerError(
            f"Rendering {env_id} needs pygame, which is not installed. Install it with: "
            f"pip install pygame (or pip install 'dreamer-core[box2d]', which includes it)."
        )
    return DreamerError(
        f"{env_id} needs a package that is not installed: {error}. Install it and try again."
    )


def unknown_env_error(env_id: str) -> UnknownEnvError:
    """An ``UnknownEnvError`` for ``env_id`` that lists the closest known ids."""
    close = env_ids_like(env_id)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return UnknownEnvError(
        f"Unknown environment id {env_id!r}.{hint} Ids are gymnasium ids "
        f"(e.g. CartPole-v1), 'ALE/<Game>-v5', 'retro:<Game>-<System>-v0' or "
        f"'dmc:<domain>-<task>'. If the env is registered by your own module, pass that "
        f"module with --env-module (EnvConfig.env_module) so it is imported first."
    )


def env_ids_like(name: str, n: int = 5) -> list[str]:
    """Known env ids closest to ``name``, for error messages.

    Searches the gymnasium registry (with ALE ids when ale-py is installed), DMC tasks as
    ``dmc:<domain>-<task>`` and retro games as ``retro:<Game>`` (when those are installed).

    Args:
        name: The id the user typed.
        n: At most this many ids.

    Returns:
        Up to ``n`` ids, closest first (case-insensitive comparison).
    """
    _register_ale_ids(None)
    candidates = list(gym.registry)
    candidates += [DMC_PREFIX + task for task in dmc.known_tasks()]
    candidates += [RETRO_PREFIX + game for game in retro.known_games()]
    by_lower: dict[str, str] = {}
    for candidate in candidates:
        by_lower.setdefault(candidate.lower(), candidate)
    matches = difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5)
    return [by_lower[match] for match in matches]


def _register_ale_ids(env_id: str | None) -> bool:
    """Register ale-py's ids if it is installed; True if ``env_id`` is then known."""
    try:
        import ale_py
    except ImportError:
        return False
    gym.register_envs(ale_py)
    return env_id is not None and env_id in gym.registry


def _render_modes(env_id: str) -> list[str] | None:
    """The ``render_modes`` metadata of the class behind ``env_id``, if it can be loaded."""
    entry_point = gym.spec(env_id).entry_point
    if not isinstance(entry_point, str):
        return getattr(entry_point, "metadata", {}).get("render_modes")
    try:
        env_class = gym.envs.registration.load_env_creator(entry_point)
    except gym.error.DependencyNotInstalled as error:
        raise dependency_error(env_id, error) from error
    except (ImportError, AttributeError):
        return None
    return getattr(env_class, "metadata", {}).get("render_modes")


SUITES: dict[str, Callable[[EnvConfig, str | None], gym.Env]] = {
    "atari": atari.make_atari,
    "retro": retro.make_retro,
    "dmc": dmc.make_dmc,
    "gym": make_gym,
}
