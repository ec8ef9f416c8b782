"""The on-disk data contract: step alignment, episode record, HDF5 layout and space JSON.

This module is the one place that says how a step is laid out. The writer, the reader, the
sampler and the Minari converters all depend on it; it depends on nothing above it.

Step alignment (one row per observation; an episode of N env steps has N + 1 rows)::

    env:        reset ──a1──► step ──a2──► step ── ... ──aN──► step (terminated or truncated)
    row t:        0            1            2                   N
    obs         o0           o1           o2                  oN
    action      0 (zeros)    a1           a2                  aN      a_t is the action that LED TO o_t
    reward      0            r1           r2                  rN      r_t is received on arriving at o_t
    is_first    1            0            0                   0
    is_last     0            0            0                   1
    is_terminal 0            0            0                   1 only if the env terminated
                                                                (a truncation is never terminal)

So a training window is a plain slice ``rows[s : s + T]`` of every column, and a window that
crosses into the next episode sees ``is_first`` where the world model must reset its state.

HDF5 layout of one shard (readable with plain h5py; see data/README.md). The rows of all
episodes in a shard are stored back to back, so an episode (or any window inside the shard)
is one slice per column, and writing an episode costs no HDF5 metadata of its own::

    shard-<utc>-<id>.h5
      attrs: format, schema_version, env_id, env_config (JSON), observation_space (JSON),
             action_space (JSON), policy, seed, created, dreamer_core_version, num_episodes
      steps/                    R = total rows of the shard
        obs/<key>               [R, ...]  images uint8 [R, H, W, C] (chunked), vectors float32
        action                  [R, ...]  int64 (Discrete, MultiDiscrete), float32 (Box), int8 (MultiBinary)
        reward                  float32 [R]
        is_first, is_last, is_terminal   bool [R]
      episodes/                 E = episodes in the shard
        start                   int64 [E]   first row of episode e in steps/
        rows                    int64 [E]   its rows (= env steps + 1)
        return                  float64 [E]
        terminated              bool [E]
        policy_update           int64 [E]   optional (``POLICY_COLUMNS``): the agent checkpoint
        policy_world_model_update  int64 [E]    that collected each episode (-1: none, e.g. a
        policy_digest           bytes16 [E]  random policy); see :class:`PolicyVersion`

The ``policy_*`` columns are written only into shards holding an episode collected by a
trained agent (``dreamer collect --policy RUN``); shards without them (random data, and every
shard written before the columns existed) read as "no agent recorded". Adding them changed
nothing else, so the schema version stays 1 and older readers ignore them.

Imports: numpy and gymnasium only (no torch, nothing from dreamer_core above data/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

SCHEMA_VERSION = 1
FORMAT = "dreamer-core-dataset"
MANIFEST_NAME = "dataset.json"
SHARD_PREFIX = "shard-"
SHARD_SUFFIX = ".h5"
PARTIAL_SUFFIX = ".partial"  # shards being written: ".shard-<...>.h5.partial"

STEPS_GROUP = "steps"
EPISODES_GROUP = "episodes"
OBS_GROUP = "obs"
EPISODE_INDEX = ("start", "rows", "return", "terminated")
# Optional per-episode columns in episodes/: which agent checkpoint collected the episode.
POLICY_UPDATE, POLICY_WORLD_MODEL_UPDATE, POLICY_DIGEST = "policy_update", "policy_world_model_update", "policy_digest"
POLICY_COLUMNS = (POLICY_UPDATE, POLICY_WORLD_MODEL_UPDATE, POLICY_DIGEST)
POLICY_DIGEST_CHARS = 16  # hex digits of SHA-256 kept (64 bits: enough to tell checkpoints apart)
ACTION = "action"
REWARD = "reward"
IS_FIRST = "is_first"
IS_LAST = "is_last"
IS_TERMINAL = "is_terminal"
FLAGS = (IS_FIRST, IS_LAST, IS_TERMINAL)
COLUMNS = (ACTION, REWARD, *FLAGS)


# --- spaces <-> JSON -------------------------------------------------------------------------


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """Describe a gymnasium space as a JSON-able dict (the subset dreamer-core stores)."""
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound_to_json(space.low),
            "high": _bound_to_json(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, gym.spaces.MultiBinary):
        return {"type": "MultiBinary", "n": _int_or_list(space.n)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
    raise TypeError(
        f"dreamer-core cannot store a {type(space).__name__} space; supported: Dict, Box, "
        "Discrete, MultiBinary, MultiDiscrete."
    )


def space_from_json(desc: dict[str, Any] | str) -> gym.Space:
    """Inverse of :func:`space_to_json` (accepts the dict or its JSON string)."""
    if isinstance(desc, str):
        desc = json.loads(desc)
    kind = desc["type"]
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_json(s) for k, s in desc["spaces"].items()})
    if kind == "Box":
        dtype = np.dtype(desc["dtype"])
        shape = tuple(desc["shape"])
        low = np.broadcast_to(np.asarray(desc["low"], dtype=np.float64), shape).astype(dtype)
        high = np.broadcast_to(np.asarray(desc["high"], dtype=np.float64), shape).astype(dtype)
        return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(desc["n"], start=desc.get("start", 0))
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(desc["n"])
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(np.asarray(desc["nvec"], dtype=np.int64))
    raise ValueError(f"unknown space type {kind!r} in dataset metadata")


def spaces_equal(a: gym.Space, b: gym.Space) -> bool:
    """True when two spaces store identically (same structure, shapes, dtypes and bounds)."""
    return space_to_json(a) == space_to_json(b)


def space_mismatches(
    expected_obs: gym.Space, expected_act: gym.Space, got_obs: gym.Space, got_act: gym.Space
) -> list[str]:
    """Human-readable differences between two (observation, action) space pairs; [] if none."""
    problems = []
    if not spaces_equal(expected_obs, got_obs):
        problems.append(f"observation space {got_obs} (expected {expected_obs})")
    if not spaces_equal(expected_act, got_act):
        problems.append(f"action space {got_act} (expected {expected_act})")
    return problems


def _bound_to_json(bound: np.ndarray) -> Any:
    # Store a scalar when the bound is uniform, so JSON stays small for images.
    flat = np.asarray(bound, dtype=np.float64).ravel()
    if flat.size and np.all(flat == flat[0]):
        return _finite_or_str(flat[0])
    return [_finite_or_str(x) for x in flat]


def _finite_or_str(x: float) -> float | str:
    # JSON has no infinity; json.dumps would write the non-standard token Infinity.
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(x)


def _int_or_list(n: Any) -> int | list[int]:
    return int(n) if np.isscalar(n) else [int(v) for v in np.asarray(n).ravel()]


# --- column specs ----------------------------------------------------------------------------


def is_image_space(space: gym.Space) -> bool:
    """An image is a uint8 Box of rank 3 ``[H, W, C]``."""
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3


def obs_column_spec(space: gym.Space) -> tuple[tuple[int, ...], np.dtype]:
    """Per-row shape and dtype of one observation key as stored."""
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"observation keys must be Box spaces after make_env, got {space}")
    if is_image_space(space):
        return tuple(space.shape), np.dtype(np.uint8)
    return tuple(space.shape), np.dtype(np.float32)


def action_column_spec(space: gym.Space) -> tuple[tuple[int, ...], np.dtype]:
    """Per-row shape and dtype of the action column for an action space."""
    if isinstance(space, gym.spaces.Discrete):
        return (), np.dtype(np.int64)
    if isinstance(space, gym.spaces.Box):
        return tuple(space.shape), np.dtype(np.float32)
    if isinstance(space, gym.spaces.MultiBinary):
        return tuple(np.atleast_1d(space.n).tolist()), np.dtype(np.int8)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return tuple(space.nvec.shape), np.dtype(np.int64)
    raise TypeError(f"unsupported action space {space}")


def column_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of one row of a column with this per-row shape and dtype."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def episode_flags(rows: int, terminated: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``is_first``, ``is_last``, ``is_terminal`` of one episode of ``rows`` rows (see the diagram)."""
    is_first = np.zeros(rows, dtype=bool)
    is_first[0] = True
    is_last = np.zeros(rows, dtype=bool)
    is_last[-1] = True
    is_terminal = np.zeros(rows, dtype=bool)
    is_terminal[-1] = bool(terminated)
    return is_first, is_last, is_terminal


