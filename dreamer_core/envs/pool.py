"""K environments stepped as one batch: ``EnvPool`` and ``make_env_pool``.

Every backend gives the same interface and the same autoreset rule (gymnasium 1.x
``NEXT_STEP``)::

    step k:    env i reports terminated or truncated (obs_k is its last observation)
    step k+1:  env i is reset; actions[i] is ignored; it returns its first observation
               with reward 0 and terminated = truncated = False

Backends:

- ``"serial"``: a plain loop over K envs in this process (no gymnasium vector env, whose
  bookkeeping doubles the cost of cheap envs such as CartPole). For K = 1 it returns views of
  the env's fresh observation arrays, so the pool adds little beyond the batched arrays.
- ``"async"``: gymnasium ``AsyncVectorEnv``, one subprocess per env (``spawn`` for DMC, whose
  renderer hangs in forked children; the platform default otherwise).
- ``"ale"``: ale-py's ``AtariVectorEnv`` (C++ threads) for ``ALE/...`` ids, with the same
  preprocessing as ``make_env``; it implements NEXT_STEP itself.
- ``"auto"``: serial for K = 1; ale for ALE ids with K > 1 when it supports the config; async
  otherwise.

Seeding: ``make_env_pool(seed=s)`` seeds env i with ``s + i`` at its first reset;
``reset(seed=s)`` reseeds the same way; later autoresets continue each env's own stream.

Imports: numpy, gymnasium and the sibling env modules; nothing else from dreamer_core.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np

from dreamer_core.envs import atari
from dreamer_core.envs.config import EnvConfig
from dreamer_core.envs.make import import_env_module, make_env
from dreamer_core.errors import DreamerError

BACKENDS = ("auto", "serial", "async", "ale")
Obs = dict[str, np.ndarray]


class EnvPool:
    """K environments stepped as one batch (see the module docstring for the autoreset rule).

    Attributes:
        num_envs: K.
        observation_space: Dict space of ONE env.
        action_space: Action space of ONE env.
        backend: ``"serial"``, ``"async"`` or ``"ale"``.
    """

    num_envs: int
    observation_space: gym.spaces.Dict
    action_space: gym.Space
    backend: str

    def reset(self, seed: int | None = None) -> Obs:
        """Reset every env; env i is seeded with ``seed + i`` when ``seed`` is given.

        Returns:
            Observations ``{key: [K, ...]}``.
        """
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        """Step every env with ``actions[i]`` (ignored for envs that autoreset this step).

        Args:
            actions: ``[K, ...]`` array of actions (ints for Discrete).

        Returns:
            ``(obs, reward, terminated, truncated)``: obs ``{key: [K, ...]}``, reward float32
            ``[K]``, terminated bool ``[K]``, truncated bool ``[K]``.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Close every env (idempotent)."""
        raise NotImplementedError

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_envs={self.num_envs}, backend={self.backend!r}, "
            f"observation_space={self.observation_space}, action_space={self.action_space})"
        )


class SerialEnvPool(EnvPool):
    """K envs stepped one after another in this process."""

    backend = "serial"

    def __init__(self, envs: list[gym.Env]):
        """Take ownership of ``envs`` (all made from the same config)."""
        self._envs = envs
        self.num_envs = len(envs)
        self.observation_space = envs[0].observation_space
        self.action_space = envs[0].action_space
        self._keys = tuple(self.observation_space.spaces)
        self._done = [False] * self.num_envs
        self._closed = False

    def reset(self, seed: int | None = None) -> Obs:
        """Reset every env; env i gets ``seed + i``."""
        observations = []
        for i, env in enumerate(self._envs):
            obs, _ = env.reset(seed=None if seed is None else seed + i)
            observations.append(obs)
        self._done = [False] * self.num_envs
        return self._batch(observations)

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        """Step (or autoreset) each env in turn."""
        if self.num_envs == 1:
            # Fast path: no Python-side batching loops, views of the env's fresh arrays.
            env = self._envs[0]
            if self._done[0]:
                obs, _ = env.reset()
                self._done[0] = False
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, _ = env.step(actions[0])
                self._done[0] = terminated or truncated
            return (
                {key: value[None] for key, value in obs.items()},
                np.array((reward,), np.float32),
                np.array((terminated,), bool),
                np.array((truncated,), bool),
            )
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        observations = []
        done = self._done
        for i, env in enumerate(self._envs):
            if done[i]:
                obs, _ = env.reset()
                done[i] = False
            else:
                obs, reward, term, trunc, _ = env.step(actions[i])
                rewards[i], terminated[i], truncated[i] = reward, term, trunc
                done[i] = term or trunc
            observations.append(obs)
        return self._batch(observations), rewards, terminated, truncated

    def _batch(self, observations: list[Obs]) -> Obs:
        return {key: np.stack([obs[key] for obs in observations]) for key in self._keys}

    def close(self) -> None:
        """Close every env."""
        if not self._closed:
            self._closed = True
            for env in self._envs:
                env.close()


class AsyncEnvPool(EnvPool):
    """K envs in subprocesses through gymnasium's ``AsyncVectorEnv`` (NEXT_STEP autoreset)."""

    backend = "async"

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int | None = None):
        """Start one subprocess per env.

        Args:
            cfg: Environment config.
            num_envs: K.
            seed: Env i is seeded with ``seed + i`` at its first reset.
        """
        env_fns = [
            functools.partial(make_env, cfg, None if seed is None else seed + i)
            for i in range(num_envs)
        ]
        context = "spawn" if cfg.suite == "dmc" else None
        self._vector = gym.vector.AsyncVectorEnv(
            env_fns, context=context, autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP
        )
        self.num_envs = num_envs
        self.observation_space = self._vector.single_observation_space
        self.action_space = self._vector.single_action_space

    def reset(self, seed: int | None = None) -> Obs:
        """Reset every env; env i gets ``seed + i``."""
        obs, _ = self._vector.reset(seed=seed)
        return obs

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        """Step all subprocesses in parallel."""
        obs, rewards, terminated, truncated, _ = self._vector.step(actions)
        return obs, rewards.astype(np.float32), terminated.astype(bool), truncated.astype(bool)

    def close(self) -> None:
        """Stop the subprocesses."""
        self._vector.close()


