"""The actor-critic (behavior.py) against plain references: lambda-returns, replay returns,
discount weights, return normalisation, the scored rollouts and the three loss parts, the
stop-gradient boundaries to the world model (and one check that they can fail), dynamics
backprop reaching the actor, the slow critic, and the behavior artifact.

The action spaces' encodings and policy distributions are tested in tests/nets/test_actions.py."""

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from dreamer_core import losses
from dreamer_core.behavior import ActorCritic, Scored
from dreamer_core.errors import DreamerError
from dreamer_core.interfaces import ActorCriticInterface
from dreamer_core.nets.distributions import BoundedNormal, OneHotDist
from dreamer_core.nets.rssm import RSSMState
from tests.common import episode_batch, tiny_behavior_config, tiny_world_model
from tests.nets import single_thread  # noqa: F401  (autouse fixture: tiny tensors, one thread)


def lambda_return_reference(reward, value, disc, lam):
    """Plain Python, one number at a time."""
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


# --- construction and the policy ----------------------------------------------------------------------


@pytest.mark.parametrize("latent", ["categorical", "gaussian"])
def test_for_world_model_reads_the_features_and_the_action_space(latent):
    wm = tiny_world_model("vector", "box", latent=latent)
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    assert isinstance(agent, ActorCriticInterface)
    assert agent.action_space is wm.action_space and agent.actions.dim == wm.actions.dim == 2
    assert agent.grad_mode == "dynamics"  # auto: dynamics backprop for Box
    feat = wm.features(wm.initial_state(3))
    assert feat.shape == (3, wm.feat_dim)
    dist = agent.policy(feat)
    assert isinstance(dist, BoundedNormal) and dist.mean.shape == (3, 2)
    assert agent.value(feat).mean.shape == agent.value(feat, slow=True).mean.shape == (3,)
    assert ActorCritic.for_world_model(tiny_behavior_config(), tiny_world_model()).grad_mode == "reinforce"


def test_policy_uses_the_actor_config():
    wm = tiny_world_model("vector", "discrete")
    cfg = tiny_behavior_config()
    agent = ActorCritic.for_world_model(dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, unimix=0.2)), wm)
    feat = wm.features(wm.initial_state(2))
    dist = agent.policy(feat)
    assert isinstance(dist, OneHotDist)
    torch.testing.assert_close(dist.probs, 0.8 * agent.actor(feat).softmax(-1) + 0.2 / 4)
    box = ActorCritic.for_world_model(
        dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, min_std=0.3, max_std=0.5)),
        tiny_world_model("vector", "box"))
    raw_std = box.actor(feat).chunk(2, -1)[1]
    torch.testing.assert_close(box.policy(feat).std, 0.2 * torch.sigmoid(raw_std + 2) + 0.3)


