"""Farama Minari interchange: import Minari datasets, export dreamer-core datasets to Minari.

This module owns the translation between the Minari on-disk layout (hdf5 storage, as written
by minari 0.5.x) and the dreamer-core row layout of ``data/schema.py``. It reads and writes the
Minari files with plain h5py and json, so it works without the ``minari`` package; only
resolving a dataset id such as ``cartpole/random-v0`` to a directory asks minari where its
local datasets live.

Minari layout (one dataset directory; ``data/`` holds everything)::

    <namespace>/<name>-v<k>/data/
      metadata.json    dataset_id, minari_version, total_episodes, total_steps,
                       data_format ("hdf5"), jpeg_encoding, observation_space and
                       action_space (minari's space JSON, stored as a JSON *string*),
                       env_spec (gymnasium EnvSpec JSON string, optional), ...
      main_data.hdf5
        episode_<i>/   attrs: id, total_steps (seed, options/... when recorded)
          observations   [N+1, ...], or a group per Dict key ("_index_<j>" per Tuple item)
          actions        [N, ...]
          rewards, terminations, truncations   [N]
          infos/         optional

Image leaves (minari's test: uint8 Box of rank 2 or 3, H and W >= 32, bounds 0..255) are
JPEG-encoded frame by frame when ``jpeg_encoding`` is true, which is minari's default and also
what it assumes when the key is missing. The frames are then one byte string per observation:
a variable-length uint8 dataset ``[N+1]``, or a plain ``[N+1, L]`` uint8 array when every frame
happened to encode to the same length. There is no per-dataset flag in the HDF5 file.

Mapping (Minari transitions -> dreamer rows via :meth:`Episode.from_transitions`)::

    uint8 Box of rank 3          -> "image" (uint8, shape kept); rank 2 minari images get [H, W, 1]
    other Box                    -> "vector" float32, flattened
    Discrete / MultiDiscrete     -> "vector" float32 one-hot (concatenated for MultiDiscrete)
    MultiBinary                  -> "vector" float32
    Dict                         -> its keys, each mapped as above; nested keys joined "a.b",
                                    Tuple items by index "a.0"
    actions                      -> per schema.action_column_spec (int64, float32, int8, int64)
    terminated                   =  terminations[-1]   (a truncation is never terminal)

Export writes raw (lossless) frames with ``jpeg_encoding: false``, observation spaces with the
stored dtypes, and a ``dreamer_core`` metadata block (env id, env config, policies) that import
reads back, so dreamer -> minari -> dreamer is exact.

Imports: h5py, numpy, gymnasium, PIL, data.schema, data.store, data.writer, data.dataset,
errors (and minari, lazily, for dataset ids only). Nothing above data/.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
from PIL import Image

from dreamer_core import __version__, files
from dreamer_core.data import schema, store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.errors import DatasetError, MissingDependencyError

DATA_DIR = "data"
MAIN_FILE = "main_data.hdf5"
METADATA_FILE = "metadata.json"
# The Minari dataset version written by export (minari 0.5.4 lists it as supported).
MINARI_VERSION = "0.5.4"
# Our own metadata block in an exported metadata.json (minari keeps unknown keys).
DREAMER_BLOCK = "dreamer_core"

# (namespace/)name-v<version>: the form minari's loaders and `minari list` accept.
_DATASET_ID_RE = re.compile(r"^(?:[-\w]+(?:/[-\w]+)*/)?[-\w]+?-v\d+$")
_EPISODE_RE = re.compile(r"^episode_(\d+)$")

ProgressFn = Callable[[int, int], None]


# --- import -----------------------------------------------------------------------------------


def import_minari(
    src: Path | str,
    dst: Path | str,
    *,
    skip_corrupt: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Convert a Minari dataset (hdf5 storage) into a dreamer-core dataset.

    All imported episodes go into one shard, which appears only when the import finishes, so
    a failed or interrupted import leaves ``dst`` as it was. ``dst`` may be a new or empty
    directory, or an existing dreamer-core dataset with the same spaces (episodes are added).

    Args:
        src: the Minari dataset directory (the one holding ``data/``), its ``data/`` folder,
            or a local dataset id such as ``cartpole/random-v0`` (needs minari installed).
        dst: dreamer-core dataset directory to write.
        skip_corrupt: skip unreadable or inconsistent episodes (listed under ``skipped`` in
            the summary) instead of raising.
        progress: called as ``progress(done, total)`` after each episode.

    Returns:
        ``{"episodes", "steps", "skipped", "src", "dst", "dataset_id", "env_id",
        "observation_space", "action_space", "jpeg_encoding"}`` (JSON-able).

    Raises:
        DatasetError: ``src`` is not a readable Minari hdf5 dataset, uses a space dreamer-core
            cannot store, holds a corrupt episode (without ``skip_corrupt``), or ``dst`` cannot
            receive it.
        MissingDependencyError: ``src`` is a dataset id and minari is not installed.
    """
    data_dir = _resolve_source(src)
    metadata = _read_metadata(data_dir)
    main_file = data_dir / MAIN_FILE
    _check_format(data_dir, metadata)
    dataset_id = str(metadata.get("dataset_id") or data_dir.parent.name)

    obs_space, action_space = _source_spaces(data_dir, metadata)
    leaves = _plan_observations(obs_space, data_dir)
    action_shape, action_dtype = _plan_actions(action_space, data_dir)
    dreamer_obs_space = gym.spaces.Dict({leaf.key: leaf.out_space for leaf in leaves})
    env_id, env_config = _source_env(metadata, dataset_id)
    jpeg = bool(metadata.get("jpeg_encoding", True))

    try:
        file = h5py.File(main_file, "r")
    except OSError as exc:
        raise DatasetError(
            f"The Minari data file {main_file} cannot be opened ({exc}). It is not an HDF5 file "
            "or it is damaged (an interrupted download?). Download or create the dataset again."
        ) from None

    dst = Path(dst)
    created_dst = not dst.exists()
    episodes = steps = 0
    skipped: list[dict[str, str]] = []
    try:
        with file:
            names = _episode_names(file)
            if not names:
                raise DatasetError(
                    f"The Minari dataset {data_dir} holds no episodes (no episode_<i> groups in "
                    f"{MAIN_FILE}). Nothing was written; check that the dataset was created completely."
                )
            writer = DatasetWriter(
                dst,
                env_id,
                env_config,
                dreamer_obs_space,
                action_space,
                policy=f"minari:{dataset_id}",
                seed=None,
                # One shard for the whole import: it is renamed into place only at the end.
                shard_episodes=len(names) + 1,
                shard_seconds=math.inf,
            )
            # Not ``with writer``: its exit keeps finished episodes on Ctrl-C, but an import is
            # all or nothing, so any exception drops the open shard.
            try:
                for done, name in enumerate(names, start=1):
                    try:
                        episode = _read_episode(
                            file[name], leaves, action_space, action_shape, action_dtype, jpeg
                        )
                        _check_episode(episode, dreamer_obs_space, action_space)
                    except _CorruptEpisode as exc:
                        if not skip_corrupt:
                            raise DatasetError(
                                f"Episode {name} of the Minari dataset {main_file} cannot be "
                                f"imported: {exc}. Nothing was written. Fix or drop that episode "
                                "in the Minari dataset, or import the other episodes without it "
                                "from Python: dreamer_core.data.minari.import_minari(SRC, DST, "
                                "skip_corrupt=True)."
                            ) from None
                        skipped.append({"episode": name, "error": str(exc)})
                    else:
                        writer.add_episode(episode)
                        episodes += 1
                        steps += episode.steps
                    if progress is not None:
                        progress(done, len(names))
                if episodes == 0:
                    raise DatasetError(
                        f"None of the {len(names)} episodes of the Minari dataset {data_dir} could "
                        f"be read (first problem: {skipped[0]['error']}). Nothing was written."
                    )
            except BaseException:
                writer.discard()
                raise
            writer.close()
    except BaseException:
        if created_dst:
            _remove_if_empty(dst)
        raise

    return {
        "episodes": episodes,
        "steps": steps,
        "skipped": skipped,
        "src": str(data_dir),
        "dst": str(dst),
        "dataset_id": dataset_id,
        "env_id": env_id,
        "observation_space": {leaf.key: str(leaf.out_space) for leaf in leaves},
        "action_space": str(action_space),
        "jpeg_encoding": jpeg,
    }


