"""Tiny deterministic environments for tests and the ``tiny`` preset.

Registered with gymnasium when ``dreamer_core.envs`` is imported::

    id                              observation                          action
    dreamer/DummyDiscrete-v0        vector [4]                           Discrete(3)
    dreamer/DummyContinuous-v0      vector [3]                           Box(-1, 1, (2,))
    dreamer/DummyImage-v0           image 16x16x3                        Discrete(3)
    dreamer/DummyDict-v0            Dict(image 16x16x3, state [4])       Discrete(3)
    dreamer/DummyMultiBinary-v0     vector [5]                           MultiBinary(4)

Rules shared by all of them (so tests can check step alignment and behavior learning has
something to learn):

- ``t`` is the step index within the episode (0 after reset). Vector observations start with
  ``t`` (``vector[0] == t``); images have channel 0 filled with ``t`` and channel 1 with
  ``80 * target`` (uniform, so they survive resizing), plus a bright dot in channel 2 that
  moves with ``t``.
- Each step has a ``target`` action that the observation reveals; the reward is 1 for hitting
  it (Discrete), 1 minus the mean distance / 2 (Box), the fraction of matching bits
  (MultiBinary). So reward depends on the action.
- Each episode draws a length in [10, 30] from the reset seed; reaching it terminates. The
  registered time limit of 25 steps truncates the longer ones, so both ends occur.
- Everything is a function of the reset seed and the actions (deterministic).

``make_env`` resizes images to ``EnvConfig.size`` like any other env; pass ``size=(16, 16)`` to
keep the natural size. ``render()`` (``rgb_array``) returns the 16x16 frame for every variant.

Imports: numpy and gymnasium only.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

NAMESPACE = "dreamer"
IMAGE_SIZE = 16
MIN_LENGTH, MAX_LENGTH = 10, 30
TIME_LIMIT = 25


class DummyEnv(gym.Env):
    """Base of the dummy envs: episode bookkeeping, targets, frames and rewards.

    Subclasses set ``action_kind`` (``"discrete"``, ``"continuous"``, ``"multibinary"``) and
    ``obs_kind`` (``"vector"``, ``"image"``, ``"dict"``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    action_kind = "discrete"
    obs_kind = "vector"
    num_actions = 3  # Discrete(3); Box (2,); MultiBinary(4) use their own sizes below

    def __init__(self, render_mode: str | None = None):
        """Create the env.

        Args:
            render_mode: ``None`` or ``"rgb_array"``.
        """
        self.render_mode = render_mode
        if self.action_kind == "discrete":
            self.action_space = gym.spaces.Discrete(self.num_actions)
            target_size = self.num_actions  # one-hot of the target
        elif self.action_kind == "continuous":
            self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
            target_size = 2
        else:
            self.action_space = gym.spaces.MultiBinary(4)
            target_size = 4
        vector = gym.spaces.Box(-np.inf, np.inf, (1 + target_size,), np.float32)
        image = gym.spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        if self.obs_kind == "vector":
            self.observation_space = vector
        elif self.obs_kind == "image":
            self.observation_space = image
        else:
            self.observation_space = gym.spaces.Dict({"image": image, "state": vector})
        self._t = 0
        self._length = MAX_LENGTH
        self._offset = 0

    # --- targets and observations -------------------------------------------------------

    def _target(self) -> Any:
        """The action that earns the full reward at the current step."""
        phase = self._t + self._offset
        if self.action_kind == "discrete":
            return phase % self.num_actions
        if self.action_kind == "continuous":
            angle = 0.5 * phase
            return np.array([np.cos(angle), np.sin(angle)], np.float32)
        return np.array([(phase >> bit) & 1 for bit in range(4)], np.int8)

    def _target_features(self) -> np.ndarray:
        target = self._target()
        if self.action_kind == "discrete":
            features = np.zeros(self.num_actions, np.float32)
            features[target] = 1.0
            return features
        return np.asarray(target, np.float32)

    def _frame(self) -> np.ndarray:
        frame = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        frame[..., 0] = self._t
        target = self._target()
        level = target if self.action_kind == "discrete" else int(np.sum(np.asarray(target) > 0))
        frame[..., 1] = 80 * level
        frame[IMAGE_SIZE // 2, self._t % IMAGE_SIZE, 2] = 255
        return frame

    def _observation(self) -> Any:
        vector = np.concatenate([[float(self._t)], self._target_features()]).astype(np.float32)
        if self.obs_kind == "vector":
            return vector
        if self.obs_kind == "image":
            return self._frame()
        return {"image": self._frame(), "state": vector}

    def _reward(self, action: Any) -> float:
        target = self._target()
        if self.action_kind == "discrete":
            return float(int(action) == target)
        if self.action_kind == "continuous":
            action = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
            return float(1.0 - np.mean(np.abs(action - target)) / 2.0)
        return float(np.mean(np.asarray(action, np.int8) == target))

    # --- gymnasium API ------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Start an episode whose length and target phase come from the seeded generator."""
        super().reset(seed=seed)
        self._t = 0
        self._length = int(self.np_random.integers(MIN_LENGTH, MAX_LENGTH + 1))
        self._offset = int(self.np_random.integers(0, 16))
        return self._observation(), {"length": self._length}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        """Score ``action`` against the current target, then advance ``t``."""
        reward = self._reward(action)
        self._t += 1
        terminated = self._t >= self._length
        return self._observation(), reward, terminated, False, {}

    def render(self) -> np.ndarray | None:
        """The current 16x16 frame (``rgb_array``), or None without a render mode."""
        if self.render_mode != "rgb_array":
            return None
        return self._frame()


class DummyDiscrete(DummyEnv):
    """Vector observation, Discrete(3) actions."""


class DummyContinuous(DummyEnv):
    """Vector observation, Box(-1, 1, (2,)) actions."""

    action_kind = "continuous"


class DummyImage(DummyEnv):
    """16x16x3 image observation, Discrete(3) actions."""

    obs_kind = "image"


class DummyDict(DummyEnv):
    """Dict observation (``image`` 16x16x3, ``state`` vector), Discrete(3) actions."""

    obs_kind = "dict"


class DummyMultiBinary(DummyEnv):
    """Vector observation, MultiBinary(4) actions."""

    action_kind = "multibinary"


ENVS = {
    f"{NAMESPACE}/DummyDiscrete-v0": DummyDiscrete,
    f"{NAMESPACE}/DummyContinuous-v0": DummyContinuous,
    f"{NAMESPACE}/DummyImage-v0": DummyImage,
    f"{NAMESPACE}/DummyDict-v0": DummyDict,
    f"{NAMESPACE}/DummyMultiBinary-v0": DummyMultiBinary,
}


def register_dummy_envs() -> None:
    """Register the dummy envs with gymnasium (idempotent)."""
    for env_id, env_class in ENVS.items():
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point=f"{__name__}:{env_class.__name__}",
                max_episode_steps=TIME_LIMIT,
            )
