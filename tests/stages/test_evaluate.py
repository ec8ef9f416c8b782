"""Stage 04 in-process (stages/evaluate.py): the run and its report (fields, episode seeds,
per-episode cap), the env it plays, and refusals. The agent is untrained (what is measured is
the stage, not the agent); a trained agent through the CLI, videos and repeatability are in
tests/stages/test_train_behavior.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dreamer_core import checkpoint, runs
from dreamer_core.behavior import ActorCritic
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.errors import DreamerError
from dreamer_core.stages import evaluate
from tests.common import tiny_behavior_config, tiny_world_model

TOY = "dreamer/DummyDiscrete-v0"  # episode lengths depend on the reset seed only (envs/dummy.py)


@pytest.fixture(scope="module")
def agent_run(tmp_path_factory):
    """A run directory with an untrained tiny world model and actor-critic for TOY."""
    env = make_env(EnvConfig(id=TOY))
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    run = tmp_path_factory.mktemp("agent") / "run"
    world_model = tiny_world_model(observation_space, action_space)
    world_model.save(run / runs.WORLD_MODEL, update=12)
    agent = ActorCritic.for_world_model(tiny_behavior_config(), world_model)
    agent.save(run / runs.BEHAVIOR, world_model, update=7, world_model_update=12,
               env_config=EnvConfig(id=TOY).to_dict())
    return run


def evaluate_run(run, **flags) -> evaluate.EvalResult:
    cfg = evaluate.make_config(str(run), [], [], {"device": "cpu", **flags})
    return evaluate.run(cfg, progress=False)


def episode_length(seed: int, max_steps: int = 0) -> int:
    """Steps of TOY's episode for a reset seed, played with any actions."""
    env = make_env(EnvConfig(id=TOY))
    env.reset(seed=seed)
    steps, done = 0, False
    while not done and not (max_steps and steps >= max_steps):
        _, _, terminated, truncated, _ = env.step(0)
        steps, done = steps + 1, terminated or truncated
    env.close()
    return steps


def eval_folders(run) -> list:
    return sorted((run / "eval").iterdir()) if (run / "eval").exists() else []


def test_report_fields_and_episode_seeds(agent_run):
    result = evaluate_run(agent_run, episodes=3, seed=5)
    report = result.report
    assert result.folder.parent == agent_run / "eval"
    assert json.loads((result.folder / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (result.folder / "returns.png").stat().st_size > 0
    assert report["run"] == str(agent_run) and report["env_id"] == TOY
    assert report["env_config"] == EnvConfig(id=TOY).to_dict()
    assert report["episodes"] == 3 and report["seed"] == 5 and report["mode"] == "mode"
    # episode i is played from reset seed seed + i
    assert report["episode_seeds"] == [5, 6, 7]
    assert report["lengths"] == [episode_length(s) for s in (5, 6, 7)]
    returns = report["returns"]
    assert len(returns) == 3 and all(0 <= r <= n for r, n in zip(returns, report["lengths"]))  # 0 or 1 per step
    assert report["return_mean"] == pytest.approx(np.mean(returns))
    assert report["return_std"] == pytest.approx(np.std(returns))
    assert (report["return_min"], report["return_max"]) == (min(returns), max(returns))
    assert report["length_mean"] == pytest.approx(np.mean(report["lengths"]))
    assert report["behavior_update"] == 7 and report["world_model_update"] == 12  # from behavior.pt
    assert report["videos"] == [] and report["seconds"] > 0
    assert result.summary_line().startswith(f"evaluated 3 episodes of {TOY} (mode actions): return ")
    assert str(result.folder / "report.json") in result.summary_line()


def test_every_evaluation_gets_its_own_folder_and_max_steps_caps_episodes(agent_run):
    before = eval_folders(agent_run)
    result = evaluate_run(agent_run, episodes=2, seed=0, max_steps=4, mode="sample")
    after = eval_folders(agent_run)
    assert set(before) < set(after) and result.folder in after and len(after) == len(before) + 1
    assert result.report["lengths"] == [4, 4] and result.report["mode"] == "sample"  # TOY's episodes are >= 10


def test_greedy_is_another_name_for_mode(agent_run):
    """`--mode greedy` (the word `dreamer train --eval-mode` uses) plays the policy's mode."""
    greedy = evaluate_run(agent_run, episodes=2, seed=3, mode="greedy").report
    mode = evaluate_run(agent_run, episodes=2, seed=3, mode="mode").report
    assert greedy["returns"] == mode["returns"] and greedy["lengths"] == mode["lengths"]
    assert greedy["mode"] == "greedy" and mode["mode"] == "mode"


def test_an_env_with_other_spaces_is_refused_before_anything_is_written(agent_run):
    before = eval_folders(agent_run)
    with pytest.raises(DreamerError, match="does not fit") as info:
        evaluate_run(agent_run, env="CartPole-v1", episodes=1)
    assert "CartPole-v1" in str(info.value) and str(agent_run / runs.BEHAVIOR) in str(info.value)
    assert eval_folders(agent_run) == before


@pytest.mark.parametrize("flags,needle", [({"episodes": 0}, "--episodes"),
                                          ({"mode": "argmax"}, "--mode \\(mode\\) must be one of greedy, mode, sample"),
                                          ({"video": True, "video_format": "avi"}, "gif or mp4")])
def test_bad_settings_are_refused(agent_run, flags, needle):
    before = eval_folders(agent_run)
    with pytest.raises(DreamerError, match=needle):
        evaluate_run(agent_run, **flags)
    assert eval_folders(agent_run) == before


def test_the_env_is_the_recorded_one_unless_another_id_is_given():
    def artifact(env_config):
        return checkpoint.BehaviorArtifact(observation_space={}, action_space={}, stage_config={},
                                           env_config=env_config)

    recorded = EnvConfig(id="CartPole-v1", obs="pixels", size=(32, 32), time_limit=50).to_dict()
    assert evaluate.env_config_for(artifact(recorded), "") == EnvConfig.from_dict(recorded)
    # another id keeps the recorded options (the data's observation settings)
    assert evaluate.env_config_for(artifact(recorded), "Acrobot-v1") == EnvConfig(
        id="Acrobot-v1", obs="pixels", size=(32, 32), time_limit=50)
    assert evaluate.env_config_for(artifact({}), "Acrobot-v1") == EnvConfig(id="Acrobot-v1")
    with pytest.raises(DreamerError, match="--env"):
        evaluate.env_config_for(artifact({}), "")