class _CorruptEpisode(Exception):
    """One episode that cannot be read (skippable with ``skip_corrupt``)."""


@dataclass(frozen=True)
class _ObsLeaf:
    """One observation leaf: where it is in the Minari file and what it becomes here.

    Attributes:
        key: dreamer-core observation key.
        path: HDF5 path below ``observations`` (empty for a plain, non-Dict space).
        space: the Minari leaf space.
        kind: "image", "box", "discrete", "multidiscrete" or "multibinary".
        out_space: the dreamer-core space of ``key`` (uint8 image or float32 vector Box).
    """

    key: str
    path: tuple[str, ...]
    space: gym.Space
    kind: str
    out_space: gym.spaces.Box


def _resolve_source(src: Path | str) -> Path:
    """Return the Minari ``data/`` directory named by ``src`` (a path or a dataset id)."""
    path = Path(src).expanduser()
    if path.exists():
        if path.is_file():
            if path.name in (MAIN_FILE, METADATA_FILE):
                return path.parent
            raise DatasetError(
                f"{path} is a file, not a Minari dataset. Pass the dataset directory (the one "
                f"holding {DATA_DIR}/{MAIN_FILE} and {DATA_DIR}/{METADATA_FILE}), e.g. "
                "~/.minari/datasets/cartpole/random-v0, or a local dataset id."
            )
        for candidate in (path / DATA_DIR, path):
            if (candidate / METADATA_FILE).is_file() or (candidate / MAIN_FILE).is_file():
                return candidate
        if store.is_dataset_dir(path):
            raise DatasetError(
                f"{path} is a dreamer-core dataset, not a Minari dataset; it needs no import. "
                "To convert it to Minari use `dreamer data export-minari`."
            )
        raise DatasetError(
            f"{path} is not a Minari dataset: it holds no {DATA_DIR}/{METADATA_FILE} or "
            f"{DATA_DIR}/{MAIN_FILE}. Pass the dataset directory (e.g. "
            "~/.minari/datasets/cartpole/random-v0) or a local dataset id such as "
            "cartpole/random-v0 (download one with `minari download ID`)."
        )
    text = str(src)
    if not _DATASET_ID_RE.match(text):
        raise DatasetError(
            f"No Minari dataset at {path}: the path does not exist, and {text!r} is not a "
            "dataset id of the form (namespace/)name-v<k>. Check the path, or pass a local "
            "dataset id such as cartpole/random-v0."
        )
    try:
        from minari.storage.datasets_root_dir import get_dataset_path
    except ImportError:
        raise MissingDependencyError(
            "minari",
            "minari",
            f"Resolving the Minari dataset id {text!r} (pass the dataset directory instead to "
            "import without minari)",
        ) from None
    root = get_dataset_path(text)
    if not (root / DATA_DIR).is_dir():
        raise DatasetError(
            f"No local Minari dataset {text!r} (looked in {root}; MINARI_DATASETS_PATH sets the "
            f"root). Download it with `minari download {text}`, or pass the dataset directory."
        )
    return root / DATA_DIR


