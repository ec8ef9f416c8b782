"""Actor-critic maths against plain references: lambda-returns, replay returns, discount
weights, return normalisation, action heads, and the stop-gradient boundaries."""

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamer_core import losses
from dreamer_core.behavior import ActionHead, ActorConfig, ActorCritic, BehaviorConfig
from dreamer_core.errors import DreamerError
from dreamer_core.nets.rssm import RSSMConfig
from dreamer_core.world_model import EncoderConfig, HeadConfig, WorldModel, WorldModelConfig
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode


def lambda_return_reference(reward, value, disc, lam):
    """Plain Python, one number at a time (the cleanrl GAE-test pattern)."""
    N, H = len(reward), len(reward[0])
    out = [[0.0] * H for _ in range(N)]
    for n in range(N):
        nxt = value[n][H]
        for h in reversed(range(H)):
            nxt = reward[n][h] + disc[n][h] * ((1 - lam) * value[n][h + 1] + lam * nxt)
            out[n][h] = nxt
    return out


@pytest.mark.parametrize("lam", [0.0, 0.95, 1.0])
def test_lambda_return_matches_a_python_loop(lam):
    g = torch.Generator().manual_seed(0)
    reward, value = torch.randn(5, 7, generator=g), torch.randn(5, 8, generator=g)
    disc = 0.99 * (torch.rand(5, 7, generator=g) > 0.2).float()
    got = losses.lambda_return(reward, value, disc, lam)
    want = torch.tensor(lambda_return_reference(reward.tolist(), value.tolist(), disc.tolist(), lam))
    torch.testing.assert_close(got, want)


def test_lambda_return_special_cases_and_gradcheck():
    reward = torch.tensor([[1.0, 2.0, 3.0]])
    value = torch.tensor([[0.0, 10.0, 20.0, 30.0]])
    disc = torch.full((1, 3), 0.5)
    # lam = 0: one-step TD targets r + disc * v_next
    torch.testing.assert_close(losses.lambda_return(reward, value, disc, 0.0), torch.tensor([[6.0, 12.0, 18.0]]))
    # lam = 1: discounted rewards to the end plus the discounted bootstrap
    torch.testing.assert_close(losses.lambda_return(reward, value, disc, 1.0),
                               torch.tensor([[1 + 0.5 * (2 + 0.5 * (3 + 0.5 * 30)), 2 + 0.5 * (3 + 15), 3 + 15.0]]))
    inputs = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True),
              torch.randn(2, 5, dtype=torch.float64, requires_grad=True),
              torch.rand(2, 4, dtype=torch.float64, requires_grad=True)]
    assert torch.autograd.gradcheck(lambda r, v, d: losses.lambda_return(r, v, d, 0.9), inputs)


def test_replay_lambda_return_matches_a_python_loop():
    g = torch.Generator().manual_seed(1)
    B, T, gamma, lam = 3, 9, 0.9, 0.8
    reward, boot = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    term = torch.zeros(B, T, dtype=torch.bool)
    last = torch.zeros(B, T, dtype=torch.bool)
    term[0, 4] = last[0, 4] = True  # episode 0 ends (terminal) at row 4, a new one starts at 5
    last[1, 6] = True  # truncated at row 6
    got = losses.replay_lambda_return(reward, term, last, boot, gamma, lam)
    for b in range(B):
        want = [0.0] * T
        want[T - 1] = float(boot[b, T - 1])
        for t in reversed(range(T - 1)):
            if last[b, t]:
                want[t] = float(boot[b, t])
                continue
            live = gamma * (0.0 if term[b, t + 1] else 1.0)
            want[t] = float(reward[b, t + 1]) + live * ((1 - lam) * float(boot[b, t + 1]) + lam * want[t + 1])
        torch.testing.assert_close(got[b], torch.tensor(want))
    # the row before a terminal row gets no bootstrap from beyond it
    assert torch.isclose(got[0, 3], reward[0, 4])


def test_discount_weights():
    disc = torch.tensor([[0.5, 0.5, 0.0, 0.5]])
    got = losses.discount_weights(disc, torch.tensor([1.0]), 0.5)
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.5, 0.25, 0.0, 0.0]]))
    assert losses.discount_weights(disc, torch.tensor([0.0]), 0.5).abs().sum() == 0


