"""Checkpoints: typed, versioned payloads written atomically and loaded with checks.

Three kinds of file, each a dataclass below, stored as a plain dict (``torch.save``) with
``format_version`` and ``kind`` beside the fields:

- :class:`WorldModelArtifact` (``RUN/world_model.pt``): the world model's own config, the
  dataset's spaces and the weights. ``WorldModel.load`` rebuilds the model from it alone.
- :class:`BehaviorArtifact` (``RUN/behavior.pt``): the same for the actor-critic, plus the
  env the data came from (stage 04 and ``--policy RUN`` play it).
- :class:`TrainState` (``RUN/checkpoints/*latest.pt``): everything a stage needs to resume:
  its resolved config, module weights, optimizer states, counters and RNG states.

Every payload carries the observation and action spaces (as data/schema.py JSON) and the
resolved config of the stage that wrote it (``stage_config``), so a later stage refuses
data whose spaces do not fit, and a run can be traced back to its command.

Format 1 (dreamer-core 0.1.0: untyped dicts) artifacts still load: they are converted on
reading. Format-1 resume checkpoints are refused with a message that says what to do.
Format 2 (0.2.x) files have format 3's fields and load as they are, with one exception:
before format 3 the world model read Box actions in the env's units, since then normalised
to [-1, 1] by the bounds (nets/actions.py). World models and resume states of formats 1 and
2 whose Box action space has a normalised dimension with bounds other than exactly [-1, 1]
would misread every action, so they are refused with a message that says what to do
(behavior artifacts still load: the actor always worked in [-1, 1]).

Writes are atomic (temporary file in the same folder, fsync, rename): a crash leaves the
previous checkpoint, never a truncated one.

Imports: torch, gymnasium, files, data.schema, errors (a bottom-layer module: the models
and the stages build on it).
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gymnasium as gym
import numpy as np
import torch

from dreamer_core import __version__, files
from dreamer_core.data import schema
from dreamer_core.errors import DreamerError

FORMAT_VERSION = 3
OLD_RELEASES = {1: "0.1.x", 2: "0.2.x"}  # older formats -> the dreamer-core releases that wrote them
P = TypeVar("P", bound="Payload")


@dataclass
class Payload:
    """Fields every checkpoint has: the spaces (JSON) and the writing stage's config."""

    observation_space: dict[str, Any]
    action_space: dict[str, Any]
    stage_config: dict[str, Any]

    kind = "payload"

    def spaces(self) -> tuple[gym.spaces.Dict, gym.Space]:
        """The observation and action spaces the checkpoint was trained on."""
        return schema.space_from_json(self.observation_space), schema.space_from_json(self.action_space)

    def check_spaces(self, observation_space: gym.Space, action_space: gym.Space, what: str,
                     path: Path | str) -> None:
        """Raise a clear DreamerError when data (or an env) does not fit these spaces."""
        problems = schema.space_mismatches(*self.spaces(), observation_space, action_space)
        if problems:
            raise DreamerError(
                f"{what} does not fit the checkpoint {path}: it has {' and '.join(problems)}. "
                "Use data collected from the same env with the same options (e.g. --pixels, --size), "
                "or train a new run on this data."
            )


@dataclass
class WorldModelArtifact(Payload):
    """A trained world model (``world_model.pt``)."""

    model_config: dict[str, Any] = field(default_factory=dict)  # WorldModelConfig as a dict
    weights: dict[str, Any] = field(default_factory=dict)
    update: int = 0
    calibration: dict[str, Any] | None = None  # measured magnitudes and chosen loss weights
    datasets: list[str] = field(default_factory=list)  # what it was trained on
    batch_size: int = 16  # the replay windows it was trained with (stage 03's defaults)
    seq_len: int = 64

    kind = "world_model"


@dataclass
class BehaviorArtifact(Payload):
    """A trained actor-critic (``behavior.pt``)."""

    behavior_config: dict[str, Any] = field(default_factory=dict)  # BehaviorConfig as a dict
    weights: dict[str, Any] = field(default_factory=dict)
    update: int = 0
    world_model_update: int = 0  # the world model it was trained against
    env_config: dict[str, Any] = field(default_factory=dict)  # the env the data came from
    env_steps: int | None = None  # online runs: env steps when it was written

    kind = "behavior"


@dataclass
class TrainState(Payload):
    """What a stage needs to resume exactly (``checkpoints/*latest.pt``).

    ``modules``/``optimizers``: state dicts by name; ``counters``: ints, floats and small
    records (updates, env steps, last evaluation...); ``rng``: RNG and sampler states.
    """

    stage: str = ""
    run_id: str = ""  # the identity of the run directory it belongs to (RUN/run.json)
    modules: dict[str, Any] = field(default_factory=dict)
    optimizers: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)

    kind = "train_state"


KINDS: dict[str, type[Payload]] = {c.kind: c for c in (WorldModelArtifact, BehaviorArtifact, TrainState)}


def spaces_json(observation_space: gym.Space, action_space: gym.Space) -> dict[str, Any]:
    """The ``observation_space`` / ``action_space`` fields of a payload."""
    return {"observation_space": schema.space_to_json(observation_space),
            "action_space": schema.space_to_json(action_space)}