# --- value checks (vectorised; the writer, the loader and the Minari import share them) -------


def nonfinite_rows(values: np.ndarray) -> np.ndarray:
    """Bool ``[rows]``: rows of a float column holding NaN or +-inf (all False for integers)."""
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        return np.zeros(len(values), dtype=bool)
    bad = ~np.isfinite(values)
    return bad.reshape(len(values), -1).any(axis=1) if bad.ndim > 1 else bad


def action_bad_rows(action: np.ndarray, space: gym.Space) -> np.ndarray:
    """Bool ``[rows]``: actions outside ``space``.

    Discrete: ``0 <= a - start < n``; MultiDiscrete: the same per dimension; MultiBinary: 0 or
    1; Box: finite (values beyond the bounds are allowed: envs clip them).
    """
    action = np.asarray(action)
    rows = len(action)
    if isinstance(space, gym.spaces.Box):
        return nonfinite_rows(action)
    if isinstance(space, gym.spaces.Discrete):
        index = action.reshape(rows).astype(np.int64, copy=False) - int(space.start)
        return (index < 0) | (index >= int(space.n))
    if isinstance(space, gym.spaces.MultiDiscrete):
        start = np.asarray(getattr(space, "start", 0), dtype=np.int64)
        index = action.reshape(rows, *space.nvec.shape).astype(np.int64, copy=False) - start
        bad = (index < 0) | (index >= space.nvec)
        return bad.reshape(rows, -1).any(axis=1)
    if isinstance(space, gym.spaces.MultiBinary):
        return ((action != 0) & (action != 1)).reshape(rows, -1).any(axis=1)
    return np.zeros(rows, dtype=bool)


