"""The World Models controller and its CMA-ES search (controller.py): actions per space, the
flat parameter round trip through one CMA-ES generation, the dream env's rewards and dones
from M's heads, the real-env scorer, the worker pool against in-process scoring, an exact
resume of a search, and the controller acting as an agent through policies.AgentPolicy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dreamer_core import policies
from dreamer_core.controller import (
    Controller,
    ControllerConfig,
    ControllerSearch,
    DreamEnv,
    DreamScorer,
    RealEnvScorer,
    SearchConfig,
    is_controller,
    rollout_seed,
    start_states,
    state_arrays,
)
from dreamer_core.data.schema import Episode
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.errors import DreamerError
from dreamer_core.nets.distributions import symlog
from dreamer_core.types import Batch
from dreamer_core.worldmodels import (
    InverseModelConfig,
    MDNConfig,
    VAEConfig,
    VaeMdnWorldModel,
    WorldModelsConfig,
)
from tests.common import ACTION_SPACES
from tests.nets import single_thread  # noqa: F401  (autouse fixture: tiny tensors, one thread)

ENV = EnvConfig("dreamer/DummyDiscrete-v0")


def tiny_config() -> WorldModelsConfig:
    return WorldModelsConfig(vae=VAEConfig(latent=4, depth=4, mlp_units=16, mlp_layers=1),
                             mdn=MDNConfig(hidden=8, mixtures=3, head_units=8),
                             inverse=InverseModelConfig(enabled=False))


def env_model(seed: int = 0) -> VaeMdnWorldModel:
    """A tiny (untrained) world model for the dummy env's spaces."""
    env = make_env(ENV)
    torch.manual_seed(seed)
    model = VaeMdnWorldModel(tiny_config(), env.observation_space, env.action_space)
    env.close()
    return model.eval().requires_grad_(False)


def episode_batch(seeds=(0, 1, 2)) -> Batch:
    """Random-policy episodes of the dummy env as a [B, T] batch (T: the shortest episode)."""
    episodes = []
    for seed in seeds:
        env = make_env(ENV)
        obs, _ = env.reset(seed=seed)
        rows, actions, rewards, done = [obs], [], [], False
        while not done:
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            rows.append(obs)
            actions.append(action)
            rewards.append(reward)
            done = terminated or truncated
        env.close()
        stacked = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
        episodes.append(Episode.from_transitions(stacked, np.array(actions, np.int64), np.array(rewards, np.float32),
                                                 bool(terminated)))
    T = min(len(e.reward) for e in episodes)

    def col(name):
        return torch.as_tensor(np.stack([getattr(e, name)[:T] for e in episodes]))

    return Batch({k: torch.as_tensor(np.stack([e.obs[k][:T] for e in episodes])) for k in episodes[0].obs},
                 col("action"), col("reward").float(), col("is_first").bool(), col("is_last").bool(),
                 col("is_terminal").bool())


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("wm") / "world_model.pt"
    model = env_model()
    model.save(path)
    return path, model


def dream_scorer(path, model, **changes) -> DreamScorer:
    start = start_states(model, episode_batch(), episode_starts=False)
    return DreamScorer(str(path), state_arrays(start), **{"rollouts": 3, "max_steps": 12, "seed": 5, **changes})


# --- the controller ------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["discrete", "box", "multibinary"])
def test_controller_actions_per_space(action):
    space = ACTION_SPACES[action]
    controller = Controller(ControllerConfig(), feat_dim=6, action_space=space)
    torch.manual_seed(0)
    controller.set_params(np.random.default_rng(0).standard_normal(controller.num_params) * 3)
    feat = torch.randn(5, 6)
    out = controller.net(feat)
    act = controller.act(feat)
    if action == "discrete":
        assert torch.equal(act.argmax(-1), out.argmax(-1)) and torch.equal(act.sum(-1), torch.ones(5))
    elif action == "box":
        torch.testing.assert_close(act, torch.tanh(out))
        env_actions = controller.actions.to_env(act)
        assert (env_actions >= space.low).all() and (env_actions <= space.high).all()
    else:
        assert torch.equal(act, (out > 0).float())
    assert torch.equal(controller.policy(feat).mode, act) and torch.equal(controller.policy(feat).sample(), act)
    with pytest.raises(DreamerError):
        Controller(ControllerConfig(), 6, ACTION_SPACES["multidiscrete"])


def test_parameter_round_trip_through_one_cma_generation(saved_model):
    path, model = saved_model
    for hidden in (0, 5):
        controller = Controller.for_world_model(ControllerConfig(hidden=hidden), model)
        F, A = model.feat_dim, model.actions.dim
        assert controller.num_params == ((F + 1) * A if not hidden else (F + 1) * hidden + (hidden + 1) * A)
        assert not controller.get_params().any()  # CMA-ES starts at the zero vector
        params = np.random.default_rng(1).standard_normal(controller.num_params)
        controller.set_params(params)
        np.testing.assert_allclose(controller.get_params(), params.astype(np.float32))
    with ControllerSearch(SearchConfig(population=4, workers=1, seed=2), controller, dream_scorer(path, model)) as search:
        record = search.step()
        assert search.generation == 1 and search.es.countiter == 1
        assert record.best >= record.mean >= record.worst and record.best_ever == search.best_score
        controller.set_params(search.best_params)
        np.testing.assert_allclose(controller.get_params(), search.best_params.astype(np.float32))
        scores = [np.mean(r) for r in search.evaluate([search.best_params], generation=0)]
        assert scores[0] == pytest.approx(search.best_score)  # the same seeds give the same score