def _read_metadata(data_dir: Path) -> dict[str, Any]:
    path = data_dir / METADATA_FILE
    if not path.is_file():
        raise DatasetError(
            f"The Minari dataset at {data_dir} has no {METADATA_FILE}, which records its spaces "
            "and format; without it the data cannot be interpreted. Download or create the "
            "dataset again (minari writes both files)."
        )
    try:
        metadata = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"{path} is not valid JSON ({exc}). The Minari dataset is damaged: download or "
            "create it again."
        ) from None
    if not isinstance(metadata, dict):
        raise DatasetError(f"{path} does not hold a JSON object; the Minari dataset is damaged.")
    return metadata


def _check_format(data_dir: Path, metadata: dict[str, Any]) -> None:
    data_format = metadata.get("data_format", "hdf5")
    if data_format != "hdf5":
        raise DatasetError(
            f"The Minari dataset at {data_dir} uses minari's {data_format!r} storage; "
            "dreamer-core reads only the 'hdf5' storage. Convert it with minari first, e.g. "
            "storage = minari.dataset.minari_storage.MinariStorage.new(NEW_DIR / 'data', "
            "observation_space=ds.observation_space, action_space=ds.action_space, "
            "data_format='hdf5'); storage.update_from_storage(ds.storage)."
        )
    if not (data_dir / MAIN_FILE).is_file():
        raise DatasetError(
            f"The Minari dataset at {data_dir} has no {MAIN_FILE} (its episodes). The download "
            "or the creation was interrupted: download or create the dataset again."
        )


def _source_spaces(data_dir: Path, metadata: dict[str, Any]) -> tuple[gym.Space, gym.Space]:
    """Observation and action spaces from metadata.json (or, failing that, its env_spec)."""
    spaces: dict[str, gym.Space | None] = {}
    for name in ("observation_space", "action_space"):
        desc = metadata.get(name)
        try:
            spaces[name] = None if desc is None else space_from_minari_json(desc)
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(
                f"The {name} in {data_dir / METADATA_FILE} cannot be read ({exc}). "
                "dreamer-core reads minari's space JSON for Box, Discrete, MultiDiscrete, "
                "MultiBinary, Dict, Tuple and Text; recreate the dataset with minari 0.5."
            ) from None
    obs_space, action_space = spaces["observation_space"], spaces["action_space"]
    if obs_space is None or action_space is None:
        env = _make_env_from_spec(metadata.get("env_spec"))
        if env is None:
            raise DatasetError(
                f"{data_dir / METADATA_FILE} records no observation/action space and no "
                "env_spec to rebuild them from (or the env cannot be made here). Install the "
                "env's package, or recreate the dataset with minari 0.5, which stores the spaces."
            )
        obs_space = obs_space or env.observation_space
        action_space = action_space or env.action_space
        env.close()
    return obs_space, action_space


def _make_env_from_spec(env_spec: Any) -> gym.Env | None:
    if not isinstance(env_spec, str):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gym.make(gym.envs.registration.EnvSpec.from_json(env_spec))
    except Exception:
        return None


def _source_env(metadata: dict[str, Any], dataset_id: str) -> tuple[str, dict[str, Any]]:
    """Env id and env config to record: our own block, else env_spec's id, else minari:<id>."""
    block = metadata.get(DREAMER_BLOCK)
    if isinstance(block, dict) and isinstance(block.get("env_id"), str):
        config = block.get("env_config")
        return block["env_id"], dict(config) if isinstance(config, dict) else {
            "id": block["env_id"]
        }
    env_id = f"minari:{dataset_id}"
    spec = metadata.get("env_spec")
    if isinstance(spec, str):
        try:
            env_id = str(json.loads(spec)["id"])
        except (ValueError, KeyError, TypeError):
            pass
    return env_id, {"id": env_id}


