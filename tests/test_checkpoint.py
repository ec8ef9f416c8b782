"""Checkpoints (checkpoint.py): typed payloads round trip through the file format; the wrong
kind, an unknown format, a damaged or foreign file and a missing one are refused with messages
that say what to do; format-1 (dreamer-core 0.1.0) artifacts are converted and format-1 resume
states refused; format-1/2 world models and resume states whose Box actions format 3 normalises
differently are refused, the others load; spaces are checked with a message naming both sides."""

from __future__ import annotations

import dataclasses
import re

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamer_core import __version__, checkpoint
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic
from dreamer_core.data import schema
from dreamer_core.errors import DreamerError
from dreamer_core.stages.train_behavior import TrainBehaviorConfig
from dreamer_core.stages.train_world_model import TrainWorldModelConfig
from dreamer_core.world_model import WorldModel
from tests.common import ACTION_SPACES, OBS_SPACES, tiny_behavior_config, tiny_world_model

SPACES = checkpoint.spaces_json(OBS_SPACES["dict"], ACTION_SPACES["box"])


def payloads() -> list[checkpoint.Payload]:
    """One payload of each kind, every field set to something other than its default."""
    weights = {"layer.weight": torch.arange(6.0).reshape(2, 3), "layer.bias": torch.tensor([1.0, -1.0])}
    return [
        checkpoint.WorldModelArtifact(**SPACES, stage_config={"seed": 1, "model": {"norm": "layer"}},
                                      model_config={"norm": "layer"}, weights=weights, update=12,
                                      calibration={"weights": {"reward": 2.0}}, datasets=["data/a", "data/b"],
                                      batch_size=8, seq_len=32),
        checkpoint.BehaviorArtifact(**SPACES, stage_config={"seed": 2}, behavior_config={"horizon": 15},
                                    weights=weights, update=7, world_model_update=12, env_config={"id": "Env-v0"},
                                    env_steps=1000),
        checkpoint.TrainState(**SPACES, stage_config={"seed": 3}, stage="train-world-model",
                              modules={"model": weights}, optimizers={"model": {"state": {}, "param_groups": []}},
                              counters={"update": 12, "last_eval": {"return": 1.5}},
                              rng={"torch": torch.get_rng_state(), "numpy": np.random.default_rng(0).bit_generator.state}),
    ]