def first_nonfinite(episode: Episode) -> tuple[str, int, float] | None:
    """The first (column, row, value) of an episode holding NaN or inf, or None.

    Columns are ``obs/<key>`` for float observations, ``reward``, and ``action`` for float
    actions; images and integer actions cannot hold such values.
    """
    columns = {f"obs/{k}": v for k, v in episode.obs.items()}
    columns[REWARD] = episode.reward
    columns[ACTION] = episode.action
    found = None
    for name, values in columns.items():
        bad = nonfinite_rows(values)
        if bad.any():
            row = int(np.argmax(bad))
            value = np.asarray(values[row], dtype=np.float64).ravel()
            value = value[~np.isfinite(value)][0]
            if found is None or row < found[1]:
                found = (name, row, float(value))
    return found


# --- the agent that collected an episode ------------------------------------------------------


@dataclass(frozen=True)
class PolicyVersion:
    """The agent checkpoint an episode was collected with (stored per episode in a shard).

    Attributes:
        update: the update counter of the run's ``behavior.pt`` (the actor-critic's updates;
            in an online run, the run's updates).
        world_model_update: the update counter of the world model the agent acted with.
        digest: the first ``POLICY_DIGEST_CHARS`` hex digits of the SHA-256 of that
            ``behavior.pt`` file, which tell two checkpoints with equal counters apart (a
            behavior trained again from scratch).
    """

    update: int
    world_model_update: int
    digest: str

    def __str__(self) -> str:
        return f"update {self.update} (world model {self.world_model_update}, behavior.pt {self.digest[:8]})"

    @staticmethod
    def columns(versions: list[PolicyVersion | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``POLICY_COLUMNS`` values of these episodes' versions (None: -1, -1, empty)."""
        update = np.array([-1 if v is None else v.update for v in versions], dtype=np.int64)
        wm_update = np.array([-1 if v is None else v.world_model_update for v in versions], dtype=np.int64)
        digest = np.array([b"" if v is None else v.digest.encode() for v in versions],
                          dtype=f"S{POLICY_DIGEST_CHARS}")
        return update, wm_update, digest

    @staticmethod
    def from_columns(update: Any, world_model_update: Any, digest: Any) -> PolicyVersion | None:
        """One episode's version from its column values (None where none was recorded)."""
        if int(update) < 0 and not digest:
            return None
        text = digest.decode() if isinstance(digest, bytes) else str(digest)
        return PolicyVersion(int(update), int(world_model_update), text)


# --- the episode record ----------------------------------------------------------------------


@dataclass
class Episode:
    """One episode in the row layout above (every column has ``rows = steps + 1`` entries).

    Attributes:
        obs: observation key -> array ``[rows, ...]``.
        action: ``[rows, ...]``; row 0 is zeros.
        reward: float32 ``[rows]``; row 0 is 0.
        is_first, is_last, is_terminal: bool ``[rows]``.
    """

    obs: dict[str, np.ndarray]
    action: np.ndarray
    reward: np.ndarray
    is_first: np.ndarray
    is_last: np.ndarray
    is_terminal: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.reward.shape[0])

    @property
    def steps(self) -> int:
        return self.rows - 1

    @property
    def ret(self) -> float:
        return float(self.reward.sum(dtype=np.float64))

    @property
    def terminated(self) -> bool:
        return bool(self.is_terminal[-1])

    def __repr__(self) -> str:
        obs = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.obs.items())
        return (
            f"Episode(steps={self.steps}, return={self.ret:.3f}, terminated={self.terminated}, "
            f"obs={{{obs}}}, action={self.action.dtype}{list(self.action.shape)})"
        )

    @classmethod
    def from_transitions(
        cls,
        observations: dict[str, np.ndarray],
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: bool,
    ) -> Episode:
        """Build rows from the transition layout (N+1 observations, N actions and rewards).

        This is the layout of Minari and of a plain ``reset``/``step`` loop. ``terminated``
        says whether the final step ended the episode (rather than a truncation).
        """
        actions = np.asarray(actions)
        rewards = np.asarray(rewards, dtype=np.float32)
        steps = int(rewards.shape[0])
        if actions.shape[0] != steps:
            raise ValueError(f"{actions.shape[0]} actions for {steps} rewards")
        for key, value in observations.items():
            if value.shape[0] != steps + 1:
                raise ValueError(f"obs '{key}' has {value.shape[0]} rows, expected {steps + 1}")
        action = np.concatenate([np.zeros_like(actions[:1]), actions], axis=0)
        if steps == 0:  # keep the action's per-row shape even without any action
            action = np.zeros((1, *actions.shape[1:]), dtype=actions.dtype)
        reward = np.concatenate([np.zeros(1, np.float32), rewards])
        return cls(dict(observations), action, reward, *episode_flags(steps + 1, terminated))

    def to_transitions(
        self,
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The inverse of :meth:`from_transitions`.

        Returns:
            observations ``[N+1, ...]``, actions ``[N, ...]``, rewards ``[N]``,
            terminations ``[N]`` and truncations ``[N]`` (bool; only the last step may be set).
        """
        steps = self.steps
        terminations = np.zeros(steps, dtype=bool)
        truncations = np.zeros(steps, dtype=bool)
        if steps:
            terminations[-1] = self.terminated
            truncations[-1] = not self.terminated
        return dict(self.obs), self.action[1:], self.reward[1:], terminations, truncations

    def validate(self, observation_space: gym.spaces.Dict, action_space: gym.Space) -> None:
        """Raise ``ValueError`` when a column breaks the row contract or the spaces."""
        rows = self.rows
        if rows < 1:
            raise ValueError("an episode needs at least its first observation")
        if set(self.obs) != set(observation_space.spaces):
            raise ValueError(f"obs keys {sorted(self.obs)} != space keys {sorted(observation_space.spaces)}")
        for key, space in observation_space.spaces.items():
            shape, dtype = obs_column_spec(space)
            if self.obs[key].shape != (rows, *shape):
                raise ValueError(f"obs '{key}' shape {self.obs[key].shape} != {(rows, *shape)}")
            if dtype == np.uint8 and self.obs[key].dtype != np.uint8:
                # a float image in [0, 1] would be stored as zeros: refuse it instead
                raise ValueError(f"image '{key}' must be uint8, got {self.obs[key].dtype}")
        a_shape, a_dtype = action_column_spec(action_space)
        if self.action.shape != (rows, *a_shape):
            raise ValueError(f"action shape {self.action.shape} != {(rows, *a_shape)}")
        if a_dtype.kind in "iu" and self.action.dtype.kind not in "iub":
            raise ValueError(f"actions of {action_space} must be integers, got {self.action.dtype}")
        for name in (REWARD, *FLAGS):
            if getattr(self, name).shape != (rows,):
                raise ValueError(f"{name} shape {getattr(self, name).shape} != ({rows},)")
        expected_first, expected_last, _ = episode_flags(rows, terminated=False)
        if not np.array_equal(self.is_first, expected_first):
            raise ValueError("is_first must be set on row 0 only")
        if not np.array_equal(self.is_last, expected_last):
            raise ValueError("is_last must be set on the final row only")
        if self.is_terminal[:-1].any():
            raise ValueError("is_terminal may only be set on the final row")
        if self.reward[0] != 0 or np.any(self.action[0] != 0):
            raise ValueError("row 0 must hold a zero action and zero reward")