def _plan_observations(space: gym.Space, data_dir: Path) -> list[_ObsLeaf]:
    """Flatten the Minari observation space into dreamer-core keys (see the module docstring)."""
    leaves: list[_ObsLeaf] = []

    def walk(sub: gym.Space, path: tuple[str, ...], parts: tuple[str, ...]) -> None:
        if isinstance(sub, gym.spaces.Dict):
            for name, child in sub.spaces.items():
                walk(child, (*path, name), (*parts, name))
        elif isinstance(sub, gym.spaces.Tuple):
            for i, child in enumerate(sub.spaces):
                walk(child, (*path, f"_index_{i}"), (*parts, str(i)))
        else:
            key = ".".join(parts) if parts else ("image" if _is_image(sub) else "vector")
            leaves.append(_obs_leaf(sub, path, key, data_dir))

    walk(space, (), ())
    keys = [leaf.key for leaf in leaves]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise DatasetError(
            f"The observation space of the Minari dataset at {data_dir} flattens to the same key "
            f"{duplicates[0]!r} twice (nested keys are joined with '.'). dreamer-core cannot store "
            "it; rename the clashing Dict keys when creating the Minari dataset."
        )
    if not leaves:
        raise DatasetError(f"The observation space of the Minari dataset at {data_dir} is empty.")
    return leaves


def _is_image(space: gym.Space) -> bool:
    return schema.is_image_space(space) or (_minari_image(space) and len(space.shape) == 2)


def _minari_image(space: gym.Space) -> bool:
    """Minari's own image test: the leaves it JPEG-encodes when jpeg_encoding is on."""
    return (
        isinstance(space, gym.spaces.Box)
        and space.dtype == np.uint8
        and len(space.shape) in (2, 3)
        and space.shape[0] >= 32
        and space.shape[1] >= 32
        and bool(np.all(space.low == 0))
        and bool(np.all(space.high == 255))
    )


def _obs_leaf(space: gym.Space, path: tuple[str, ...], key: str, data_dir: Path) -> _ObsLeaf:
    unit = lambda n: gym.spaces.Box(0.0, 1.0, (n,), np.float32)  # noqa: E731
    if isinstance(space, gym.spaces.Box) and _is_image(space):
        if len(space.shape) == 2:  # grayscale: dreamer images are [H, W, C]
            out = gym.spaces.Box(
                space.low[..., None], space.high[..., None], (*space.shape, 1), np.uint8
            )
        else:
            out = gym.spaces.Box(space.low, space.high, space.shape, np.uint8)
        return _ObsLeaf(key, path, space, "image", out)
    if isinstance(space, gym.spaces.Box):
        with np.errstate(over="ignore"):  # float64 bounds beyond float32 become +-inf
            low = np.asarray(space.low, np.float64).ravel().astype(np.float32)
            high = np.asarray(space.high, np.float64).ravel().astype(np.float32)
        out = gym.spaces.Box(low, high, (low.size,), np.float32)
        return _ObsLeaf(key, path, space, "box", out)
    if isinstance(space, gym.spaces.Discrete):
        return _ObsLeaf(key, path, space, "discrete", unit(int(space.n)))
    if isinstance(space, gym.spaces.MultiDiscrete):
        return _ObsLeaf(key, path, space, "multidiscrete", unit(int(space.nvec.sum())))
    if isinstance(space, gym.spaces.MultiBinary):
        return _ObsLeaf(key, path, space, "multibinary", unit(int(np.prod(space.n))))
    where = f" (key {key!r})" if path else ""
    raise DatasetError(
        f"The Minari dataset at {data_dir} has a {type(space).__name__} observation{where}, "
        "which dreamer-core cannot store as an image or vector. Supported: Box, Discrete, "
        "MultiDiscrete, MultiBinary, and Dict/Tuple of these. Drop or encode that part of the "
        "observation when creating the Minari dataset."
    )