def test_unsupported_action_spaces_and_gradients_are_refused_clearly():
    cfg = tiny_behavior_config()
    with pytest.raises(DreamerError, match="MultiDiscrete"):
        ActorCritic(cfg, 8, gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(DreamerError, match="bounded"):
        ActorCritic(cfg, 8, gym.spaces.Box(-np.inf, np.inf, (2,)))
    with pytest.raises(DreamerError, match="Unknown actor gradient 'backprop'"):
        ActorCritic(tiny_behavior_config(grad="backprop"), 8, gym.spaces.Discrete(2))


# --- return normalisation and the slow critic -----------------------------------------------------------


def test_return_normaliser_tracks_percentiles_with_ema_and_floor():
    wm = tiny_world_model()
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    returns = torch.arange(101, dtype=torch.float32)[None]  # percentiles 5 and 95 are 5 and 95
    scale = agent._return_scale(returns)
    assert float(agent.retnorm_low) == pytest.approx(5.0) and float(agent.retnorm_high) == pytest.approx(95.0)
    assert float(scale) == pytest.approx(90.0)
    scale = agent._return_scale(returns * 0)  # EMA with decay 0.99 toward (0, 0)
    assert float(agent.retnorm_high) == pytest.approx(0.99 * 95.0)
    assert float(scale) == pytest.approx(0.99 * 90.0)
    small = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    assert float(small._return_scale(torch.full((1, 10), 0.01) * torch.arange(10))) == 1.0  # floor
    off = ActorCritic.for_world_model(
        dataclasses.replace(tiny_behavior_config(), retnorm=dataclasses.replace(agent.cfg.retnorm, mode="none")), wm)
    assert float(off._return_scale(returns)) == 1.0 and int(off.retnorm_count) == 0


def test_slow_critic_follows_by_ema():
    wm = tiny_world_model()
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in agent.slow_critic.parameters()]
    agent.update_slow_critic()
    for old, slow, fast in zip(before, agent.slow_critic.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(slow, old + 0.02 * (fast - old))


def test_slow_critic_copied_every_n_updates_like_v2():
    cfg = tiny_behavior_config()
    agent = ActorCritic.for_world_model(
        dataclasses.replace(cfg, critic=dataclasses.replace(cfg.critic, slow_rate=1.0, slow_every=3)), tiny_world_model())
    with torch.no_grad():
        for p in agent.critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in agent.slow_critic.parameters()]
    for _ in range(2):
        agent.update_slow_critic()
        assert all(torch.equal(a, b) for a, b in zip(before, agent.slow_critic.parameters()))
    agent.update_slow_critic()
    assert all(torch.equal(s, f) for s, f in zip(agent.slow_critic.parameters(), agent.critic.parameters()))


# --- imagination and scoring --------------------------------------------------------------------------


@pytest.mark.parametrize("action, dynamics", [("discrete", False), ("box", True), ("multibinary", False)])
def test_imagine_alignment_and_log_probabilities(action, dynamics):
    wm = tiny_world_model("vector", action).requires_grad_(False)
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    start = wm.observe(episode_batch("vector", action, B=2, T=3)).flatten(0, 1)  # N = 6
    H = 4
    states, actions, logp, entropy = agent.imagine(wm, start, H, dynamics)
    assert states.deter.shape[:2] == (6, H + 1) and actions.shape == (6, H + 1, wm.actions.dim)
    assert logp.shape == entropy.shape == (6, H + 1)
    torch.testing.assert_close(states.deter[:, 0], start.deter)
    assert actions.requires_grad == dynamics  # REINFORCE: sampled actions carry no gradient
    for h in range(H + 1):  # action h is chosen at state h, and scored by the policy there
        dist = agent.policy(wm.features(states[:, h]))
        torch.testing.assert_close(logp[:, h], dist.log_prob(actions[:, h].detach()))
        torch.testing.assert_close(entropy[:, h], dist.entropy())


@pytest.mark.parametrize("slow_target,cont", [(False, "mode"), (True, "mode"), (False, "prob")])
def test_score_against_plain_references(slow_target, cont):
    wm = tiny_world_model("vector", "discrete").requires_grad_(False)
    cfg = tiny_behavior_config()
    cfg = dataclasses.replace(cfg, cont=cont, critic=dataclasses.replace(cfg.critic, slow_target=slow_target))
    agent = ActorCritic.for_world_model(cfg, wm)
    with torch.no_grad():  # a slow critic that differs from the critic
        for p in agent.slow_critic.parameters():
            p.normal_()
    start = wm.observe(episode_batch(B=2, T=3)).flatten(0, 1)
    states, *_ = agent.imagine(wm, start, cfg.horizon, dynamics=False)
    feat = wm.features(states)
    first_cont = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    scored = agent.score(wm, feat, first_cont)
    N, H = 6, cfg.horizon
    assert isinstance(scored, Scored) and scored.feat is feat
    assert scored.reward.shape == scored.cont.shape == scored.disc.shape == scored.returns.shape == (N, H)
    assert scored.weight.shape == scored.value.shape == scored.slow_value.shape == (N, H + 1)
    assert scored.critic_out.shape == (N, H + 1, cfg.critic.bins)
    torch.testing.assert_close(scored.reward, wm.reward_dist(feat[:, 1:]).mean)
    logits = wm.cont_head(feat[:, 1:]).squeeze(-1)  # 2023: the 0/1 mode; 2025: the probability
    want_cont = (logits > 0).float() if cont == "mode" else torch.sigmoid(logits)
    torch.testing.assert_close(scored.cont, want_cont)
    assert (scored.cont == want_cont.round()).all() == (cont == "mode")  # the probabilities are not 0/1
    torch.testing.assert_close(scored.disc, cfg.gamma * scored.cont)
    value = agent.value(feat).mean
    slow = agent.value(feat, slow=True).mean
    torch.testing.assert_close(scored.slow_value, slow)
    torch.testing.assert_close(scored.value, slow if slow_target else value)
    assert not torch.allclose(value, slow)
    want = lambda_return_reference(scored.reward.tolist(), scored.value.tolist(), scored.disc.tolist(), cfg.lam)
    torch.testing.assert_close(scored.returns, torch.tensor(want))
    for n in range(N):  # survival: the start's real continue flag, then the product of discounts
        w = float(first_cont[n])
        assert scored.weight[n, 0].item() == pytest.approx(w)
        for h in range(H):
            w *= float(scored.disc[n, h])
            assert scored.weight[n, h + 1].item() == pytest.approx(w, rel=1e-5, abs=1e-7)
    assert not scored.weight.requires_grad and not scored.returns.requires_grad