def tiny_world_model(obs="vector", action="discrete"):
    cfg = WorldModelConfig(rssm=RSSMConfig(deter=16, hidden=16, stoch=4, classes=4),
                           encoder=EncoderConfig(cnn_depth=4, mlp_units=16, mlp_layers=1),
                           heads=HeadConfig(units=16, layers=1))
    return WorldModel(cfg, OBS_SPACES[obs], ACTION_SPACES[action])


def tiny_behavior(**changes):
    cfg = BehaviorConfig(horizon=5, actor=ActorConfig(units=16, layers=1),
                         critic=dataclasses.replace(BehaviorConfig().critic, units=16, layers=1))
    return dataclasses.replace(cfg, **changes)


def test_return_normaliser_tracks_percentiles_with_ema_and_floor():
    wm = tiny_world_model()
    agent = ActorCritic(tiny_behavior(), wm.rssm.feat_dim, wm.action_space)
    returns = torch.arange(101, dtype=torch.float32)[None]  # percentiles 5 and 95 are 5 and 95
    scale = agent._return_scale(returns)
    assert float(agent.retnorm_low) == pytest.approx(5.0) and float(agent.retnorm_high) == pytest.approx(95.0)
    assert float(scale) == pytest.approx(90.0)
    scale = agent._return_scale(returns * 0)  # EMA with decay 0.99 toward (0, 0)
    assert float(agent.retnorm_high) == pytest.approx(0.99 * 95.0)
    assert float(scale) == pytest.approx(0.99 * 90.0)
    small = ActorCritic(tiny_behavior(), wm.rssm.feat_dim, wm.action_space)
    assert float(small._return_scale(torch.full((1, 10), 0.01) * torch.arange(10))) == 1.0  # floor


def test_discrete_head_matches_a_mixed_categorical():
    head = ActionHead(gym.spaces.Discrete(4, start=1), ActorConfig(unimix=0.01))
    logits = torch.randn(6, 4)
    dist = head.dist(logits)
    probs = 0.99 * logits.softmax(-1) + 0.01 / 4
    ref = torch.distributions.Categorical(probs=probs)
    onehot = dist.sample()
    torch.testing.assert_close(dist.log_prob(onehot), ref.log_prob(onehot.argmax(-1)))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    env = head.to_env(onehot)
    assert env.dtype == np.int64 and set(env.tolist()) <= {1, 2, 3, 4}
    assert (env == onehot.argmax(-1).numpy() + 1).all()


def test_box_head_matches_a_normal_and_rescales_to_bounds():
    space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
    head = ActionHead(space, ActorConfig())
    raw = torch.randn(5, 4)
    dist = head.dist(raw)
    ref = torch.distributions.Normal(dist.mean, dist.std)
    a = dist.sample()
    assert a.abs().max() <= 1.0 and (dist.std >= 0.1).all() and (dist.std <= 1.0).all()
    torch.testing.assert_close(dist.log_prob(a), ref.log_prob(a).sum(-1))
    torch.testing.assert_close(dist.entropy(), ref.entropy().sum(-1))
    edges = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    torch.testing.assert_close(head.to_model(edges), torch.tensor([[-2.0, 0.0], [2.0, 10.0], [0.0, 5.0]]))
    torch.testing.assert_close(head.from_model(head.to_model(edges)), edges)
    env = head.to_env(edges)
    assert env.dtype == np.float32 and space.contains(env[2])


def test_multibinary_head_matches_independent_bernoullis():
    head = ActionHead(gym.spaces.MultiBinary(5), ActorConfig(unimix=0.0))
    logits = torch.randn(3, 5)
    dist = head.dist(logits)
    ref = torch.distributions.Independent(torch.distributions.Bernoulli(logits=logits), 1)
    bits = dist.sample()
    torch.testing.assert_close(dist.log_prob(bits), ref.log_prob(bits), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist.entropy(), ref.entropy(), atol=1e-5, rtol=1e-5)
    assert head.to_env(bits).dtype == np.int8
    mixed = ActionHead(gym.spaces.MultiBinary(5), ActorConfig(unimix=0.1)).dist(torch.full((1, 5), -50.0))
    assert (mixed.probs >= 0.05 - 1e-6).all()  # unimix keeps every bit possible


def test_unsupported_action_spaces_are_refused_clearly():
    with pytest.raises(DreamerError, match="MultiDiscrete"):
        ActionHead(gym.spaces.MultiDiscrete([2, 3]), ActorConfig())
    with pytest.raises(DreamerError, match="bounded"):
        ActionHead(gym.spaces.Box(-np.inf, np.inf, (2,)), ActorConfig())