def _plan_actions(space: gym.Space, data_dir: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        return schema.action_column_spec(space)
    except TypeError:
        raise DatasetError(
            f"The Minari dataset at {data_dir} has the action space {space}, which dreamer-core "
            "cannot store. Supported: Discrete, Box, MultiBinary and MultiDiscrete; flatten the "
            "actions (e.g. gymnasium.spaces.flatten) when creating the Minari dataset."
        ) from None


def _episode_names(file: h5py.File) -> list[str]:
    numbered = [(int(m.group(1)), name) for name in file if (m := _EPISODE_RE.match(name))]
    return [name for _, name in sorted(numbered)]


# What a Minari episode of N steps holds (said whenever the counts do not fit).
_LAYOUT = (
    "Minari stores an episode of N steps as N+1 observations (the reset observation and one "
    "per step) and N actions, rewards, terminations and truncations"
)


def _read_episode(
    group: Any,
    leaves: list[_ObsLeaf],
    action_space: gym.Space,
    action_shape: tuple[int, ...],
    action_dtype: np.dtype,
    jpeg: bool,
) -> schema.Episode:
    """Read one ``episode_<i>`` group into rows; raise _CorruptEpisode on any inconsistency."""
    try:
        if not isinstance(group, h5py.Group):
            raise _CorruptEpisode("it is not an HDF5 group")
        rewards = _column(group, "rewards").reshape(-1)
        steps = int(rewards.shape[0])
        terminations = _column(group, "terminations").reshape(-1).astype(bool)
        truncations = _column(group, "truncations").reshape(-1).astype(bool)
        for name, value in (("terminations", terminations), ("truncations", truncations)):
            if value.shape[0] != steps:
                raise _CorruptEpisode(f"it has {value.shape[0]} {name} for {steps} rewards; {_LAYOUT}")
        if terminations[:-1].any():
            raise _CorruptEpisode("it terminates before its last step")
        actions = _column(group, "actions")
        count = int(actions.shape[0]) if actions.ndim else 1
        if count != steps and actions.size != steps * int(np.prod(action_shape, dtype=np.int64)):
            raise _CorruptEpisode(f"it has {count} actions for {steps} rewards; {_LAYOUT}")
        if actions.size != steps * int(np.prod(action_shape, dtype=np.int64)):
            raise _CorruptEpisode(
                f"its actions have shape {actions.shape}, which does not fit {steps} steps of "
                f"the action space {action_space} (shape {action_shape} per step)"
            )
        actions = actions.reshape((steps, *action_shape))
        bad = schema.action_bad_rows(actions, action_space)
        if bad.any():
            t = int(np.argmax(bad))
            raise _CorruptEpisode(
                f"its action at step {t} (actions[{t}]) is {np.asarray(actions[t]).tolist()}, "
                f"outside the action space {action_space}"
                + (f" ({int(bad.sum())} such steps in all)" if bad.sum() > 1 else "")
            )
        actions = actions.astype(action_dtype)
        obs = {leaf.key: _read_obs(group, leaf, steps + 1, jpeg) for leaf in leaves}
        return schema.Episode.from_transitions(
            obs, actions, rewards.astype(np.float32), bool(steps and terminations[-1])
        )
    except _CorruptEpisode:
        raise
    except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
        raise _CorruptEpisode(f"{type(exc).__name__}: {exc}") from None


def _check_episode(episode: schema.Episode, obs_space: gym.spaces.Dict, action_space: gym.Space) -> None:
    """What the writer would refuse, as a skippable _CorruptEpisode naming the Minari step."""
    try:
        episode.validate(obs_space, action_space)
    except ValueError as exc:
        raise _CorruptEpisode(str(exc)) from None
    bad = schema.first_nonfinite(episode)
    if bad is not None:
        column, row, value = bad
        if column.startswith("obs/"):
            where = f"observation {row} (observations[{row}], key {column[len('obs/'):]!r})"
        else:  # row t holds the reward and action of Minari step t - 1
            plural = {"reward": "rewards", "action": "actions"}[column]
            where = f"the {column} of step {row - 1} ({plural}[{row - 1}])"
        raise _CorruptEpisode(
            f"{where} is {value}; a world model trained on NaN or inf learns nothing useful"
        )


def _column(group: h5py.Group, name: str) -> np.ndarray:
    node = group.get(name)
    if not isinstance(node, h5py.Dataset):
        raise _CorruptEpisode(f"it has no '{name}' dataset")
    return np.asarray(node[()])


def _read_obs(group: h5py.Group, leaf: _ObsLeaf, rows: int, jpeg: bool) -> np.ndarray:
    where = "/".join(("observations", *leaf.path))
    node = group.get(where)
    if not isinstance(node, h5py.Dataset):
        raise _CorruptEpisode(f"it has no '{where}' dataset")
    if node.shape[:1] != (rows,):
        found = node.shape[0] if node.ndim else "no"
        raise _CorruptEpisode(
            f"it has {found} observations in '{where}' for {rows - 1} actions and rewards "
            f"(expected {rows}); {_LAYOUT}"
        )
    if leaf.kind == "image":
        return _read_frames(node, leaf, rows, jpeg)
    value = np.asarray(node[()])
    if leaf.kind in ("box", "multibinary"):
        value = value.reshape(rows, -1)
        width = int(leaf.out_space.shape[0])
        if value.shape[1] != width:
            raise _CorruptEpisode(
                f"its observations in '{where}' have {value.shape[1]} values each, but the "
                f"dataset's observation space {leaf.space} has {width} (the other episodes "
                "follow the space)"
            )
        return value.astype(np.float32)
    if leaf.kind == "discrete":
        return _one_hot(
            value.reshape(rows, 1), np.array([leaf.space.start]), np.array([leaf.space.n]), where
        )
    space = leaf.space  # MultiDiscrete
    return _one_hot(value.reshape(rows, -1), space.start.ravel(), space.nvec.ravel(), where)


def _one_hot(values: np.ndarray, start: np.ndarray, nvec: np.ndarray, where: str) -> np.ndarray:
    """``[rows, k]`` categorical values -> ``[rows, sum(nvec)]`` concatenated one-hots."""
    index = values.astype(np.int64) - start.astype(np.int64)
    if index.shape[1] != nvec.size:
        raise _CorruptEpisode(
            f"its observations in '{where}' have {index.shape[1]} values each, but the "
            f"dataset's observation space has {nvec.size}"
        )
    bad = np.any((index < 0) | (index >= nvec), axis=1)
    if bad.any():
        t = int(np.argmax(bad))
        raise _CorruptEpisode(
            f"its observation {t} in '{where}' is {values[t].tolist()}, outside its Discrete space"
        )
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.int64)
    out = np.zeros((values.shape[0], int(nvec.sum())), np.float32)
    np.put_along_axis(out, index + offsets, 1.0, axis=1)
    return out