def equal(a, b) -> bool:
    """Deep equality of nested dicts, lists, tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("payload", payloads(), ids=lambda p: p.kind)
def test_typed_payloads_round_trip(tmp_path, payload):
    path = tmp_path / "deep" / "folder" / "file.pt"  # folders are created
    checkpoint.save(path, payload)
    loaded = checkpoint.load(path, type(payload))
    assert type(loaded) is type(payload)
    for f in dataclasses.fields(payload):
        assert equal(getattr(loaded, f.name), getattr(payload, f.name)), f.name
    blob = torch.load(path, weights_only=False)
    assert blob["format_version"] == checkpoint.FORMAT_VERSION == 3 and blob["kind"] == payload.kind
    assert blob["dreamer_core_version"] == __version__
    assert blob["dataset_schema_version"] == schema.SCHEMA_VERSION
    obs_space, action_space = loaded.spaces()
    assert obs_space == OBS_SPACES["dict"] and action_space == ACTION_SPACES["box"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.pt"]  # no temporary file left


def test_saving_again_replaces_the_file(tmp_path):
    path = tmp_path / "world_model.pt"
    first, _, _ = payloads()
    checkpoint.save(path, first)
    checkpoint.save(path, dataclasses.replace(first, update=13))
    assert checkpoint.load(path, checkpoint.WorldModelArtifact).update == 13
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world_model.pt"]


@pytest.mark.parametrize("written, wanted", [(0, 1), (1, 0), (0, 2), (2, 1)])
def test_the_wrong_kind_is_refused(tmp_path, written, wanted):
    payload = payloads()[written]
    cls = [checkpoint.WorldModelArtifact, checkpoint.BehaviorArtifact, checkpoint.TrainState][wanted]
    path = tmp_path / "file.pt"
    checkpoint.save(path, payload)
    with pytest.raises(DreamerError, match=re.escape(f"{path} holds a {payload.kind} checkpoint, not a {cls.kind} one. "
                                                     "Pass the right file (world_model.pt, behavior.pt")):
        checkpoint.load(path, cls)


def test_loading_a_world_model_file_as_a_behavior_is_refused(tmp_path):
    wm = tiny_world_model()
    wm.save(tmp_path / "world_model.pt")
    with pytest.raises(DreamerError, match="holds a world_model checkpoint, not a behavior one"):
        ActorCritic.load(tmp_path / "world_model.pt", wm)


@pytest.mark.parametrize("version", [4, 17, 1])
def test_an_unknown_format_version_is_refused_naming_it(tmp_path, version):
    path = tmp_path / "world_model.pt"
    torch.save({"format_version": version, "kind": "world_model", "dreamer_core_version": "9.9.9", **SPACES}, path)
    with pytest.raises(DreamerError, match=rf"format {version}, but this version reads formats 1 to 3\. "
                                           r"Load it with the dreamer-core version that wrote it \(9\.9\.9\)"):
        checkpoint.load(path, checkpoint.WorldModelArtifact)


def test_damaged_foreign_and_missing_files_are_refused(tmp_path):
    path = tmp_path / "world_model.pt"
    checkpoint.save(path, payloads()[0])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DreamerError, match=r"cannot be read \(.*\): it is damaged .* no older one to fall back to"):
        checkpoint.load(path, checkpoint.WorldModelArtifact)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DreamerError, match="it is damaged"):
        checkpoint.load(path, checkpoint.WorldModelArtifact)
    torch.save([1, 2, 3], path)
    with pytest.raises(DreamerError, match=r"is not a dreamer-core checkpoint \(it holds a list\)"):
        checkpoint.load(path, checkpoint.WorldModelArtifact)
    with pytest.raises(DreamerError, match=r"No checkpoint at .*missing\.pt\. Check the run directory"):
        checkpoint.load(tmp_path / "missing.pt", checkpoint.WorldModelArtifact)


# --- format 1 (dreamer-core 0.1.0) -------------------------------------------------------------------


def format_1(config: dict, obs_space: gym.Space, action_space: gym.Space, **payload) -> dict:
    """A checkpoint as 0.1.0 wrote it: an untyped dict beside the config and the spaces."""
    return {"checkpoint_version": 1, "dreamer_core_version": "0.1.0", "dataset_schema_version": 1,
            "config": config, "observation_space": schema.space_to_json(obs_space),
            "action_space": schema.space_to_json(action_space), **payload}


def test_a_format_1_behavior_artifact_is_converted(tmp_path):
    wm = tiny_world_model("vector", "discrete").requires_grad_(False)
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    agent.update_slow_critic()
    stage = config_lib.to_dict(TrainBehaviorConfig(run="runs/old", behavior=agent.cfg, batch_size=4, seq_len=16))
    path = tmp_path / "behavior.pt"
    torch.save(format_1(stage, wm.observation_space, wm.action_space, agent=agent.state_dict(), update=6,
                        world_model_update=40, env_config={"id": "dreamer/DummyDiscrete-v0"}), path)
    artifact = checkpoint.load(path, checkpoint.BehaviorArtifact)
    assert isinstance(artifact, checkpoint.BehaviorArtifact) and artifact.stage_config == stage
    assert artifact.behavior_config == stage["behavior"]
    assert (artifact.update, artifact.world_model_update, artifact.env_steps) == (6, 40, None)
    assert artifact.env_config == {"id": "dreamer/DummyDiscrete-v0"}
    assert artifact.spaces() == (wm.observation_space, wm.action_space)
    loaded, _ = ActorCritic.load(path, wm)  # and the agent rebuilds from it
    assert loaded.cfg == agent.cfg
    assert all(torch.equal(v, agent.state_dict()[k]) for k, v in loaded.state_dict().items())


RESUME_MESSAGE = (r"is a format-1 checkpoint \(dreamer-core 0\.1\.0\) that this version cannot use as a {kind}: .*"
                  r"a run can only be resumed by the version that started it\. Finish the run with dreamer-core "
                  r"0\.1\.0, or start a new run")


def test_format_1_resume_states_are_refused_with_what_to_do(tmp_path):
    wm = tiny_world_model()
    stage = config_lib.to_dict(TrainWorldModelConfig(model=wm.cfg))
    path = tmp_path / "latest.pt"
    # stage 02's resume state
    torch.save(format_1(stage, wm.observation_space, wm.action_space, model=wm.state_dict(),
                        optimizer={"state": {}, "param_groups": []}, update=3, sampler={}, torch_rng=torch.get_rng_state(),
                        calibration=None), path)
    with pytest.raises(DreamerError, match=RESUME_MESSAGE.format(kind="train_state")):
        checkpoint.load(path, checkpoint.TrainState)
    # stage 03's (and the online loop's) resume states hold the agent and its optimizers: not an artifact
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    torch.save(format_1({"behavior": config_lib.to_dict(agent.cfg)}, wm.observation_space, wm.action_space,
                        agent=agent.state_dict(), actor_optim={}, critic_optim={}, update=3), path)
    with pytest.raises(DreamerError, match=RESUME_MESSAGE.format(kind="behavior")):
        checkpoint.load(path, checkpoint.BehaviorArtifact)
    with pytest.raises(DreamerError, match=RESUME_MESSAGE.format(kind="train_state")):
        checkpoint.load(path, checkpoint.TrainState)


def test_a_format_1_artifact_of_the_other_kind_is_refused(tmp_path):
    wm = tiny_world_model()
    path = tmp_path / "world_model.pt"
    torch.save(format_1(config_lib.to_dict(TrainWorldModelConfig(model=wm.cfg)), wm.observation_space,
                        wm.action_space, model=wm.state_dict(), update=3, calibration=None), path)
    assert checkpoint.load(path, checkpoint.WorldModelArtifact).update == 3
    with pytest.raises(DreamerError, match="cannot use as a behavior"):
        checkpoint.load(path, checkpoint.BehaviorArtifact)


# --- formats 1 and 2: Box actions in env units --------------------------------------------------------

PENDULUM = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
BOX_MESSAGE = (r"{path} holds {what} written by dreamer-core {version} \(checkpoint format {format}\), which fed "
               r"Box actions to the world model in the env's units\. Since dreamer-core 0\.3\.0 \(format 3\) the "
               r"world model reads them normalised to \[-1, 1\] by the bounds of Box\(-2\.0, 2\.0, \(1,\), "
               r"float32\), so {model} would misread every action\. ")


def as_format_2(path) -> None:
    """Rewrite a checkpoint as dreamer-core 0.2.0 wrote it (format 2 had format 3's fields)."""
    blob = torch.load(path, weights_only=False)
    torch.save({**blob, "format_version": 2, "dreamer_core_version": "0.2.0"}, path)


def test_a_format_2_world_model_with_a_pendulum_box_is_refused_with_what_to_do(tmp_path):
    wm = tiny_world_model("vector", PENDULUM)
    path = tmp_path / "world_model.pt"
    wm.save(path)
    assert WorldModel.load(path)[0].action_space == PENDULUM  # format 3: loads
    as_format_2(path)
    with pytest.raises(DreamerError) as err:
        WorldModel.load(path)
    message = str(err.value)
    assert re.match(BOX_MESSAGE.format(path=re.escape(str(path)), what="a world model", version=r"0\.2\.0",
                                       format=2, model="this world model"), message), message
    assert message.endswith("Retrain the world model with this version (stage 02 on the same data, then stage 03 "
                            "on the new world model), or load this one with dreamer-core 0.2.x.")
    assert "\n" not in message


@pytest.mark.parametrize("action", ["discrete", "multibinary", "box",
                                    gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)],
                         ids=["discrete", "multibinary", "box-minus-one-to-one", "box-unbounded"])
