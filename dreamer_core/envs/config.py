"""Environment config: ``EnvConfig``, the frozen record every env is rebuilt from.

This module owns the fields of an env (id, observation mode, image size, action repeat, suite
options, time limit, user env module, extra kwargs), their validation, their JSON round trip
(``to_dict`` / ``from_dict``) and the mapping of an id onto its suite (``EnvConfig.suite``)
with that suite's default action repeat. Building the env from it is ``make.py``'s job; the
suite modules (``atari.py``, ``dmc.py``, ``retro.py``) read it.

Imports: ``dreamer_core.errors`` only (no gymnasium, no sibling env modules, never torch), so
every env module can import it without an import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dreamer_core.errors import DreamerError

OBS_MODES = ("default", "pixels", "both")
RETRO_PREFIX = "retro:"
DMC_PREFIX = "dmc:"
ATARI_PREFIX = "ALE/"
# Action repeat used when ``EnvConfig.action_repeat == 0``.
DEFAULT_ACTION_REPEAT = {"atari": 4, "dmc": 2, "retro": 1, "gym": 1}


@dataclass(frozen=True)
class EnvConfig:
    """Everything needed to rebuild an environment; saved with datasets and checkpoints.

    Attributes:
        id: Env id: ``'CartPole-v1'``, ``'ALE/Pong-v5'``, ``'retro:Airstriker-Genesis-v0'``,
            ``'dmc:cartpole-balance'``, ``'dreamer/DummyDiscrete-v0'`` or any registered
            gymnasium id.
        obs: ``"default"`` (the env's own observation), ``"pixels"`` (a rendered frame under
            ``image`` instead of the state) or ``"both"`` (rendered ``image`` plus the state).
        size: Height and width every image key is resized to.
        grayscale: Images are ``[H, W, 1]`` when True, else ``[H, W, 3]``.
        action_repeat: Env steps per agent step, rewards summed; 0 means the suite default
            (Atari 4, DMC 2, others 1).
        sticky_actions: Atari ``repeat_action_probability`` (0 disables).
        noop_max: Atari: at most this many no-op frames after each reset.
        life_loss_terminal: Atari: a lost life ends the episode (terminated).
        full_action_space: Atari: all 18 actions instead of the game's minimal set.
        time_limit: 0 keeps the env's own limit; otherwise episodes are truncated after this
            many agent steps (counted after action repeat).
        env_module: Module imported before the env is made (it registers user envs).
        kwargs: Extra keyword arguments for ``gym.make`` (or ``stable_retro.make``, or the
            dm_control task), as ``(name, value)`` pairs; a mapping is accepted and converted.
    """

    id: str
    obs: str = "default"
    size: tuple[int, int] = (64, 64)
    grayscale: bool = False
    action_repeat: int = 0
    sticky_actions: float = 0.25
    noop_max: int = 30
    life_loss_terminal: bool = False
    full_action_space: bool = False
    time_limit: int = 0
    env_module: str | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        # Normalise JSON/CLI shapes (list size, dict kwargs) so equal configs compare equal.
        if not isinstance(self.size, tuple):
            object.__setattr__(self, "size", tuple(self.size))
        if isinstance(self.kwargs, Mapping):
            object.__setattr__(self, "kwargs", tuple(self.kwargs.items()))
        elif not isinstance(self.kwargs, tuple) or any(
            not isinstance(pair, tuple) for pair in self.kwargs
        ):
            object.__setattr__(self, "kwargs", tuple(tuple(pair) for pair in self.kwargs))
        problems = []
        if not isinstance(self.id, str) or not self.id:
            problems.append(f"id must be a non-empty string, got {self.id!r}")
        if self.obs not in OBS_MODES:
            problems.append(f"obs must be one of {', '.join(OBS_MODES)}, got {self.obs!r}")
        if len(self.size) != 2 or any(not isinstance(s, int) or s <= 0 for s in self.size):
            problems.append(
                f"size must be two positive integers (height, width), got {self.size!r}"
            )
        if not isinstance(self.action_repeat, int) or self.action_repeat < 0:
            problems.append(f"action_repeat must be an integer >= 0, got {self.action_repeat!r}")
        if not 0.0 <= self.sticky_actions <= 1.0:
            problems.append(f"sticky_actions must be in [0, 1], got {self.sticky_actions!r}")
        if not isinstance(self.noop_max, int) or self.noop_max < 0:
            problems.append(f"noop_max must be an integer >= 0, got {self.noop_max!r}")
        if not isinstance(self.time_limit, int) or self.time_limit < 0:
            problems.append(f"time_limit must be an integer >= 0, got {self.time_limit!r}")
        if any(len(pair) != 2 or not isinstance(pair[0], str) for pair in self.kwargs):
            problems.append(f"kwargs must be (name, value) pairs, got {self.kwargs!r}")
        if problems:
            raise DreamerError(
                "Invalid environment config: " + "; ".join(problems) + ". Fix these fields "
                "(e.g. --set env.obs=pixels) and try again."
            )

    @property
    def suite(self) -> str:
        """The suite that builds this id: ``"atari"``, ``"retro"``, ``"dmc"`` or ``"gym"``."""
        if self.id.startswith(ATARI_PREFIX):
            return "atari"
        if self.id.startswith(RETRO_PREFIX):
            return "retro"
        if self.id.startswith(DMC_PREFIX):
            return "dmc"
        return "gym"

    @property
    def effective_action_repeat(self) -> int:
        """``action_repeat``, or the suite default when it is 0."""
        return self.action_repeat or DEFAULT_ACTION_REPEAT[self.suite]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (``size`` as a list, ``kwargs`` as a dict); see ``from_dict``."""
        out = dataclasses.asdict(self)
        out["size"] = list(self.size)
        out["kwargs"] = {name: value for name, value in self.kwargs}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvConfig:
        """Inverse of ``to_dict``; unknown keys are an error naming the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise DreamerError(
                f"Unknown environment config key(s): {', '.join(unknown)}. "
                f"Valid keys are: {', '.join(names)}."
            )
        return cls(**dict(data))