def _read_frames(node: h5py.Dataset, leaf: _ObsLeaf, rows: int, jpeg: bool) -> np.ndarray:
    """Image frames as uint8 ``[rows, H, W, C]``: raw arrays, or JPEG bytes decoded with Pillow."""
    shape = leaf.out_space.shape
    vlen = h5py.check_vlen_dtype(node.dtype) is not None or node.dtype == object
    if not vlen and node.shape[1:] in (tuple(leaf.space.shape), shape):
        return np.asarray(node[()], dtype=np.uint8).reshape(rows, *shape)
    if not (vlen or (jpeg and node.ndim == 2 and node.dtype == np.uint8)):
        raise _CorruptEpisode(
            f"image frames of shape {node.shape} and dtype {node.dtype} fit neither the space "
            f"{leaf.space.shape} nor JPEG encoding"
        )
    frames = np.empty((rows, *shape), np.uint8)
    for t, encoded in enumerate(node[()]):
        try:
            image = Image.open(io.BytesIO(np.asarray(encoded, np.uint8).tobytes()))
            if shape[-1] == 3 and image.mode != "RGB":
                image = image.convert("RGB")
            elif shape[-1] == 1 and image.mode != "L":
                image = image.convert("L")
            frame = np.asarray(image, dtype=np.uint8)
        except Exception as exc:  # Pillow raises several types for bad data
            raise _CorruptEpisode(f"frame {t} cannot be decoded as an image ({exc})") from None
        if frame.size != frames[t].size:
            raise _CorruptEpisode(f"frame {t} decodes to shape {frame.shape}, expected {shape}")
        frames[t] = frame.reshape(shape)
    return frames


def _remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


# --- export -----------------------------------------------------------------------------------