def test_a_controller_on_z_alone_reads_only_the_latent(saved_model):
    """controller.inputs=z (the paper's "V model only" controller): (Z + 1) x A parameters, and
    its action is W z + b, whatever M's h is."""
    _, model = saved_model
    Z, F, A = model.latent_dim, model.feat_dim, model.actions.dim
    controller = Controller.for_world_model(ControllerConfig(inputs="z"), model)
    assert controller.num_params == (Z + 1) * A and Z < F
    controller.set_params(np.random.default_rng(3).standard_normal(controller.num_params))
    feat = torch.randn(6, F)
    other_h = torch.cat([feat[:, :Z], torch.randn(6, F - Z)], -1)
    assert torch.equal(controller.act(feat), controller.act(other_h))
    layer = controller.net
    expected = feat[:, :Z] @ layer.weight.t() + layer.bias
    assert torch.equal(controller.act(feat).argmax(-1), expected.argmax(-1))
    with pytest.raises(DreamerError, match="controller inputs"):
        Controller.for_world_model(ControllerConfig(inputs="h"), model)
    with pytest.raises(DreamerError, match="latent size"):
        Controller(ControllerConfig(inputs="z"), F, model.action_space)


# --- the dream env ----------------------------------------------------------------------------


def set_head(head: torch.nn.Module, value: float) -> None:
    """Make an MLP head output ``value`` everywhere (zero weights, bias = value)."""
    last = head.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.constant_(last.bias, value)