def test_a_format_2_world_model_whose_actions_read_the_same_still_loads(tmp_path, action):
    wm = tiny_world_model("vector", action)
    path = tmp_path / "world_model.pt"
    wm.save(path, update=5)
    as_format_2(path)
    loaded, artifact = WorldModel.load(path)
    assert artifact.update == 5 and loaded.action_space == wm.action_space
    assert all(torch.equal(v, wm.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_format_2_resume_states_with_a_pendulum_box_are_refused_behavior_artifacts_load(tmp_path):
    wm = tiny_world_model("vector", PENDULUM)
    weights = {"layer.weight": torch.ones(2)}
    spaces = checkpoint.spaces_json(wm.observation_space, PENDULUM)
    path = tmp_path / "latest.pt"
    checkpoint.save(path, checkpoint.TrainState(**spaces, stage_config={}, stage="train-world-model",
                                                modules={"model": weights}))
    as_format_2(path)
    with pytest.raises(DreamerError) as err:
        checkpoint.load(path, checkpoint.TrainState)
    message = str(err.value)
    assert re.match(BOX_MESSAGE.format(path=re.escape(str(path)), what="a resume state", version=r"0\.2\.0",
                                       format=2, model="the run's world model"), message), message
    assert message.endswith("Finish the run with dreamer-core 0.2.x, or start a new run with this version (it "
                            "trains the world model again).")
    # the actor always sampled in [-1, 1] and was scaled to the bounds for the env: unchanged
    checkpoint.save(path, checkpoint.BehaviorArtifact(**spaces, stage_config={}, weights=weights, update=2))
    as_format_2(path)
    assert checkpoint.load(path, checkpoint.BehaviorArtifact).update == 2
    # a format-2 resume state of a discrete space resumes
    checkpoint.save(path, checkpoint.TrainState(**checkpoint.spaces_json(wm.observation_space, ACTION_SPACES["discrete"]),
                                                stage_config={}, stage="train-world-model", counters={"update": 4}))
    as_format_2(path)
    assert checkpoint.load(path, checkpoint.TrainState).counters == {"update": 4}


def test_a_format_1_world_model_with_a_pendulum_box_is_refused(tmp_path):
    wm = tiny_world_model("vector", PENDULUM)
    path = tmp_path / "world_model.pt"
    torch.save(format_1(config_lib.to_dict(TrainWorldModelConfig(model=wm.cfg)), wm.observation_space,
                        wm.action_space, model=wm.state_dict(), update=3, calibration=None), path)
    with pytest.raises(DreamerError) as err:
        checkpoint.load(path, checkpoint.WorldModelArtifact)
    assert re.match(BOX_MESSAGE.format(path=re.escape(str(path)), what="a world model", version=r"0\.1\.0",
                                       format=1, model="this world model"), str(err.value)), str(err.value)
    assert str(err.value).endswith("or load this one with dreamer-core 0.1.x.")


@pytest.mark.parametrize("space, changed", [
    (gym.spaces.Discrete(3), False),
    (gym.spaces.MultiBinary(2), False),
    (gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32), False),
    (gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), False),
    (gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, np.inf], np.float32)), False),
    (gym.spaces.Box(np.array([-1.0, 3.0], np.float32), np.array([1.0, 3.0], np.float32)), False),
    (gym.spaces.Box(-2.0, 2.0, (1,), np.float32), True),
    (gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 5.0], np.float32)), True),
    (gym.spaces.Box(0.0, 1.0, (1,), np.float32), True),
])
def test_box_encoding_changed_only_where_a_normalised_dimension_is_not_minus_one_to_one(space, changed):
    assert checkpoint.box_encoding_changed(space) is changed


# --- spaces ------------------------------------------------------------------------------------------


def test_check_spaces_names_what_does_not_fit():
    artifact = payloads()[0]
    artifact.check_spaces(OBS_SPACES["dict"], ACTION_SPACES["box"], "The dataset data/a", "runs/x/world_model.pt")
    with pytest.raises(DreamerError) as err:
        artifact.check_spaces(OBS_SPACES["vector"], ACTION_SPACES["discrete"], "The dataset data/b",
                              "runs/x/world_model.pt")
    message = str(err.value)
    assert message.startswith("The dataset data/b does not fit the checkpoint runs/x/world_model.pt: it has "
                              f"observation space {OBS_SPACES['vector']} (expected {OBS_SPACES['dict']}) and "
                              f"action space {ACTION_SPACES['discrete']} (expected {ACTION_SPACES['box']}).")
    assert "Use data collected from the same env with the same options" in message
    with pytest.raises(DreamerError, match=r"it has action space Box\(-1\.0, 1\.0, \(3,\), float32\) \(expected"):
        artifact.check_spaces(OBS_SPACES["dict"], gym.spaces.Box(-1.0, 1.0, (3,), np.float32), "The env", "p")
