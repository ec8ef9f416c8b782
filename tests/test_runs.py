"""runs.py: loading what a run directory holds, and the errors when something is missing or
does not fit."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamer_core import runs
from dreamer_core.behavior import ActorCritic
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.errors import DreamerError
from dreamer_core.policies import AgentPolicy, RandomPolicy, SmoothRandomPolicy
from tests.common import (
    ACTION_SPACES,
    OBS_SPACES,
    make_episode,
    tiny_behavior_config,
    tiny_world_model,
)


def small_world_model():
    return tiny_world_model("vector", "discrete", seed=None)


def small_behavior():
    return tiny_behavior_config()


def write_run(run, with_agent=True, datasets=()):
    torch.manual_seed(0)
    wm = small_world_model()
    run.mkdir(parents=True, exist_ok=True)
    wm.save(run / runs.WORLD_MODEL, {"note": "test"}, update=7, datasets=list(datasets), batch_size=2, seq_len=4)
    agent = None
    if with_agent:
        agent = ActorCritic.for_world_model(small_behavior(), wm)
        agent.save(run / runs.BEHAVIOR, wm, {}, update=3, world_model_update=7, env_config={"id": "Echo-v0"})
    return wm, agent


def write_dataset(path, obs_space=OBS_SPACES["vector"], action_space=ACTION_SPACES["discrete"]):
    with DatasetWriter(path, "Echo-v0", {"id": "Echo-v0"}, obs_space, action_space) as writer:
        for i in range(3):
            writer.add_episode(make_episode(obs_space, action_space, 10, terminated=True, episode_id=i))
    return path


def test_load_world_model_and_agent_rebuild_the_saved_models(tmp_path):
    run = tmp_path / "run"
    wm, agent = write_run(run)
    loaded, artifact = runs.load_world_model(run)
    assert artifact.update == 7 and artifact.stage_config == {"note": "test"} and not loaded.training
    for (name, a), b in zip(wm.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    world_model, loaded_agent, behavior = runs.load_agent(run)
    assert behavior.update == 3 and behavior.world_model_update == 7 and behavior.env_config == {"id": "Echo-v0"}
    assert all(not p.requires_grad for p in world_model.parameters())  # frozen
    for (name, a), b in zip(agent.state_dict().items(), loaded_agent.state_dict().values()):
        assert torch.equal(a, b), name


def test_missing_run_world_model_or_agent_are_clear_errors(tmp_path):
    with pytest.raises(DreamerError, match="No run directory"):
        runs.load_world_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DreamerError, match="has no world_model.pt"):
        runs.load_world_model(tmp_path / "empty")
    write_run(tmp_path / "wm-only", with_agent=False)
    with pytest.raises(DreamerError, match="has no behavior.pt.*dreamer train-behavior"):
        runs.load_agent(tmp_path / "wm-only")


def test_load_policy_random_agent_unknown_and_misfit(tmp_path):
    obs, act = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    assert isinstance(runs.load_policy("random", obs, act, 2, seed=0), RandomPolicy)
    assert isinstance(runs.load_policy("smooth-random", obs, act, 2, seed=0), SmoothRandomPolicy)
    with pytest.raises(DreamerError, match="neither 'random', 'smooth-random' nor an existing run directory"):
        runs.load_policy("runs/none", obs, act, 2)
    run = tmp_path / "run"
    write_run(run)
    policy = runs.load_policy(str(run), obs, act, 2, seed=0, device="cpu")
    assert isinstance(policy, AgentPolicy) and policy.name == f"agent:{run}"
    actions = policy.act({"vector": np.zeros((2, 3), np.float32)}, np.ones(2, bool))
    assert actions.shape == (2,) and actions.dtype == np.int64
    with pytest.raises(DreamerError, match="does not fit the checkpoint"):
        runs.load_policy(str(run), obs, gym.spaces.Discrete(3), 2, device="cpu")


def test_run_dataset_recorded_given_missing_and_misfit(tmp_path):
    data = write_dataset(tmp_path / "data")
    write_run(tmp_path / "run", datasets=[str(data)])
    assert runs.run_dataset(tmp_path / "run").num_episodes == 3
    assert runs.run_dataset(tmp_path / "run", data).path == data
    write_run(tmp_path / "none", datasets=[])
    with pytest.raises(DreamerError, match="records no dataset"):
        runs.run_dataset(tmp_path / "none")
    write_run(tmp_path / "moved", datasets=[str(tmp_path / "gone")])
    with pytest.raises(DreamerError, match="does not exist from here"):
        runs.run_dataset(tmp_path / "moved")
    other = write_dataset(tmp_path / "other", action_space=gym.spaces.Discrete(3))
    with pytest.raises(DreamerError, match="does not fit the checkpoint"):
        runs.run_dataset(tmp_path / "run", other)


def test_freeze_stops_gradients_and_training_mode():
    wm = small_world_model()
    assert runs.freeze(wm) is wm
    assert not wm.training and all(not p.requires_grad for p in wm.parameters())


def test_an_agent_trained_against_an_older_world_model_is_refused(tmp_path):
    """After `train-world-model --resume`, the run's behavior was trained on other latents:
    evaluate and collect --policy refuse it, as train-behavior --resume does."""
    run = tmp_path / "run"
    wm, _ = write_run(run)
    wm.save(run / runs.WORLD_MODEL, {}, update=9, datasets=[], batch_size=2, seq_len=4)  # trained further
    with pytest.raises(DreamerError, match="world model at update 7, but .* is now at update 9"):
        runs.load_agent(run)
    with pytest.raises(DreamerError, match="dreamer train-behavior --run"):
        runs.load_policy(str(run), OBS_SPACES["vector"], ACTION_SPACES["discrete"], 1, device="cpu")
