"""DeepMind Control Suite tasks as gymnasium envs (``dmc:<domain>-<task>`` ids).

Owns ``DMCEnv``, a ``gymnasium.Env`` over ``dm_control.suite``:

- observation: the task's observation dict, each entry flattened and concatenated in the
  task's key order, as one float32 vector (``ObsAdapter`` puts it under ``vector``);
- action: ``Box(-1, 1, (A,), float32)``, mapped linearly onto the task's action bounds;
- ``render()``: an ``rgb_array`` frame of ``render_size`` from camera ``camera`` (0 by
  default), rendered with shadows and multisampling off (about 8x faster at 64x64);
- episodes end when the task says so: ``terminated`` when it ends with discount 0, else
  ``truncated`` (suite tasks end by their time limit, 1000 env steps, so they truncate).

``make_dmc`` adds action repeat (default 2, rewards summed). With ``obs="pixels"`` the frame
is rendered once per agent step, after the repeat. ``EnvConfig.kwargs`` are passed to the task
(e.g. ``time_limit`` in seconds), except ``camera`` which selects the render camera.

MuJoCo needs a GL backend before dm_control is imported: ``MUJOCO_GL`` defaults to ``egl``
here (an existing value is kept). Vector envs of DMC tasks must use the ``spawn`` start method
(``make_env_pool`` does this).

Imports: numpy, gymnasium, ``dreamer_core.errors``, ``dreamer_core.envs.config`` and
``dreamer_core.envs.wrappers`` (never ``make.py``, which imports this module); dm_control
lazily (extra [dmc]).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from typing import Any

import gymnasium as gym
import numpy as np

from dreamer_core.envs import wrappers
from dreamer_core.envs.config import EnvConfig
from dreamer_core.errors import DreamerError, MissingDependencyError, UnknownEnvError

PREFIX = "dmc:"


def import_suite() -> Any:
    """Import ``dm_control.suite`` (choosing the EGL backend unless MUJOCO_GL is set).

    Raises:
        MissingDependencyError: dm-control (or MuJoCo) is not installed.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from dm_control import suite
    except ImportError as error:
        raise MissingDependencyError(
            "dm-control", "dmc", "DeepMind Control Suite environments"
        ) from error
    return suite


def known_tasks() -> list[str]:
    """``'<domain>-<task>'`` for every suite task; [] when dm_control is not installed."""
    if importlib.util.find_spec("dm_control") is None:
        return []
    try:
        suite = import_suite()
    except MissingDependencyError:
        return []
    return [f"{domain}-{task}" for domain, task in suite.ALL_TASKS]


def parse_task(env_id: str) -> tuple[str, str]:
    """``'dmc:ball_in_cup-catch'`` -> ``('ball_in_cup', 'catch')``, checked against the suite.

    Raises:
        MissingDependencyError: dm-control is not installed.
        UnknownEnvError: No such task; the message lists the domain's tasks or close ids.
    """
    suite = import_suite()
    name = env_id[len(PREFIX) :] if env_id.startswith(PREFIX) else env_id
    domain, _, task = name.partition("-")
    if (domain, task) in suite.ALL_TASKS:
        return domain, task
    domains = sorted({d for d, _ in suite.ALL_TASKS})
    if domain in domains:
        tasks = [f"{PREFIX}{domain}-{t}" for d, t in suite.ALL_TASKS if d == domain]
        listing = f"The tasks of domain {domain!r} are: {', '.join(tasks)}."
    else:
        every = [f"{d}-{t}" for d, t in suite.ALL_TASKS]
        close = difflib.get_close_matches(name, every, n=5, cutoff=0.5)
        listing = (f"Did you mean: {', '.join(PREFIX + c for c in close)}? " if close else "") + (
            f"Domains: {', '.join(domains)}."
        )
    raise UnknownEnvError(
        f"Unknown DeepMind Control task {name!r}. {listing} DMC ids look like "
        f"'dmc:<domain>-<task>', e.g. dmc:walker-walk or dmc:ball_in_cup-catch."
    )