def hand_scored(weight, returns, critic_out, slow_value) -> Scored:
    """A Scored with only the fields the loss parts read."""
    return Scored(feat=None, reward=None, cont_dist=None, cont=None, disc=None, weight=weight, critic_out=critic_out,
                  slow_value=slow_value, value=None, returns=returns)


@pytest.mark.parametrize("dynamics", [False, True])
def test_actor_loss_against_the_formula(dynamics):
    agent = ActorCritic.for_world_model(tiny_behavior_config(), tiny_world_model())
    eta = agent.cfg.actor.entropy
    weight = torch.tensor([[1.0, 0.5, 0.25]])  # H = 2
    logp = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    entropy = torch.tensor([[0.7, 0.6, 0.5]])
    advantage = torch.tensor([[2.0, -3.0]], requires_grad=True)
    loss = agent.actor_loss(hand_scored(weight, None, None, None), advantage, logp, entropy, dynamics)
    if dynamics:
        want = -(1.0 * (2.0 + eta * 0.7) + 0.5 * (-3.0 + eta * 0.6)) / 2
    else:
        want = -(1.0 * (-1.0 * 2.0 + eta * 0.7) + 0.5 * (-2.0 * -3.0 + eta * 0.6)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-6)
    loss.backward()
    if dynamics:  # the gradient follows the advantage (through the returns); log-probs unused
        torch.testing.assert_close(advantage.grad, torch.tensor([[-0.5, -0.25]]))
        assert logp.grad is None
    else:  # REINFORCE: the advantage is a constant weight of the log-probabilities
        torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, 0.75, 0.0]]))
        assert advantage.grad is None


def test_critic_loss_against_the_formula():
    cfg = tiny_behavior_config()
    cfg = dataclasses.replace(cfg, critic=dataclasses.replace(cfg.critic, head="mse", slow_reg=0.5))
    agent = ActorCritic.for_world_model(cfg, tiny_world_model())
    weight = torch.tensor([[1.0, 0.5, 0.25]])
    critic_out = torch.tensor([[[1.0], [2.0], [3.0]]], requires_grad=True)
    returns = torch.tensor([[0.0, 4.0]], requires_grad=True)
    slow = torch.tensor([[2.0, 2.0, 9.0]])
    loss = agent.critic_loss(hand_scored(weight, returns, critic_out, slow))
    want = (1.0 * ((1 - 0) ** 2 + 0.5 * (1 - 2) ** 2) + 0.5 * ((2 - 4) ** 2 + 0.5 * (2 - 2) ** 2)) / 2
    assert loss.item() == pytest.approx(want)
    loss.backward()
    assert returns.grad is None and critic_out.grad[0, 2].item() == 0.0  # the last state is not scored