def export_minari(
    src: Path | str, dst: Path | str, *, dataset_id: str | None = None
) -> dict[str, Any]:
    """Write a dreamer-core dataset as a Minari dataset (hdf5 storage) that minari 0.5.4 loads.

    The dataset is written into a hidden sibling of ``dst`` and renamed to ``dst`` when
    complete, so a failure never leaves a partial dataset there. Frames are stored raw
    (lossless, ``jpeg_encoding: false``). A single ``vector`` or ``image`` observation key is
    exported as a plain Box (the gym layout); several keys as a Dict, one subgroup per key.

    Load the result with ``minari.MinariDataset(dst / "data")``, or, when ``dst`` is
    ``$MINARI_DATASETS_PATH/<dataset_id>``, with ``minari.load_dataset(dataset_id)``.

    Args:
        src: dreamer-core dataset directory.
        dst: Minari dataset directory to create (must not exist, or be an empty directory).
        dataset_id: Minari id ``(namespace/)name-v<k>``. Default: ``dst`` relative to the
            Minari datasets root when it lies there, else ``dst``'s name (``-v0`` added).

    Returns:
        ``{"episodes", "steps", "src", "dst", "data_path", "dataset_id", "env_spec"}``
        (``env_spec`` says whether an env spec was recorded).

    Raises:
        DatasetError: ``src`` is not a readable dreamer-core dataset, ``dst`` exists and is
            not empty, the id is malformed, or the disk is full.
    """
    dataset = Dataset(src)
    dst = Path(dst).expanduser()
    _check_export_target(dst)
    dataset_id = _export_dataset_id(dst, dataset_id)

    obs_space = _export_obs_space(dataset.observation_space, dataset.path)
    action_space = _export_action_space(dataset.action_space)
    obs_json = json.dumps(space_to_minari_json(obs_space))
    action_json = json.dumps(space_to_minari_json(action_space))
    env_id = dataset.env_ids[-1]
    env_spec = _export_env_spec(env_id, dataset.env_config, obs_json, action_json)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        data_dir = tmp / DATA_DIR
        data_dir.mkdir(parents=True)
        episodes, steps = _write_main_file(
            data_dir / MAIN_FILE, dataset, single_key=not isinstance(obs_space, gym.spaces.Dict)
        )
        metadata: dict[str, Any] = {
            "dataset_id": dataset_id,
            "minari_version": MINARI_VERSION,
            "total_episodes": episodes,
            "total_steps": steps,
            "data_format": "hdf5",
            "jpeg_encoding": False,
            "observation_space": obs_json,
            "action_space": action_json,
            "algorithm_name": ", ".join(sorted({s.policy for s in dataset.shards})),
            "description": f"Exported by dreamer-core {__version__} from the dataset {dataset.path}.",
            DREAMER_BLOCK: {
                "env_id": env_id,
                "env_ids": dataset.env_ids,
                "env_config": dataset.env_config,
                "version": __version__,
            },
        }
        if env_spec is not None:
            metadata["env_spec"] = env_spec
        metadata["dataset_size"] = round(store.dir_size(tmp) / 1e6, 1)
        files.atomic_write_bytes(data_dir / METADATA_FILE, json.dumps(metadata).encode())
        files.fsync_dir(data_dir)
        try:
            os.replace(tmp, dst)  # an empty dst directory is replaced; a non-empty one was refused
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            raise DatasetError(
                f"{dst} was filled by something else while the export ran, so it was not "
                "replaced; nothing was written there. Choose a new destination."
            ) from None
        files.fsync_dir(dst.parent)
    except BaseException as exc:
        code = store.disk_errno(exc)
        problem = None if code is None else store.describe_disk_error(code, dst.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        if problem is not None:
            raise DatasetError(
                f"{problem}, so the Minari export to {dst} stopped; the partial copy was removed "
                f"and nothing was written at {dst} (the source dataset {dataset.path} is "
                f"untouched). {store.disk_error_fix(code)} for the destination, then export again."
            ) from None
        raise
    return {
        "episodes": episodes,
        "steps": steps,
        "src": str(dataset.path),
        "dst": str(dst),
        "data_path": str(dst / DATA_DIR),
        "dataset_id": dataset_id,
        "env_spec": env_spec is not None,
    }


def _check_export_target(dst: Path) -> None:
    if dst.is_file():
        raise DatasetError(
            f"The export destination {dst} is a file. Choose a new directory path for the Minari "
            "dataset (it is created, with a data/ folder inside)."
        )
    if dst.is_dir() and any(dst.iterdir()):
        what = "a Minari dataset" if (dst / DATA_DIR / METADATA_FILE).exists() else "not empty"
        raise DatasetError(
            f"The export destination {dst} already exists and is {what}; nothing was written. "
            "Choose a new directory, or delete it first (for a local Minari dataset: "
            "`minari delete ID`)."
        )


def _export_dataset_id(dst: Path, dataset_id: str | None) -> str:
    if dataset_id is not None:
        if not _DATASET_ID_RE.match(dataset_id):
            raise DatasetError(
                f"{dataset_id!r} is not a Minari dataset id. Ids have the form "
                "(namespace/)name-v<version>, e.g. cartpole/random-v0 or dreamer-pong-v1."
            )
        return dataset_id
    root = Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")
    try:
        relative = dst.resolve().relative_to(root.expanduser().resolve()).as_posix()
    except ValueError:
        relative = ""
    if relative and _DATASET_ID_RE.match(relative):
        return relative
    if _DATASET_ID_RE.match(dst.name):
        return dst.name
    name = re.sub(r"[^-\w]+", "-", dst.name).strip("-") or "dataset"
    return f"{name}-v0"


def _stored_space(space: gym.Space) -> gym.spaces.Box:
    """An observation key's space with the dtype it is stored in (uint8 images, float32 vectors)."""
    _, dtype = schema.obs_column_spec(space)
    assert isinstance(space, gym.spaces.Box)
    if space.dtype == dtype:
        return space
    with np.errstate(over="ignore"):
        low, high = space.low.astype(dtype), space.high.astype(dtype)
    return gym.spaces.Box(low, high, space.shape, dtype)


def _export_obs_space(space: gym.spaces.Dict, path: Path) -> gym.Space:
    keys = list(space.spaces)
    bad = [k for k in keys if "/" in k]
    if bad:
        raise DatasetError(
            f"The dataset {path} has the observation key {bad[0]!r}; Minari stores Dict keys as "
            "HDF5 group names, which cannot contain '/'. Rename the key before exporting."
        )
    if len(keys) == 1 and keys[0] in ("vector", "image"):
        return _stored_space(space.spaces[keys[0]])
    return gym.spaces.Dict({k: _stored_space(s) for k, s in space.spaces.items()})


def _export_action_space(space: gym.Space) -> gym.Space:
    if (
        isinstance(space, gym.spaces.Box) and space.dtype != np.float32
    ):  # actions are stored float32
        with np.errstate(over="ignore"):
            return gym.spaces.Box(
                space.low.astype(np.float32), space.high.astype(np.float32), space.shape, np.float32
            )
    return space


def _export_env_spec(
    env_id: str, env_config: dict[str, Any], obs_json: str, action_json: str
) -> str | None:
    """The gymnasium EnvSpec JSON of ``env_id`` when it reproduces the data's env, else None.

    Recorded only for ids in the gymnasium registry whose env has exactly the exported spaces
    and whose dreamer-core env options (``EnvConfig``: action repeat, time limit, extra kwargs,
    pixel observations; Atari's whole pipeline) do not make the data differ from
    ``gym.make(env_id)``.
    """
    if env_id not in gym.registry or env_id.startswith("ALE/"):
        return None
    try:
        changed = (
            int(env_config.get("action_repeat") or 0) > 1
            or int(env_config.get("time_limit") or 0) > 0
            or bool(env_config.get("kwargs"))
            or env_config.get("obs", "default") != "default"
        )
        if changed:
            return None
        spec = gym.spec(env_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = gym.make(spec)
        try:
            same = (
                json.dumps(space_to_minari_json(env.observation_space)) == obs_json
                and json.dumps(space_to_minari_json(env.action_space)) == action_json
            )
        finally:
            env.close()
        return spec.to_json() if same else None
    except Exception:  # options or an env that cannot be read or made here: record no spec
        return None


def _write_main_file(path: Path, dataset: Dataset, single_key: bool) -> tuple[int, int]:
    """Write every episode of ``dataset`` as ``episode_<i>`` groups; return (episodes, steps).

    On any error (a full disk) the file is closed without writing anything more
    (:func:`store.discard_h5_file`); the caller removes it."""
    episodes = steps = 0
    file = h5py.File(path, "w", track_order=True)
    try:
        for index, episode in enumerate(dataset.iter_episodes()):
            _write_episode(file.create_group(f"episode_{index}"), index, episode, single_key)
            episodes += 1
            steps += episode.steps
        file.flush()  # a full disk fails here, not in close
    except BaseException:
        store.discard_h5_file(file, path)
        raise
    file.close()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return episodes, steps


def _write_episode(
    group: h5py.Group, index: int, episode: schema.Episode, single_key: bool
) -> None:
    observations, actions, rewards, terminations, truncations = episode.to_transitions()
    group.attrs["id"] = index
    group.attrs["total_steps"] = episode.steps
    if single_key:
        (value,) = observations.values()
        _leaf_dataset(group, "observations", value)
    else:
        obs_group = group.create_group("observations")
        for key, value in observations.items():
            _leaf_dataset(obs_group, key, value)
    _leaf_dataset(group, "actions", actions)
    _leaf_dataset(group, "rewards", rewards.astype(np.float32, copy=False))
    _leaf_dataset(group, "terminations", terminations)
    _leaf_dataset(group, "truncations", truncations)
    group.create_group("infos")  # minari's EpisodeData expects a dict of infos


def _leaf_dataset(group: h5py.Group, name: str, value: np.ndarray) -> None:
    # Chunked and growable along time, like minari's own columns (so it can append to them).
    column = group.create_dataset(name, data=value, chunks=True, maxshape=(None, *value.shape[1:]))
    # Written out now, where a full disk raises: once the handle is dropped, HDF5 would write
    # the cached chunks during garbage collection, where an error is only printed.
    column.flush()


# --- minari's space JSON ----------------------------------------------------------------------


def space_to_minari_json(space: gym.Space) -> dict[str, Any]:
    """Describe a space the way minari serializes it into metadata.json (as a dict).

    ``json.dumps`` of the result is what minari stores under observation_space/action_space.
    Infinite bounds become the tokens ``Infinity``/``-Infinity``, which minari also writes and
    reads back with ``json.loads``.
    """
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "dtype": str(space.dtype),
            "shape": list(space.shape),
            "low": space.low.tolist(),
            "high": space.high.tolist(),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "dtype": "int64", "start": int(space.start), "n": int(space.n)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "dtype": str(space.dtype),
            "nvec": space.nvec.tolist(),
            "start": space.start.tolist(),
        }
    if isinstance(space, gym.spaces.MultiBinary):
        n = space.n
        return {
            "type": "MultiBinary",
            "n": int(n) if np.isscalar(n) else [int(v) for v in np.ravel(n)],
        }
    if isinstance(space, gym.spaces.Dict):
        return {
            "type": "Dict",
            "subspaces": {k: space_to_minari_json(s) for k, s in space.spaces.items()},
        }
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "subspaces": [space_to_minari_json(s) for s in space.spaces]}
    raise DatasetError(
        f"The space {space} has no Minari description here; export supports Box, Discrete, "
        "MultiDiscrete, MultiBinary, Dict and Tuple."
    )


