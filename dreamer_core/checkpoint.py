"""Checkpoints: atomic save and checked load of a payload with its config and spaces.

Every checkpoint carries the resolved config of the run, the dataset's observation and
action spaces (as data/schema.py JSON) and version numbers, so a later stage rebuilds its
models from the checkpoint alone and refuses data whose spaces do not fit.

Writes are atomic (temporary file in the same folder, fsync, rename): a crash leaves the
previous checkpoint, never a truncated one.

Imports: torch, data.schema, data.store, errors.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch

from dreamer_core import __version__, files
from dreamer_core.data import schema
from dreamer_core.errors import DreamerError

CHECKPOINT_VERSION = 1


def save(path: Path | str, payload: dict[str, Any], config: dict[str, Any],
         observation_space: gym.spaces.Dict, action_space: gym.Space) -> None:
    """Atomically write ``payload`` (state dicts, counters, RNG states) with its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "dreamer_core_version": __version__,
        "dataset_schema_version": schema.SCHEMA_VERSION,
        "config": config,
        "observation_space": schema.space_to_json(observation_space),
        "action_space": schema.space_to_json(action_space),
        **payload,
    }
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    files.atomic_write_bytes(path, buffer.getvalue())


def load(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; DreamerError when missing or unreadable."""
    path = Path(path)
    if not path.exists():
        raise DreamerError(f"No checkpoint at {path}. Check the run directory, or train one first.")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise DreamerError(
            f"The checkpoint {path} cannot be read ({type(exc).__name__}: {exc}). It is damaged; "
            "use an earlier checkpoint from the run's checkpoints/ folder or train again."
        ) from None
    if not isinstance(blob, dict) or blob.get("checkpoint_version") != CHECKPOINT_VERSION:
        raise DreamerError(
            f"{path} is not a dreamer-core checkpoint of version {CHECKPOINT_VERSION} (found "
            f"{blob.get('checkpoint_version') if isinstance(blob, dict) else type(blob).__name__}). "
            "Load it with the dreamer-core version that wrote it."
        )
    return blob


def spaces(blob: dict[str, Any]) -> tuple[gym.spaces.Dict, gym.Space]:
    """The observation and action spaces a checkpoint was trained on."""
    return schema.space_from_json(blob["observation_space"]), schema.space_from_json(blob["action_space"])


def check_spaces(blob: dict[str, Any], observation_space: gym.Space, action_space: gym.Space,
                 what: str, checkpoint_path: Path | str) -> None:
    """Raise a clear DreamerError when data (or an env) does not fit the checkpoint's spaces."""
    problems = schema.space_mismatches(*spaces(blob), observation_space, action_space)
    if problems:
        raise DreamerError(
            f"{what} does not fit the checkpoint {checkpoint_path}: it has {' and '.join(problems)}. "
            "Use data collected from the same env with the same options (e.g. --pixels, --size), "
            "or train a new run on this data."
        )