def test_replay_value_loss_against_the_formula():
    cfg = tiny_behavior_config()
    cfg = dataclasses.replace(cfg, critic=dataclasses.replace(cfg.critic, head="mse", slow_reg=0.5))
    wm = tiny_world_model()
    agent = ActorCritic.for_world_model(cfg, wm)
    with torch.no_grad():
        for p in agent.slow_critic.parameters():
            p.normal_()
    batch = episode_batch(B=2, T=6, steps=5)  # each window ends its episode: is_last at row 5
    assert batch.is_last[:, -1].all() and not batch.is_last[:, :-1].any()
    post = wm.observe(batch)
    boot = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    loss = agent.replay_value_loss(wm, post, batch, boot)
    target = losses.replay_lambda_return(batch.reward, batch.is_terminal, batch.is_last, boot, cfg.gamma, cfg.lam)
    total = 0.0
    for b in range(2):
        for t in range(6):
            if batch.is_last[b, t]:
                continue  # no real transition out of an episode's last row
            feat = wm.features(post[b, t])
            v, s = agent.critic(feat).item(), agent.slow_critic(feat).item()
            total += (v - target[b, t].item()) ** 2 + 0.5 * (v - s) ** 2
    assert loss.item() == pytest.approx(total / 12, rel=1e-5)
    params = [p for _, p in wm.named_parameters()]
    assert all(g is None for g in torch.autograd.grad(loss, params, allow_unused=True))  # features detached


# --- the stop-gradient boundaries -----------------------------------------------------------------------

# World-model parameters by role. The start states come from the encoder and the posterior;
# imagination runs the dynamics (GRU input, GRU, prior head); the reward head scores it.
STARTS = ("encoder.", "rssm.post_", "rssm.init_deter")
NEVER = ("decoder.", "cont_head.")
DYNAMICS = ("rssm.dyn_in.", "rssm.cell.", "rssm.prior_net.")
REWARD = ("reward_head.",)
CASES = [("vector", "discrete", "reinforce"), ("image", "box", "dynamics"), ("vector", "multibinary", "reinforce"),
         ("vector", "discrete", "dynamics"), ("vector", "box", "reinforce")]


def reached(loss: torch.Tensor, module: torch.nn.Module) -> set[str]:
    """Names of the parameters of ``module`` that ``loss``'s gradient reaches (grad not None)."""
    names, params = zip(*[(n, p) for n, p in module.named_parameters() if p.requires_grad])
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return {n for n, g in zip(names, grads) if g is not None}


def of(names: set[str], prefixes: tuple[str, ...]) -> set[str]:
    return {n for n in names if n.startswith(prefixes)}


def trainable_setup(obs, action, grad):
    """A world model whose parameters require grad (as before the online loop freezes it), its
    posteriors computed with their graph, and an actor-critic."""
    wm = tiny_world_model(obs, action)
    assert all(p.requires_grad for p in wm.parameters())
    agent = ActorCritic.for_world_model(tiny_behavior_config(grad), wm)
    batch = episode_batch(obs, action)
    post = wm.observe(batch)
    assert post.deter.requires_grad  # the loss must cut these itself
    return wm, agent, batch, post


@pytest.mark.parametrize("obs,action,grad", CASES)
def test_no_gradient_reaches_the_world_model(obs, action, grad):
    """With a trainable world model and posteriors that carry their graph: the critic loss
    reaches no world-model parameter in any mode; the actor loss never reaches the parameters
    that made the start states (they are detached), nor the decoder and continue head; it
    reaches the reward head only for dynamics backprop (the returns carry gradient there)."""
    wm, agent, batch, post = trainable_setup(obs, action, grad)
    actor_loss, critic_loss, metrics = agent.loss(wm, post, batch)
    assert torch.isfinite(actor_loss) and torch.isfinite(critic_loss)
    assert reached(critic_loss, wm) == set()
    names = {n for n, _ in wm.named_parameters()}
    actor_reached = reached(actor_loss, wm)
    assert of(actor_reached, STARTS) == set() and of(actor_reached, NEVER) == set()
    assert of(names, STARTS) and of(names, NEVER)  # the prefixes name real parameters
    if grad == "dynamics":
        assert of(actor_reached, REWARD) == of(names, REWARD)
    else:
        assert of(actor_reached, REWARD) == set()
    # what the update step relies on: the actor loss trains the actor, the critic loss the critic
    actor_loss.backward(retain_graph=True)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in agent.actor.parameters())
    for p in agent.critic.parameters():
        p.grad = None
    critic_loss.backward()
    assert all(p.grad is None for p in agent.slow_critic.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.critic.parameters())
    for key in ("actor/entropy", "critic/value", "imag/return", "retnorm/scale", "critic/replay_loss"):
        assert torch.isfinite(metrics[key]), key