def save(path: Path | str, payload: Payload) -> None:
    """Atomically write ``payload`` with its kind and the format and package versions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format_version": FORMAT_VERSION,
        "kind": payload.kind,
        "dreamer_core_version": __version__,
        "dataset_schema_version": schema.SCHEMA_VERSION,
        **{f.name: getattr(payload, f.name) for f in dataclasses.fields(payload)},
    }
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    files.atomic_write_bytes(path, buffer.getvalue())


def load(path: Path | str, cls: type[P], map_location: str | torch.device = "cpu") -> P:
    """Read a checkpoint of type ``cls``; DreamerError when missing, unreadable or of another kind."""
    path = Path(path)
    if not path.exists():
        raise DreamerError(f"No checkpoint at {path}. Check the run directory, or train one first.")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise DreamerError(
            f"The checkpoint {path} cannot be read ({type(exc).__name__}: {exc}): it is damaged (a disk error "
            "or an interrupted copy). A run keeps one checkpoint of each kind, so there is no older one to "
            "fall back to: restore the file from a backup, or train again into a new --out."
        ) from None
    if not isinstance(blob, dict):
        raise DreamerError(f"{path} is not a dreamer-core checkpoint (it holds a {type(blob).__name__}).")
    version = 1 if blob.get("checkpoint_version") == 1 else blob.get("format_version")
    written_by = blob.get("dreamer_core_version", OLD_RELEASES.get(version, "unknown"))
    if blob.get("checkpoint_version") == 1:
        blob = _from_format_1(blob, cls, path)
    elif version not in (2, FORMAT_VERSION):
        found = blob.get("format_version", blob.get("checkpoint_version"))
        raise DreamerError(
            f"{path} is a dreamer-core checkpoint of format {found}, but this version reads formats 1 to "
            f"{FORMAT_VERSION}. Load it with the dreamer-core version that wrote it "
            f"({written_by})."
        )
    if blob.get("kind") != cls.kind:
        raise DreamerError(
            f"{path} holds a {blob.get('kind')} checkpoint, not a {cls.kind} one. Pass the right file "
            "(world_model.pt, behavior.pt or checkpoints/*latest.pt of a run)."
        )
    if version != FORMAT_VERSION and cls is not BehaviorArtifact:
        _refuse_raw_box_actions(blob, cls, path, version, written_by)
    return cls(**{f.name: blob[f.name] for f in dataclasses.fields(cls) if f.name in blob})


def box_encoding_changed(action_space: gym.Space) -> bool:
    """True when format 3 feeds this action space to the world model differently from formats
    1 and 2: a Box with a dimension that is normalised (both bounds finite, ``high > low``;
    ``ActionSpace.scaled``) and whose bounds are not exactly [-1, 1]. Other spaces, and Box
    dimensions that pass unchanged, are encoded as before."""
    if not isinstance(action_space, gym.spaces.Box):
        return False
    low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
    scaled = np.isfinite(low) & np.isfinite(high) & (high > low)
    return bool((scaled & ((low != -1) | (high != 1))).any())


def _refuse_raw_box_actions(blob: dict[str, Any], cls: type[Payload], path: Path, version: int,
                            written_by: str) -> None:
    """Refuse a format-1/2 world model or resume state whose Box actions format 3 reads differently."""
    action_space = schema.space_from_json(blob["action_space"])
    if not box_encoding_changed(action_space):
        return
    release = OLD_RELEASES[version]
    if cls is WorldModelArtifact:
        what, model = "a world model", "this world model"
        todo = ("Retrain the world model with this version (stage 02 on the same data, then stage 03 on the "
                f"new world model), or load this one with dreamer-core {release}.")
    else:
        what, model = "a resume state", "the run's world model"
        todo = (f"Finish the run with dreamer-core {release}, or start a new run with this version (it trains "
                "the world model again).")
    raise DreamerError(
        f"{path} holds {what} written by dreamer-core {written_by} (checkpoint "
        f"format {version}), which fed Box actions to the world model in the env's units. Since dreamer-core "
        f"0.3.0 (format {FORMAT_VERSION}) the world model reads them normalised to [-1, 1] by the bounds of "
        f"{action_space}, so {model} would misread every action. {todo}"
    )


def _from_format_1(blob: dict[str, Any], cls: type[Payload], path: Path) -> dict[str, Any]:
    """Convert a format-1 artifact (dreamer-core 0.1.0) to the format-2 (= format-3) fields;
    resume states of format 1 are refused (their layouts were the stages' own)."""
    config = blob["config"]
    common = {"observation_space": blob["observation_space"], "action_space": blob["action_space"],
              "stage_config": config}
    if cls is WorldModelArtifact and "model" in blob and "agent" not in blob:
        return {"kind": cls.kind, **common, "model_config": config["model"], "weights": blob["model"],
                "update": int(blob.get("update", 0)), "calibration": blob.get("calibration"),
                "datasets": list(config.get("datasets") or []), "batch_size": int(config["batch_size"]),
                "seq_len": int(config["seq_len"])}
    if cls is BehaviorArtifact and "agent" in blob and "actor_optim" not in blob:
        return {"kind": cls.kind, **common, "behavior_config": config["behavior"], "weights": blob["agent"],
                "update": int(blob.get("update", 0)), "world_model_update": int(blob.get("world_model_update", 0)),
                "env_config": blob.get("env_config") or {}, "env_steps": blob.get("env_steps")}
    raise DreamerError(
        f"{path} is a format-1 checkpoint (dreamer-core 0.1.0) that this version cannot use as a "
        f"{cls.kind}: format-1 world_model.pt and behavior.pt still load, but a run can only be resumed "
        "by the version that started it. Finish the run with dreamer-core 0.1.0, or start a new run "
        "(stage 03 and stage 04 accept the old run's world_model.pt and behavior.pt)."
    )