class AleEnvPool(EnvPool):
    """K Atari emulators in ale-py's ``AtariVectorEnv`` (threads in C++)."""

    backend = "ale"

    def __init__(self, cfg: EnvConfig, num_envs: int, seed: int | None = None):
        """Create the vector env (see ``atari.ale_vector_env``).

        Args:
            cfg: Environment config with an ``ALE/...`` id.
            num_envs: K.
            seed: Env i is seeded with ``seed + i`` at the first reset.
        """
        self._vector = atari.ale_vector_env(cfg, num_envs)
        self.num_envs = num_envs
        height, width = cfg.size
        channels = 1 if cfg.grayscale else 3
        self._shape = (num_envs, height, width, channels)
        self.observation_space = gym.spaces.Dict(
            {"image": gym.spaces.Box(0, 255, self._shape[1:], np.uint8)}
        )
        self.action_space = self._vector.single_action_space
        self._pending_seed = seed
        self._closed = False

    def reset(self, seed: int | None = None) -> Obs:
        """Reset every env; env i gets ``seed + i``."""
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        obs, _ = self._vector.reset(seed=seed)
        return {"image": obs.reshape(self._shape)}

    def step(self, actions: np.ndarray) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        """Step all emulators (ale-py autoresets with NEXT_STEP semantics itself)."""
        actions = np.asarray(actions)
        if actions.dtype != np.int64 and actions.dtype != np.int32:
            actions = actions.astype(np.int64)
        obs, rewards, terminated, truncated, _ = self._vector.step(actions)
        return (
            {"image": obs.reshape(self._shape)},
            rewards.astype(np.float32),
            terminated.astype(bool),
            truncated.astype(bool),
        )

    def close(self) -> None:
        """Release the emulators."""
        if not self._closed:
            self._closed = True
            self._vector.close()


def make_env_pool(
    cfg: EnvConfig, num_envs: int = 1, seed: int | None = None, backend: str = "auto"
) -> EnvPool:
    """Create ``num_envs`` copies of the env in ``cfg`` as one batched pool.

    Args:
        cfg: Environment config.
        num_envs: K >= 1.
        seed: Env i is seeded with ``seed + i`` at its first reset.
        backend: ``"auto"``, ``"serial"``, ``"async"`` or ``"ale"`` (see the module docstring).

    Returns:
        The pool; close it when done (or use it as a context manager).

    Raises:
        DreamerError: Bad arguments, or a backend that cannot run this config.
    """
    if backend not in BACKENDS:
        raise DreamerError(
            f"Unknown env pool backend {backend!r}; choose one of {', '.join(BACKENDS)}."
        )
    if not isinstance(num_envs, int) or num_envs < 1:
        raise DreamerError(f"num_envs must be a positive integer, got {num_envs!r}.")
    import_env_module(cfg.env_module)  # here too, so its errors surface in this process
    if backend == "auto":
        backend = choose_backend(cfg, num_envs)
    if backend == "ale":
        return AleEnvPool(cfg, num_envs, seed)
    if backend == "async":
        return AsyncEnvPool(cfg, num_envs, seed)
    if cfg.suite == "retro" and num_envs > 1:
        raise DreamerError(
            "stable-retro allows one emulator per process, so a serial pool cannot hold "
            f"{num_envs} retro envs. Use backend='async' (or 'auto'), which runs each env in "
            "its own process."
        )
    envs: list[gym.Env] = []
    try:
        for i in range(num_envs):
            envs.append(make_env(cfg, seed=None if seed is None else seed + i))
    except BaseException:
        for env in envs:
            env.close()
        raise
    return SerialEnvPool(envs)


def choose_backend(cfg: EnvConfig, num_envs: int) -> str:
    """The backend ``"auto"`` resolves to for ``cfg`` and ``num_envs``."""
    if num_envs == 1:
        return "serial"
    if cfg.suite == "atari" and atari.ale_vector_unsupported(cfg) is None:
        return "ale"
    return "async"
