"""Policies (policies.py): RandomPolicy's seeded draws and dtypes per action space; AgentPolicy
acting through the world-model and actor-critic interfaces only, resetting its latent state
where an episode starts, greedy actions, actions inside the env's space, Box actions fed to the
model in [-1, 1] and scaled to the bounds only for the env; play_episode's rows in the dataset
layout."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamer_core.behavior import ActorCritic
from dreamer_core.errors import DreamerError
from dreamer_core.interfaces import ActorCriticInterface, WorldModelInterface
from dreamer_core.policies import AgentPolicy, RandomPolicy, SmoothRandomPolicy, play_episode
from tests.common import OBS_SPACES, tiny_behavior_config, tiny_world_model
from tests.nets import single_thread  # noqa: F401  (autouse fixture: tiny tensors, one thread)

SPACES = {
    "discrete": (gym.spaces.Discrete(4, start=2), np.int64, ()),
    "multibinary": (gym.spaces.MultiBinary(3), np.int8, (3,)),
    "multibinary_2d": (gym.spaces.MultiBinary([2, 2]), np.int8, (2, 2)),
    "multidiscrete": (gym.spaces.MultiDiscrete([3, 5]), np.int64, (2,)),
    "box": (gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)), np.float32, (2,)),
    "box_half_unbounded": (gym.spaces.Box(np.array([-1.0, -np.inf], np.float32), np.array([1.0, np.inf], np.float32)),
                           np.float32, (2,)),
}
NO_OBS: dict[str, np.ndarray] = {}


def draws(policy, calls: int, K: int) -> np.ndarray:
    return np.stack([policy.act(NO_OBS, np.zeros(K, dtype=bool)) for _ in range(calls)])


# --- RandomPolicy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPACES))
def test_random_policy_is_seeded_typed_and_inside_the_space(name):
    space, dtype, shape = SPACES[name]
    K, calls = 3, 10  # block=4: the draws cross block boundaries
    actions = draws(RandomPolicy(space, K, seed=5, block=4), calls, K)
    assert actions.dtype == dtype and actions.shape == (calls, K, *shape)
    assert all(space.contains(a) for a in actions.reshape(calls * K, *shape))
    np.testing.assert_array_equal(draws(RandomPolicy(space, K, seed=5, block=4), calls, K), actions)
    assert not np.array_equal(draws(RandomPolicy(space, K, seed=6, block=4), calls, K), actions)
    assert len({a.tobytes() for a in actions}) > 1  # not one action repeated
    if name == "discrete":
        assert set(np.unique(actions)) == {2, 3, 4, 5}  # start 2: every action of the space occurs
    if name == "box_half_unbounded":
        assert np.isfinite(actions).all() and (np.abs(actions[..., 0]) <= 1).all()


@pytest.mark.parametrize("name", list(SPACES))
def test_smooth_random_policy_is_seeded_typed_inside_the_space_and_changes_little(name):
    space, dtype, shape = SPACES[name]
    K, calls = 4, 400
    actions = draws(SmoothRandomPolicy(space, K, seed=5), calls, K)
    assert actions.dtype == dtype and actions.shape == (calls, K, *shape)
    assert all(space.contains(a) for a in actions.reshape(calls * K, *shape))
    np.testing.assert_array_equal(draws(SmoothRandomPolicy(space, K, seed=5), calls, K), actions)
    uniform = draws(RandomPolicy(space, K, seed=5), calls, K).astype(np.float64)
    steps = np.abs(np.diff(actions.astype(np.float64), axis=0))
    if space.dtype == np.float32 and name.startswith("box"):
        bounded = np.isfinite(space.low)
        # a walk: consecutive actions far closer than independent uniform draws, yet it moves
        assert steps[..., bounded].mean() < 0.25 * np.abs(np.diff(uniform, axis=0))[..., bounded].mean()
        assert actions[..., bounded].std(0).min() > 0.05 * (space.high - space.low)[bounded].min()
    else:
        changed = (steps.reshape(calls - 1, K, -1) > 0).mean()
        assert 0.02 < changed < 0.2  # repeats with probability 0.9 (a fresh draw may equal the last)


def test_smooth_random_policy_restarts_each_env_where_its_episode_starts():
    space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    policy = SmoothRandomPolicy(space, 2, seed=0, step=0.0)  # no walk: only a restart changes an action
    first = policy.act(NO_OBS, np.ones(2, dtype=bool))
    same = policy.act(NO_OBS, np.zeros(2, dtype=bool))
    np.testing.assert_array_equal(same, first)
    restarted = policy.act(NO_OBS, np.array([False, True]))
    assert restarted[0] == first[0] and restarted[1] != first[1]


def test_random_policy_refuses_a_space_it_cannot_sample():
    with pytest.raises(DreamerError, match="cannot sample the action space"):
        RandomPolicy(gym.spaces.Text(5), 2, seed=0)


# --- AgentPolicy ------------------------------------------------------------------------------------


class InterfaceOnlyWorldModel:
    """Exposes exactly the world-model interface of a model (no encoder, RSSM or heads) and
    records which methods the caller used."""

    METHODS = ("initial_state", "observe", "step", "imagine", "features", "decode", "reconstruct",
               "categorical_latents", "reward_dist", "cont_dist", "loss", "save")

    def __init__(self, model):
        self._model, self.calls = model, []
        self.observation_space, self.action_space = model.observation_space, model.action_space
        self.actions = model.actions

    @property
    def feat_dim(self):
        return self._model.feat_dim

    @property
    def feat_onehot(self):
        return self._model.feat_onehot


def _forward(name):
    def method(self, *args, **kwargs):
        self.calls.append(name)
        return getattr(self._model, name)(*args, **kwargs)

    method.__name__ = name
    return method


for _name in InterfaceOnlyWorldModel.METHODS:
    setattr(InterfaceOnlyWorldModel, _name, _forward(_name))


class InterfaceOnlyAgent:
    def __init__(self, agent):
        self._agent, self.calls = agent, []

    def policy(self, feat):
        self.calls.append("policy")
        return self._agent.policy(feat)

    def value(self, feat, slow=False):
        self.calls.append("value")
        return self._agent.value(feat, slow)

    def save(self, *a, **k):
        self.calls.append("save")


def agent_for(action_space, seed=0):
    wm = tiny_world_model("vector", action_space, seed=seed).requires_grad_(False).eval()
    return wm, ActorCritic.for_world_model(tiny_behavior_config(), wm).eval()


def observations(K: int, steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"vector": rng.standard_normal((K, 3)).astype(np.float32)} for _ in range(steps)]


FIRSTS = [np.ones(3, bool), np.zeros(3, bool), np.array([True, False, False]), np.zeros(3, bool)]


@pytest.mark.parametrize("mode", ["sample", "mode"])
def test_agent_policy_acts_through_the_interfaces_only(mode):
    wm, agent = agent_for(gym.spaces.Discrete(3, start=1))
    proxy_wm, proxy_agent = InterfaceOnlyWorldModel(wm), InterfaceOnlyAgent(agent)
    assert isinstance(proxy_wm, WorldModelInterface) and isinstance(proxy_agent, ActorCriticInterface)
    through_proxies = AgentPolicy(proxy_wm, proxy_agent, 3, mode=mode, seed=4)
    direct = AgentPolicy(wm, agent, 3, mode=mode, seed=4)
    for obs, first in zip(observations(3, 4), FIRSTS):
        np.testing.assert_array_equal(through_proxies.act(obs, first), direct.act(obs, first))
    assert set(proxy_wm.calls) == {"initial_state", "step", "features"} and set(proxy_agent.calls) == {"policy"}
    assert proxy_wm.calls.count("step") == 4


def test_agent_policy_resets_its_state_where_an_episode_starts():
    wm, agent = agent_for(gym.spaces.Discrete(3, start=1))
    policy = AgentPolicy(wm, agent, 3, mode="sample", seed=0)
    obs = observations(3, 3)
    zero = torch.zeros(3, wm.actions.dim)
    with torch.no_grad():
        restart = wm.step(wm.initial_state(3), zero, {"vector": torch.as_tensor(obs[2]["vector"])},
                          torch.ones(3, dtype=torch.bool))
    actions = policy.act(obs[0], np.ones(3, bool))
    assert torch.equal(policy.state.deter, restart.deter)  # all three start: the initial state's step
    # the last action, in the model encoding, feeds the next step
    torch.testing.assert_close(policy.last_action, torch.nn.functional.one_hot(torch.as_tensor(actions - 1), 3).float())
    policy.act(obs[1], np.zeros(3, bool))
    moved = policy.state.deter.clone()
    assert not torch.equal(moved[0], restart.deter[0])
    policy.act(obs[2], np.array([True, False, False]))  # env 0 starts over, envs 1 and 2 go on
    assert torch.equal(policy.state.deter[0], restart.deter[0])
    assert not torch.equal(policy.state.deter[1], restart.deter[1])
    policy.reset()
    assert torch.equal(policy.state.deter, wm.initial_state(3).deter) and not policy.last_action.any()


def test_greedy_actions_are_the_policy_mode_and_repeat_with_the_seed():
    wm, agent = agent_for(gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)))
    runs = []
    for _ in range(2):
        policy = AgentPolicy(wm, agent, 3, mode="mode", seed=1)
        run = []
        for obs, first in zip(observations(3, 4), FIRSTS):
            action = policy.act(obs, first)
            with torch.no_grad():
                mode = agent.policy(wm.features(policy.state)).mode
            np.testing.assert_array_equal(action, wm.actions.to_env(mode))
            run.append(action)
        runs.append(np.stack(run))
    np.testing.assert_array_equal(runs[0], runs[1])
    sampled = [np.stack([AgentPolicy(wm, agent, 3, mode="sample", seed=s).act(o, f) for o, f in
                         zip(observations(3, 4), FIRSTS)]) for s in (1, 1, 2)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    assert not np.array_equal(sampled[0], sampled[2])


@pytest.mark.parametrize("space, dtype", [
    (gym.spaces.Discrete(3, start=1), np.int64),
    (gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32)), np.float32),
    (gym.spaces.MultiBinary(4), np.int8),
    (gym.spaces.Box(-1.0, 1.0, (2, 2), np.float32), np.float32),
], ids=["discrete-start1", "box-bounds", "multibinary", "box-2d"])
def test_agent_actions_are_in_the_env_space(space, dtype):
    wm, agent = agent_for(space)
    for mode in ("sample", "mode"):
        policy = AgentPolicy(wm, agent, 3, mode=mode, seed=0)
        for obs, first in zip(observations(3, 4), FIRSTS):
            action = policy.act(obs, first)
            assert action.dtype == dtype and action.shape == (3, *space.shape)
            assert all(space.contains(a) for a in action), action


@pytest.mark.parametrize("mode", ["sample", "mode"])
def test_box_actions_reach_the_model_in_minus_one_to_one_and_the_env_scaled_to_the_bounds(mode):
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32))
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    wm, agent = agent_for(space)
    policy = AgentPolicy(wm, agent, 3, mode=mode, seed=0)
    for obs, first in zip(observations(3, 4), FIRSTS):
        action = policy.act(obs, first)
        actor = policy.last_action  # the actor's sample (or mode): what the model is fed next
        if mode == "mode":
            with torch.no_grad():
                torch.testing.assert_close(actor, agent.policy(wm.features(policy.state)).mode)
        assert actor.abs().max() <= 1.0
        want = low + (actor.double().numpy() + 1) / 2 * (high - low)
        np.testing.assert_allclose(action, want, rtol=0, atol=1e-5)
        # replayed from a dataset, the stored env action reaches the model as the actor's value
        torch.testing.assert_close(wm.actions.encode(torch.as_tensor(action)), actor, rtol=0, atol=1e-6)


def test_agent_policy_refusals():
    wm, agent = agent_for(gym.spaces.Discrete(3))
    with pytest.raises(DreamerError, match="Unknown action mode 'greedy'; use sample or mode"):
        AgentPolicy(wm, agent, 1, mode="greedy")
    policy = AgentPolicy(wm, agent, 1, seed=0)
    with pytest.raises(DreamerError, match=r"keys \['state'\], but the agent was trained on \['vector'\]"):
        policy.act({"state": np.zeros((1, 3), np.float32)}, np.ones(1, bool))


# --- play_episode -----------------------------------------------------------------------------------


class CountingEnv(gym.Env):
    """obs vector = (t, seed, 0); reward t on arriving at step t; ends after ``length`` steps."""

    metadata = {"render_modes": ["rgb_array"]}
    observation_space = OBS_SPACES["vector"]

    def __init__(self, action_space: gym.Space, length: int = 5):
        self.action_space, self.length = action_space, length
        self.taken: list = []

    def _obs(self):
        return {"vector": np.array([self.t, self.seed, 0.0], np.float32)}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.seed, self.taken = 0, seed, []
        return self._obs(), {}

    def step(self, action):
        self.taken.append(action)
        self.t += 1
        return self._obs(), float(self.t), self.t >= self.length, False, {}

    def render(self):
        return np.full((2, 2, 3), self.t, np.uint8)


def test_play_episode_gives_rows_in_the_dataset_layout():
    space = gym.spaces.Discrete(3, start=1)
    wm, agent = agent_for(space)
    env = CountingEnv(space, length=5)
    played = play_episode(env, AgentPolicy(wm, agent, 1, seed=0), seed=7, render=True)
    episode = played.episode
    episode.validate(env.observation_space, space)
    assert episode.rows == 6 and episode.steps == 5
    np.testing.assert_array_equal(episode.obs["vector"][:, 0], np.arange(6))
    assert (episode.obs["vector"][:, 1] == 7).all()  # reset with the seed given
    assert episode.action.dtype == np.int64 and episode.action[0] == 0  # row 0: no action led to it
    np.testing.assert_array_equal(episode.action[1:], env.taken)
    assert all(space.contains(a) for a in episode.action[1:])
    np.testing.assert_array_equal(episode.reward, [0, 1, 2, 3, 4, 5])
    assert episode.is_first.tolist() == [True] + [False] * 5
    assert episode.is_last.tolist() == [False] * 5 + [True] and episode.is_terminal[-1]
    assert played.ret == 15.0
    assert [int(f[0, 0, 0]) for f in played.frames] == [0, 1, 2, 3, 4, 5]


def test_play_episode_stops_at_max_steps_as_a_truncation():
    space = gym.spaces.MultiBinary(4)
    wm, agent = agent_for(space)
    played = play_episode(CountingEnv(space, length=50), AgentPolicy(wm, agent, 1, seed=0), seed=1, max_steps=3)
    episode = played.episode
    assert episode.rows == 4 and episode.is_last[-1] and not episode.is_terminal.any()
    assert episode.action.dtype == np.int8 and episode.action.shape == (4, 4) and not episode.action[0].any()
    assert played.frames == [] and played.ret == 6.0