def space_from_minari_json(desc: dict[str, Any] | str) -> gym.Space:
    """Inverse of :func:`space_to_minari_json` (accepts the dict or its JSON string).

    Raises:
        ValueError: an unknown space type; KeyError: a missing field.
    """
    if isinstance(desc, str):
        desc = json.loads(desc)
    kind = desc["type"]
    if kind == "Box":
        dtype = np.dtype(desc["dtype"])
        shape = tuple(desc["shape"])
        low = np.broadcast_to(np.asarray(desc["low"], dtype=dtype), shape).copy()
        high = np.broadcast_to(np.asarray(desc["high"], dtype=dtype), shape).copy()
        return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(desc["n"]), start=int(desc.get("start", 0)))
    if kind == "MultiDiscrete":
        nvec = np.asarray(desc["nvec"], dtype=np.int64)
        start = desc.get("start")
        return gym.spaces.MultiDiscrete(nvec, dtype=desc.get("dtype", "int64"), start=start)
    if kind == "MultiBinary":
        return gym.spaces.MultiBinary(desc["n"])
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_minari_json(s) for k, s in desc["subspaces"].items()})
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_minari_json(s) for s in desc["subspaces"]])
    if kind == "Text":
        return gym.spaces.Text(
            max_length=int(desc["max_length"]),
            min_length=int(desc.get("min_length", 1)),
            charset=desc["charset"],
        )
    raise ValueError(f"unknown space type {kind!r}")