class Undetached(RSSMState):
    """Posterior states whose ``detach`` keeps the graph: what the loss would see if it forgot
    to cut its start states."""

    def detach(self):
        return self


@pytest.mark.parametrize("grad", ["reinforce", "dynamics"])
def test_the_start_state_check_fails_when_the_starts_keep_their_graph(grad):
    """Dynamics backprop: the returns reach the start states through the dynamics, so leaky
    starts train the encoder and posterior. REINFORCE: the actor reads detached features and
    feeds detached actions, a second barrier that holds even with leaky starts."""
    wm, agent, batch, post = trainable_setup("vector", "discrete", grad)
    leaky = Undetached(**{f.name: getattr(post, f.name) for f in dataclasses.fields(post)})
    actor_loss, critic_loss, _ = agent.loss(wm, leaky, batch)
    starts = of({n for n, _ in wm.named_parameters()}, STARTS)
    assert of(reached(actor_loss, wm), STARTS) == (starts if grad == "dynamics" else set())
    assert reached(critic_loss, wm) == set()  # the critic reads detached features either way


def test_reinforce_actor_loss_reaches_no_world_model_parameter_even_when_trainable():
    """The actor reads detached features (DreamerV3's ``actor(sg(feat))``), so its
    log-probabilities and entropies do not reach the dynamics even if the caller forgot to
    freeze the world model."""
    wm, agent, batch, post = trainable_setup("vector", "discrete", "reinforce")
    actor_loss, _, _ = agent.loss(wm, post, batch)
    assert of(reached(actor_loss, wm), DYNAMICS) == set()


class RecordingWorldModel:
    """The world model, recording the (model-encoded) actions the actor feeds its dynamics."""

    def __init__(self, world_model):
        self.world_model = world_model
        self.fed: list[torch.Tensor] = []

    def __getattr__(self, name):
        return getattr(self.world_model, name)

    def imagine(self, start, policy, horizon):
        def recorded(state):
            action = policy(state)
            if action.requires_grad:
                action.retain_grad()
            self.fed.append(action)
            return action

        self.states, actions = self.world_model.imagine(start, recorded, horizon)
        return self.states, actions


def nonzero_heads(wm, agent):
    """Zero-initialised two-hot heads predict exactly 0, where symexp's gradient is 0; move their
    last layers off zero so the returns depend on the features. And make the untrained continue
    head predict "continue" everywhere, so every imagined step has weight."""
    with torch.no_grad():
        for net in (wm.reward_head.net[-1], agent.critic.net[-1]):
            net.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))
        wm.cont_head.net[-1].weight.zero_()
        wm.cont_head.net[-1].bias.fill_(5.0)