class DMCEnv(gym.Env):
    """A dm_control suite task with a flat float32 observation and actions in [-1, 1]."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        domain: str,
        task: str,
        render_size: tuple[int, int] = (64, 64),
        camera: int = 0,
        task_kwargs: dict[str, Any] | None = None,
    ):
        """Load the task.

        Args:
            domain: Suite domain, e.g. ``"walker"``.
            task: Task of that domain, e.g. ``"walk"``.
            render_size: Height and width of ``render()`` frames.
            camera: Camera id used by ``render()``.
            task_kwargs: Extra task arguments (e.g. ``time_limit`` in seconds).
        """
        suite = import_suite()
        # The task keeps this generator; reseeding it in place reseeds the task.
        self._random = np.random.RandomState()
        kwargs = {**(task_kwargs or {}), "random": self._random}
        self._env = suite.load(domain, task, task_kwargs=kwargs)
        quality = self._env.physics.model.vis.quality
        quality.shadowsize = 0
        quality.offsamples = 0
        self._render_size = tuple(render_size)
        self._camera = camera
        self._keys = list(self._env.observation_spec())
        size = sum(int(np.prod(spec.shape)) for spec in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (size,), np.float32)
        spec = self._env.action_spec()
        self._low = np.asarray(spec.minimum, np.float64)
        self._high = np.asarray(spec.maximum, np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        self.render_mode = "rgb_array"
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self._env.control_timestep())}

    def _flatten(self, observation: dict[str, Any]) -> np.ndarray:
        return np.concatenate(
            [np.asarray(observation[key], np.float32).reshape(-1) for key in self._keys]
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``seed`` reseeds the task's generator."""
        super().reset(seed=seed)
        if seed is not None:
            self._random.seed(seed)
        time_step = self._env.reset()
        return self._flatten(time_step.observation), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action`` (in [-1, 1]) for one control step."""
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        time_step = self._env.step(self._low + (action + 1.0) * 0.5 * (self._high - self._low))
        last = time_step.last()
        terminated = bool(last and time_step.discount == 0.0)
        truncated = bool(last and not terminated)
        info = {"discount": float(time_step.discount)}
        return (
            self._flatten(time_step.observation),
            float(time_step.reward or 0.0),
            terminated,
            truncated,
            info,
        )

    def render(self) -> np.ndarray:
        """An ``rgb_array`` frame ``[H, W, 3]`` uint8 of the current state."""
        height, width = self._render_size
        return self._env.physics.render(height, width, camera_id=self._camera)

    def close(self) -> None:
        """Release the physics and its rendering context."""
        self._env.close()


def make_dmc(cfg: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """One DMC task env with action repeat (rendering is always ``rgb_array`` at ``cfg.size``).

    Args:
        cfg: Environment config with a ``dmc:`` id.
        render_mode: ``None`` or ``"rgb_array"``; both give ``render()`` frames.

    Returns:
        The env (``ObsAdapter`` is added by make.py).
    """
    domain, task = parse_task(cfg.id)
    if render_mode not in (None, "rgb_array"):
        raise DreamerError(
            f"DMC envs render offscreen ('rgb_array'); render_mode={render_mode!r} is not "
            f"supported. Drop it and save frames from env.render() instead."
        )
    task_kwargs = dict(cfg.kwargs)
    camera = int(task_kwargs.pop("camera", 0))
    if cfg.time_limit:
        # Our TimeLimit (in agent steps) decides; lift the task's own limit.
        task_kwargs.setdefault("time_limit", float("inf"))
    env: gym.Env = DMCEnv(
        domain, task, render_size=cfg.size, camera=camera, task_kwargs=task_kwargs
    )
    repeat = cfg.effective_action_repeat
    if repeat > 1:
        env = wrappers.ActionRepeat(env, repeat)
    return env