def test_the_dream_env_takes_rewards_and_dones_from_m(saved_model):
    _, base = saved_model
    model = env_model()
    start = start_states(model, episode_batch())
    assert start.z.shape[0] == 3  # one start state per episode
    controller = Controller.for_world_model(ControllerConfig(), model)
    set_head(model.memory.reward_head, float(symlog(torch.tensor(2.5))))  # reward 2.5 per step
    set_head(model.memory.cont_head, 20.0)  # M says "continue" everywhere
    env = DreamEnv(model, start, tau=1.0, max_steps=7)
    returns, lengths = env.rollout(controller, 4, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(returns, 7 * 2.5, rtol=1e-5)
    assert (lengths == 7).all()
    set_head(model.memory.cont_head, -20.0)  # M says "terminal" at once
    returns, lengths = env.rollout(controller, 4, torch.Generator().manual_seed(0))
    np.testing.assert_allclose(returns, 2.5, rtol=1e-5)  # the ending step's reward counts
    assert (lengths == 1).all()
    env.reset(2)
    state, reward, done = env.step(controller.act(env.features()))
    assert reward.shape == done.shape == (2,) and done.all() and state.z.shape == (2, model.latent_dim)
    # the dream's next latent is M's sample: at tau = 0 the mixture's mode
    env0 = DreamEnv(model, start, tau=0.0, max_steps=3)
    first = env0.reset(3, torch.Generator().manual_seed(1))
    action = controller.act(env0.features())
    nxt, _, _ = env0.step(action)
    h, c = model.memory.step(first.h, first.c, first.z, action)
    torch.testing.assert_close(nxt.z, model.memory.dist(h).mode)


# --- scorers and the search -------------------------------------------------------------------


def test_real_env_scorer_plays_k_episodes_deterministically(saved_model):
    path, model = saved_model
    spec = RealEnvScorer(str(path), ENV, rollouts=3, max_steps=50, seed=1)
    evaluator = spec.build(ControllerConfig())
    params = np.random.default_rng(0).standard_normal(evaluator.controller.num_params)
    first = evaluator.evaluate(params, generation=0)
    assert len(first) == 3 and all(0 <= r <= 30 for r in first)  # the dummy pays at most 1 per step
    assert evaluator.evaluate(params, generation=0) == first
    evaluator.close()


def test_the_stall_rule_ends_an_episode_whose_return_stopped_rising(saved_model):
    """Zero parameters always pick action 0, so the returns can be replayed by hand: the dummy
    pays 1 when the action hits its target, 0 otherwise."""
    path, _ = saved_model
    stall = 2
    plain = RealEnvScorer(str(path), ENV, rollouts=3, seed=1).build(ControllerConfig())
    stalled = RealEnvScorer(str(path), ENV, rollouts=3, seed=1, stall_steps=stall).build(ControllerConfig())
    zero = np.zeros(plain.controller.num_params)
    expected_plain, expected_stalled = [], []
    for i in range(3):
        env = make_env(ENV)
        env.reset(seed=rollout_seed(1, 0, i))
        rewards, done = [], False
        while not done:
            _, reward, terminated, truncated, _ = env.step(0)
            rewards.append(float(reward))
            done = terminated or truncated
        expected_plain.append(sum(rewards))
        total, best, since = 0.0, None, 0
        for reward in rewards:
            total += reward
            if best is None or total > best:
                best, since = total, 0
            else:
                since += 1
            if since >= stall:
                break
        expected_stalled.append(total)
    assert plain.evaluate(zero, generation=0) == expected_plain
    assert stalled.evaluate(zero, generation=0) == expected_stalled
    assert expected_stalled != expected_plain  # the rule cut at least one episode here
    plain.close()
    stalled.close()


def test_worker_pool_scores_like_this_process(saved_model):
    path, model = saved_model
    scorer = dream_scorer(path, model)
    controller = Controller.for_world_model(ControllerConfig(), model)
    results = []
    for workers in (1, 2):
        cfg = SearchConfig(population=4, workers=workers, start_method="fork", seed=3)
        with ControllerSearch(cfg, controller, scorer) as search:
            search.step()
            results.append((search.history[0], search.best_params))
    assert results[0][0]["mean"] == pytest.approx(results[1][0]["mean"], rel=1e-6)
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_a_resumed_search_continues_exactly(saved_model, tmp_path):
    path, model = saved_model
    scorer = dream_scorer(path, model)
    cfg = SearchConfig(population=5, workers=1, seed=7)

    def search(state=None):
        return ControllerSearch(cfg, Controller.for_world_model(ControllerConfig(), model), scorer, state)

    with search() as whole:
        whole.run(3)
    latest = tmp_path / "checkpoints" / "controller_latest.pt"
    with search() as first:
        first.run(2, on_generation=lambda s, _: s.save_checkpoint(latest, model.observation_space, {"seed": 7},
                                                               world_model_update=0))
    np.random.seed(123)  # whatever the process's global NumPy state, CMA-ES draws from its own
    state, train_state = ControllerSearch.load_checkpoint(latest)
    assert train_state.counters == {"generation": 2, "best_score": first.best_score, "world_model_update": 0}
    assert train_state.stage_config == {"seed": 7}
    with search(state) as resumed:
        assert resumed.generation == 2
        resumed.run(3)
    assert resumed.generation == whole.generation == 3
    np.testing.assert_array_equal(resumed.best_params, whole.best_params)
    np.testing.assert_array_equal(resumed.mean_params, whole.mean_params)
    assert [h["mean"] for h in resumed.history] == [h["mean"] for h in whole.history]


def test_the_controller_acts_as_an_agent_and_saves(saved_model, tmp_path):
    path, model = saved_model
    controller = Controller.for_world_model(ControllerConfig(hidden=3), model)
    controller.set_params(np.random.default_rng(4).standard_normal(controller.num_params))
    controller.save(tmp_path / "behavior.pt", model, {"seed": 0}, update=4)
    loaded, artifact = Controller.load(tmp_path / "behavior.pt", model)
    assert is_controller(artifact.behavior_config) and artifact.update == 4
    np.testing.assert_array_equal(loaded.get_params(), controller.get_params())
    env = make_env(ENV)
    agent = policies.AgentPolicy(model, loaded, num_envs=1, mode="mode", seed=0)
    played = policies.play_episode(env, agent, seed=3, max_steps=40)
    env.close()
    assert 1 <= len(played.episode.reward) - 1 <= 40


def test_search_settings_are_checked(saved_model):
    path, model = saved_model
    controller = Controller.for_world_model(ControllerConfig(), model)
    with pytest.raises(DreamerError, match="population"):
        ControllerSearch(SearchConfig(population=1), controller, dream_scorer(path, model))
    with pytest.raises(DreamerError, match="step limit"):
        DreamEnv(model, start_states(model, episode_batch()), max_steps=0)
    other = Controller.for_world_model(dataclasses.replace(ControllerConfig(), hidden=2), model)
    with ControllerSearch(SearchConfig(population=3, workers=1), controller, dream_scorer(path, model)) as search:
        state = search.state_dict()
    with pytest.raises(DreamerError, match="parameters"):
        ControllerSearch(SearchConfig(population=3, workers=1), other, dream_scorer(path, model), state)


def test_spawned_workers_rebuild_the_model_from_its_path(saved_model):
    """The default start method: workers import the package afresh and load world_model.pt."""
    path, model = saved_model
    scorer = RealEnvScorer(str(path), ENV, rollouts=2, max_steps=20, seed=1)
    controller = Controller.for_world_model(ControllerConfig(), model)
    scores = []
    for workers in (1, 2):
        with ControllerSearch(SearchConfig(population=2, workers=workers, start_method="spawn", seed=1),
                              controller, scorer) as search:
            search.step()
            scores.append(search.history[0]["mean"])
    assert scores[0] == scores[1]