def test_dynamics_backprop_sends_the_return_gradient_through_the_world_model_into_the_actor():
    wm = tiny_world_model("vector", "box").requires_grad_(False)  # frozen, as behavior_update's callers do
    cfg = tiny_behavior_config("dynamics")
    agent = ActorCritic.for_world_model(dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, entropy=0.0)), wm)
    nonzero_heads(wm, agent)
    recording = RecordingWorldModel(wm)
    batch = episode_batch("vector", "box")
    with torch.no_grad():
        post = wm.observe(batch)
    actor_loss, _, _ = agent.loss(recording, post, batch)
    actor_loss.backward()
    H = cfg.horizon
    assert len(recording.fed) == H + 1
    # every executed action gets the gradient of the returns through the dynamics and heads
    for h in range(H):
        assert recording.fed[h].grad is not None and recording.fed[h].grad.abs().sum() > 0, h
    # without an entropy bonus, the returns are the actor's only gradient
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())
    # REINFORCE feeds the dynamics constant actions: the return gradient cannot reach the actor that way
    reinforce = ActorCritic.for_world_model(dataclasses.replace(agent.cfg, actor=dataclasses.replace(
        agent.cfg.actor, grad="reinforce")), wm)
    recording = RecordingWorldModel(wm)
    reinforce.loss(recording, post, batch)
    assert not any(a.requires_grad for a in recording.fed)


def test_dynamics_backprop_reaches_the_actor_only_through_its_actions():
    """DreamerV3 feeds the actor ``sg(feat)``: the actor's input carries no gradient, while the
    imagined states downstream of its sampled actions do (through the dynamics). So the actor's
    whole gradient is the return gradient at the actions it fed the dynamics, chained through
    the actions alone (no second path through later actor inputs)."""
    wm = tiny_world_model("vector", "box").requires_grad_(False)  # frozen, as behavior_update's callers do
    cfg = tiny_behavior_config("dynamics")
    agent = ActorCritic.for_world_model(dataclasses.replace(cfg, actor=dataclasses.replace(cfg.actor, entropy=0.0)), wm)
    nonzero_heads(wm, agent)
    batch = episode_batch("vector", "box")
    with torch.no_grad():
        post = wm.observe(batch)
    inputs: list[torch.Tensor] = []
    hook = agent.actor.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    recording = RecordingWorldModel(wm)
    actor_loss, _, _ = agent.loss(recording, post, batch)
    hook.remove()
    H = cfg.horizon
    assert len(inputs) == H + 1 and not any(x.requires_grad for x in inputs)  # the actor reads sg(feat)
    assert wm.features(recording.states).requires_grad  # the actions reach the states (img_step)
    params = list(agent.actor.parameters())
    grads = torch.autograd.grad(actor_loss, params + recording.fed, retain_graph=True, allow_unused=True)
    direct, at_actions = grads[:len(params)], grads[len(params):]
    assert all(at_actions[h] is not None and at_actions[h].abs().sum() > 0 for h in range(H))
    executed = recording.fed[:H]  # the last action is never executed
    chained = torch.autograd.grad(executed, params, at_actions[:H], allow_unused=True)
    for got, want in zip(direct, chained):
        torch.testing.assert_close(got, want if want is not None else torch.zeros_like(got))
    assert any(g.abs().sum() > 0 for g in direct)


@pytest.mark.parametrize("grad", ["reinforce", "dynamics"])
def test_critic_loss_sends_nothing_to_the_actor(grad):
    wm = tiny_world_model().requires_grad_(False)
    agent = ActorCritic.for_world_model(tiny_behavior_config(grad), wm)
    nonzero_heads(wm, agent)
    batch = episode_batch()
    with torch.no_grad():
        post = wm.observe(batch)
    _, critic_loss, _ = agent.loss(wm, post, batch)
    critic_loss.backward()
    assert all(p.grad is None for p in agent.actor.parameters())


# --- the loss parts compose to the loss -----------------------------------------------------------------