def _batch(obs, action, B=2, T=6):
    from dreamer_core.data.sampler import SequenceSampler  # noqa: F401 (same Batch as training)
    from dreamer_core.types import Batch

    eps = [make_episode(OBS_SPACES[obs], ACTION_SPACES[action], T, terminated=True, episode_id=i) for i in range(B)]
    stack = lambda key: torch.as_tensor(np.stack([getattr(e, key)[:T] for e in eps]))  # noqa: E731
    return Batch(obs={k: torch.as_tensor(np.stack([e.obs[k][:T] for e in eps])) for k in eps[0].obs},
                 action=stack("action"), reward=stack("reward").float(), is_first=stack("is_first"),
                 is_last=stack("is_last"), is_terminal=stack("is_terminal"))


@pytest.mark.parametrize("obs,action,grad", [("vector", "discrete", "reinforce"), ("image", "box", "dynamics"),
                                             ("vector", "multibinary", "reinforce"), ("vector", "discrete", "dynamics"),
                                             ("vector", "box", "reinforce")])
def test_no_gradient_reaches_the_world_model(obs, action, grad):
    torch.manual_seed(0)
    wm = tiny_world_model(obs, action).requires_grad_(False)
    agent = ActorCritic(tiny_behavior(actor=ActorConfig(units=16, layers=1, grad=grad)), wm.rssm.feat_dim,
                        wm.action_space, wm.rssm.feat_onehot)
    batch = _batch(obs, action)
    with torch.no_grad():
        post, _ = wm.rssm.observe(wm.encoder(batch.obs), wm.codec.encode(batch.action), batch.is_first)
    actor_loss, critic_loss, metrics = agent.loss(wm, post, batch)
    assert torch.isfinite(actor_loss) and torch.isfinite(critic_loss)
    actor_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in agent.actor.parameters())
    for p in agent.critic.parameters():
        p.grad = None
    critic_loss.backward()
    assert all(p.grad is None for p in wm.parameters())
    assert all(p.grad is None for p in agent.slow_critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.critic.parameters())
    for key in ("actor/entropy", "critic/value", "imag/return", "retnorm/scale"):
        assert torch.isfinite(metrics[key]), key


def test_critic_loss_sends_nothing_to_the_actor():
    torch.manual_seed(0)
    wm = tiny_world_model().requires_grad_(False)
    agent = ActorCritic(tiny_behavior(), wm.rssm.feat_dim, wm.action_space)
    batch = _batch("vector", "discrete")
    with torch.no_grad():
        post, _ = wm.rssm.observe(wm.encoder(batch.obs), wm.codec.encode(batch.action), batch.is_first)
    _, critic_loss, _ = agent.loss(wm, post, batch)
    critic_loss.backward()
    assert all(p.grad is None for p in agent.actor.parameters())


def test_slow_critic_follows_by_ema():
    wm = tiny_world_model()
    agent = ActorCritic(tiny_behavior(), wm.rssm.feat_dim, wm.action_space)
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in agent.slow_critic.parameters()]
    agent.update_slow_critic()
    for old, slow, fast in zip(before, agent.slow_critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(slow, old + 0.02 * (fast - old))


@pytest.mark.parametrize("obs", ["vector", "image"])
def test_dream_with_full_context_equals_the_reconstruction(obs):
    torch.manual_seed(0)
    wm = tiny_world_model(obs, "discrete")
    batch = _batch(obs, "discrete", B=2, T=6)
    torch.manual_seed(1)
    full = wm.reconstruct_and_dream(batch, context=6)
    for key in full["recon"]:
        torch.testing.assert_close(full["dream"][key], full["recon"][key])
        assert full["recon"][key].shape[:2] == (2, 6)
    torch.manual_seed(1)
    part = wm.reconstruct_and_dream(batch, context=3)
    for key in part["recon"]:  # same samples for the filtered rows, a dream after them
        torch.testing.assert_close(part["dream"][key][:, :3], part["recon"][key][:, :3])
        torch.testing.assert_close(part["recon"][key], full["recon"][key])
        if obs == "image":
            assert 0 <= part["dream"][key].min() and part["dream"][key].max() <= 1
    assert part["dream_reward"].shape == (2, 6) and part["recon_cont"].shape == (2, 6)