@pytest.mark.parametrize("action", ["discrete", "box"])
def test_loss_is_its_parts(action):
    """``loss`` is ``actor_loss``, ``critic_loss`` plus the scaled ``replay_value_loss`` on one
    scored rollout (what the dream views reuse through ``score``)."""
    wm = tiny_world_model("vector", action).requires_grad_(False)
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    twin = copy.deepcopy(agent)  # the return normaliser's state moves with each call
    batch = episode_batch("vector", action, B=2, T=4)
    with torch.no_grad():
        post = wm.observe(batch)
    torch.manual_seed(3)
    actor_loss, critic_loss, metrics = agent.loss(wm, post, batch)
    torch.manual_seed(3)
    dynamics = twin.grad_mode == "dynamics"
    states, _, logp, entropy = twin.imagine(wm, post.detach().flatten(0, 1), twin.cfg.horizon, dynamics)
    scored = twin.score(wm, wm.features(states), 1.0 - batch.is_terminal.flatten().float(), dynamics)
    scale = twin._return_scale(scored.returns)
    advantage = (scored.returns - scored.value[:, :-1].detach()) / scale
    torch.testing.assert_close(actor_loss, twin.actor_loss(scored, advantage, logp, entropy, dynamics),
                               rtol=0, atol=0)
    replay = twin.replay_value_loss(wm, post, batch, scored.returns[:, 0].detach().reshape(2, 4))
    torch.testing.assert_close(critic_loss, twin.critic_loss(scored) + twin.cfg.critic.replay_scale * replay,
                               rtol=0, atol=0)
    torch.testing.assert_close(metrics["critic/replay_loss"], replay.detach(), rtol=0, atol=0)
    torch.testing.assert_close(metrics["imag/return"], scored.returns.mean().detach(), rtol=0, atol=0)


# --- the artifact --------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    wm = tiny_world_model("vector", "box").requires_grad_(False)
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    agent._return_scale(torch.arange(50.0)[None])  # non-default normaliser state
    agent.update_slow_critic()
    path = tmp_path / "behavior.pt"
    agent.save(path, wm, stage_config={"seed": 3}, update=5, world_model_update=7, env_config={"id": "Env-v0"},
               env_steps=123)
    loaded, artifact = ActorCritic.load(path, wm)
    assert loaded.cfg == agent.cfg
    want = agent.state_dict()
    assert set(loaded.state_dict()) == set(want)
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    feat = wm.features(wm.initial_state(3))
    torch.testing.assert_close(loaded.policy(feat).mean, agent.policy(feat).mean, rtol=0, atol=0)
    torch.testing.assert_close(loaded.value(feat, slow=True).mean, agent.value(feat, slow=True).mean, rtol=0, atol=0)
    assert (artifact.update, artifact.world_model_update, artifact.env_steps) == (5, 7, 123)
    assert artifact.env_config == {"id": "Env-v0"} and artifact.stage_config == {"seed": 3}


def test_load_refuses_a_world_model_with_other_spaces(tmp_path):
    wm = tiny_world_model("vector", "discrete")
    ActorCritic.for_world_model(tiny_behavior_config(), wm).save(tmp_path / "behavior.pt", wm)
    other = tiny_world_model("vector", "box")
    with pytest.raises(DreamerError, match=r"(?s)does not fit.*action space.*Box.*Discrete\(4\)"):
        ActorCritic.load(tmp_path / "behavior.pt", other)


def test_behavior_update_warms_up_the_actor_and_critic_learning_rates():
    from dreamer_core.optim import make_optimizer
    from dreamer_core.stages.updates import behavior_update

    wm = tiny_world_model("vector", "discrete").requires_grad_(False)
    cfg = tiny_behavior_config()
    cfg = dataclasses.replace(cfg, actor_optim=dataclasses.replace(cfg.actor_optim, warmup=10),
                              critic_optim=dataclasses.replace(cfg.critic_optim, warmup=4))
    agent = ActorCritic.for_world_model(cfg, wm)
    groups = agent.parameter_groups()
    actor_optim, critic_optim = make_optimizer(groups["actor"], cfg.actor_optim), \
        make_optimizer(groups["critic"], cfg.critic_optim)
    batch = episode_batch("vector", "discrete", B=2, T=6)
    for update, actor_factor, critic_factor in ((0, 0.1, 0.25), (4, 0.5, 1.0), (20, 1.0, 1.0)):
        behavior_update(wm, agent, actor_optim, critic_optim, cfg, batch, update=update)
        assert actor_optim.param_groups[0]["lr"] == pytest.approx(cfg.actor_optim.lr * actor_factor)
        assert critic_optim.param_groups[0]["lr"] == pytest.approx(cfg.critic_optim.lr * critic_factor)
