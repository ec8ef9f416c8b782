"""Tests of nets/rssm.py: shapes, resets, alignment, equivalence of the fast path, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dreamer_core.nets.distributions import GaussianLatent, OneHotDist, kl_categorical, kl_gaussian
from dreamer_core.nets.encoders import MultiDecoder, MultiEncoder, preprocess_image
from dreamer_core.nets.rssm import RSSM, RSSMConfig, RSSMState
from tests.nets import single_thread  # noqa: F401  (autouse fixture)
from tests.nets.test_layers_encoders import OBS_SPACES, SMALL, random_obs

E, A = 6, 3
TINY = RSSMConfig(deter=32, hidden=16, stoch=4, classes=4)
VARIANTS = {
    "categorical": TINY,
    "gaussian": dataclasses.replace(TINY, latent="gaussian"),
    "blocks8": dataclasses.replace(TINY, gru_blocks=8),
    "gaussian_blocks8_layers2": dataclasses.replace(
        TINY, latent="gaussian", gru_blocks=8, img_layers=2, obs_layers=2
    ),
}


def make_rssm(cfg: RSSMConfig = TINY, seed: int = 0) -> RSSM:
    torch.manual_seed(seed)
    return RSSM(cfg, E, A)


def inputs(B: int, T: int, seed: int = 0, first_at: tuple[int, ...] = (0,)):
    gen = torch.Generator().manual_seed(seed)
    embed = torch.randn(B, T, E, generator=gen)
    action = torch.randn(B, T, A, generator=gen)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, list(first_at)] = True
    return embed, action, is_first


def assert_states_equal(lhs: RSSMState, rhs: RSSMState, **tol) -> None:
    for field in dataclasses.fields(RSSMState):
        a, b = getattr(lhs, field.name), getattr(rhs, field.name)
        assert (a is None) == (b is None), field.name
        if a is not None:
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("B, T", [(1, 1), (1, 5), (3, 1), (3, 5)])
def test_observe_imagine_shapes(variant, B, T):
    cfg = VARIANTS[variant]
    rssm = make_rssm(cfg)
    post, prior = rssm.observe(*inputs(B, T))
    stoch_shape = (cfg.stoch, cfg.classes) if cfg.latent == "categorical" else (cfg.stoch,)
    for state in (post, prior):
        assert state.batch_shape == (B, T) and state.deter.shape == (B, T, cfg.deter)
        assert state.stoch.shape == (B, T, *stoch_shape)
        assert state.feat().shape == (B, T, cfg.feat_dim) == (B, T, rssm.feat_dim)
    assert torch.equal(post.deter, prior.deter)
    if cfg.latent == "categorical":
        assert post.logits.shape == (B, T, cfg.stoch, cfg.classes) and post.mean is None
    else:
        assert post.mean.shape == post.std.shape == (B, T, cfg.stoch) and post.logits is None
    H = 4
    states, actions = rssm.imagine(
        post.flatten(0, 1).detach(), lambda s: torch.tanh(s.deter[:, :A]), H
    )
    assert states.batch_shape == (B * T, H + 1) and actions.shape == (B * T, H + 1, A)
    priors = rssm.imagine_with_actions(post[:, -1], torch.randn(B, H, A))
    assert priors.batch_shape == (B, H)


def test_gru_blocks_must_divide_deter():
    with pytest.raises(ValueError, match="divisible"):
        RSSM(dataclasses.replace(TINY, deter=30, gru_blocks=8), E, A)


@pytest.mark.parametrize("variant", ["categorical", "gaussian", "blocks8"])
def test_observe_equals_a_naive_obs_step_loop(variant):
    """The fast path (embed projection before the loop, prior head after it) is the same maths."""
    rssm = make_rssm(VARIANTS[variant])
    embed, action, is_first = inputs(3, 6, first_at=(0, 3))
    post, prior = rssm.observe(embed, action, is_first, sample=False)
    state, posts, priors = rssm.initial(3), [], []
    for t in range(6):
        state, prior_t = rssm.obs_step(
            state, action[:, t], embed[:, t], is_first[:, t], sample=False
        )
        posts.append(state)
        priors.append(prior_t)
    assert_states_equal(post, RSSMState.stack(posts, 1), rtol=1e-5, atol=1e-6)
    assert_states_equal(prior, RSSMState.stack(priors, 1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["categorical", "gaussian", "blocks8"])
def test_observe_equals_a_sampled_obs_step_loop_when_draws_share_their_noise(variant, monkeypatch):
    """With sampling on: ``observe`` draws the posteriors in its loop and the priors after it,
    ``obs_step`` a prior before each posterior, so one seed gives the two paths different samples.
    Given the same noise at every draw, the order cannot matter and the paths agree (categorical
    samples exactly; Gaussian ones up to observe's batched embedding projection)."""
    for cls, name in ((OneHotDist, "sample_with_index"), (GaussianLatent, "sample")):
        sample = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, generator=None, _s=sample: _s(
            self, torch.Generator().manual_seed(0)))
    rssm = make_rssm(VARIANTS[variant])
    embed, action, is_first = inputs(3, 6, first_at=(0, 3))
    with torch.no_grad():
        post, prior = rssm.observe(embed, action, is_first)
        state, posts, priors = rssm.initial(3), [], []
        for t in range(6):
            state, prior_t = rssm.obs_step(state, action[:, t], embed[:, t], is_first[:, t])
            posts.append(state)
            priors.append(prior_t)
    loop_post, loop_prior = RSSMState.stack(posts, 1), RSSMState.stack(priors, 1)
    if VARIANTS[variant].latent == "categorical":
        assert torch.equal(post.deter, loop_post.deter) and torch.equal(post.stoch, loop_post.stoch)
    assert_states_equal(post, loop_post, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior.deter, loop_prior.deter, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["categorical", "gaussian", "blocks8"])
def test_is_first_restarts_from_the_initial_state(variant):
    rssm = make_rssm(VARIANTS[variant])
    t = 3
    embed, action, is_first = inputs(2, 7, first_at=(0, t))
    post, prior = rssm.observe(embed, action, is_first, sample=False)
    fresh_post, fresh_prior = rssm.observe(
        embed[:, t:], action[:, t:], is_first[:, t:], sample=False
    )
    assert_states_equal(post[:, t:], fresh_post, rtol=1e-5, atol=1e-6)
    assert_states_equal(prior[:, t:], fresh_prior, rtol=1e-5, atol=1e-6)
    # the action of a first row and everything before it are ignored
    action2, embed2 = action.clone(), embed.clone()
    action2[:, : t + 1] += 5.0
    embed2[:, :t] -= 3.0
    post2, _ = rssm.observe(embed2, action2, is_first, sample=False)
    assert_states_equal(post[:, t:], post2[:, t:], rtol=1e-5, atol=1e-6)
    # with sampling, the deterministic state and the posterior logits at t are still a fresh start
    gen = torch.Generator().manual_seed(0)
    post3, _ = rssm.observe(embed, action, is_first, generator=gen)
    torch.testing.assert_close(post3.deter[:, t], fresh_post.deter[:, 0], rtol=1e-5, atol=1e-6)


def test_one_step_priors_of_observe_are_img_steps_from_the_previous_posterior():
    rssm = make_rssm()
    embed, action, is_first = inputs(3, 5)
    gen = torch.Generator().manual_seed(0)
    post, prior = rssm.observe(embed, action, is_first, generator=gen)
    for t in range(1, 5):
        step = rssm.img_step(post[:, t - 1], action[:, t], sample=False)
        torch.testing.assert_close(step.deter, prior.deter[:, t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(step.logits, prior.logits[:, t], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["categorical", "gaussian"])
def test_imagine_with_actions_equals_a_manual_img_step_loop(variant):
    rssm = make_rssm(VARIANTS[variant])
    embed, action, is_first = inputs(2, 8)
    post, _ = rssm.observe(embed, action, is_first, generator=torch.Generator().manual_seed(0))
    t, H = 2, 5
    actions = action[:, t + 1 : t + 1 + H]
    priors = rssm.imagine_with_actions(
        post[:, t], actions, generator=torch.Generator().manual_seed(1)
    )
    gen, state, manual = torch.Generator().manual_seed(1), post[:, t], []
    for h in range(H):
        state = rssm.img_step(state, actions[:, h], generator=gen)
        manual.append(state)
    assert_states_equal(priors, RSSMState.stack(manual, 1))
    # without observations in between, observe's prior at t+1 is the first open-loop step
    _, prior = rssm.observe(embed, action, is_first, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(priors.deter[:, 0], prior.deter[:, t + 1], rtol=1e-5, atol=1e-6)


def test_imagine_alignment():
    rssm = make_rssm()
    start = rssm.initial(4)
    calls = []

    def policy(state: RSSMState) -> torch.Tensor:
        calls.append(state.deter)
        return torch.tanh(state.deter[:, :A])

    states, actions = rssm.imagine(start, policy, horizon=3, sample=False)
    assert len(calls) == 4
    torch.testing.assert_close(states.deter[:, 0], start.deter)
    for h in range(3):
        torch.testing.assert_close(actions[:, h], policy(states[:, h]))
        step = rssm.img_step(states[:, h], actions[:, h], sample=False)
        assert_states_equal(step, states[:, h + 1])


def test_initial_state():
    rssm = make_rssm()
    init = rssm.initial(3)
    assert init.batch_shape == (3,)
    torch.testing.assert_close(init.deter, torch.tanh(rssm.init_deter).expand(3, -1))
    dist = OneHotDist(rssm.prior_net(init.deter[0]).unflatten(-1, (4, 4)), 0.01)
    assert torch.equal(init.stoch[0], dist.mode.detach())
    zeros = RSSM(dataclasses.replace(TINY, learned_init=False, latent="gaussian"), E, A).initial(
        (2, 3)
    )
    assert (
        zeros.batch_shape == (2, 3)
        and not zeros.deter.any()
        and torch.equal(zeros.std, torch.ones(2, 3, 4))
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_parameter_gets_a_finite_gradient(variant):
    cfg = VARIANTS[variant]
    space = OBS_SPACES["dict"]
    torch.manual_seed(0)
    enc = MultiEncoder(space, **SMALL)
    rssm = RSSM(cfg, enc.embed_dim, A)
    dec = MultiDecoder(cfg.feat_dim, space, **SMALL)
    obs = random_obs(space, (2, 4))
    _, action, is_first = inputs(2, 4, first_at=(0, 2))
    post, prior = rssm.observe(enc(obs), action, is_first)
    loss = sum(
        -d.log_prob(preprocess_image(obs[k]) if k in dec.image_keys else obs[k]).mean()
        for k, d in dec(post.feat()).items()
    )
    if cfg.latent == "categorical":
        loss = loss + kl_categorical(post.logits, prior.logits).mean()
    else:
        loss = loss + kl_gaussian(post.mean, post.std, prior.mean, prior.std).mean()
    loss.backward()
    for module in (enc, rssm, dec):
        for name, param in module.named_parameters():
            assert param.grad is not None, name
            assert torch.isfinite(param.grad).all(), name


def test_dist_of_a_state():
    rssm = make_rssm()
    post, prior = rssm.observe(*inputs(2, 3))
    dist = rssm.dist(post)
    assert isinstance(dist, OneHotDist)
    torch.testing.assert_close(dist.probs, post.logits.exp())
    torch.testing.assert_close(dist.logits, post.logits)
    assert (dist.probs >= 0.01 / 4 - 1e-7).all()
    gauss = make_rssm(VARIANTS["gaussian"])
    post, _ = gauss.observe(*inputs(2, 3))
    assert isinstance(gauss.dist(post), GaussianLatent) and (post.std >= 0.1).all()


def test_determinism_with_fixed_seeds():
    outs = []
    for _ in range(2):
        rssm = make_rssm(seed=7)
        post, prior = rssm.observe(*inputs(2, 5), generator=torch.Generator().manual_seed(3))
        states, _ = rssm.imagine(
            post[:, -1], lambda s: s.deter[:, :A], 3, torch.Generator().manual_seed(4)
        )
        outs.append((post, prior, states))
    for lhs, rhs in zip(outs[0], outs[1]):
        assert_states_equal(lhs, rhs, rtol=0, atol=0)
    post_other, _ = make_rssm(seed=7).observe(
        *inputs(2, 5), generator=torch.Generator().manual_seed(99)
    )
    assert not torch.equal(post_other.stoch, outs[0][0].stoch)


def test_state_helpers():
    rssm = make_rssm()
    post, _ = rssm.observe(*inputs(3, 5))
    flat = post.flatten(0, 1)
    assert flat.batch_shape == (15,) and flat.reshape(3, 5).stoch.shape == (3, 5, 4, 4)
    assert_states_equal(flat.reshape(3, 5), post)
    assert_states_equal(post.select(1, 2), post[:, 2])
    assert_states_equal(post.select(-1, 2), post[:, 2])
    assert_states_equal(RSSMState.stack([post[:, t] for t in range(5)], dim=-1), post)
    assert_states_equal(RSSMState.cat([post[:, :2], post[:, 2:]], dim=1), post)
    mask = torch.tensor([True, False, True])
    mixed = RSSMState.where(mask, post[:, 0], post[:, 1])
    assert torch.equal(mixed.deter[1], post.deter[1, 1]) and torch.equal(
        mixed.stoch[0], post.stoch[0, 0]
    )
    assert not post.detach().deter.requires_grad and post.deter.requires_grad
    assert post.map(lambda x: x * 0).deter.abs().sum() == 0


@pytest.mark.parametrize("variant", ["categorical", "blocks8"])
def test_sampled_states_carry_their_classes_and_imagine_the_same_without_them(variant, monkeypatch):
    """Sampled categorical states (and the learned initial state) carry the class of every group
    (``index``, the position of the one); combining them with a state that lacks it drops it. The
    gather-sum layers use those classes instead of searching, with bit-identical results and
    gradients (compared with the classes withheld)."""
    from dreamer_core.nets import layers
    from dreamer_core.nets import rssm as rssm_module

    monkeypatch.setattr(layers.OneHotAwareLinear, "min_rows", 1)
    monkeypatch.setattr(layers.OneHotAwareLinear, "min_classes", 1)
    cfg = dataclasses.replace(VARIANTS[variant], stoch=3, classes=5)
    model = make_rssm(cfg)
    post, prior = model.observe(*inputs(4, 6))
    for state in (post, prior):
        assert state.index.dtype == torch.long and torch.equal(state.index, state.stoch.argmax(-1))
    learned = model.initial(4)  # the mode of the learned initial deter's prior
    assert torch.equal(learned.index, learned.stoch.argmax(-1))
    unknown = dataclasses.replace(post[:, 0], index=None)  # e.g. a zero initial state
    assert RSSMState.stack([unknown, post[:, 1]], 1).index is None
    assert RSSMState.cat([post[:, :1], unknown[:, None]], 1).index is None
    assert RSSMState.where(torch.tensor([True, False, True, False]), unknown, post[:, 0]).index is None
    assert torch.equal(RSSMState.stack([post[:, 0], post[:, 1]], 1).index, post.index[:, :2])

    def rollout():
        torch.manual_seed(7)
        net = make_rssm(cfg)
        start, _ = net.observe(*inputs(4, 3))
        head = layers.OneHotAwareLinear(cfg.deter + cfg.stoch * cfg.classes, A, True, net.feat_onehot)
        states, actions = net.imagine(start.flatten(0, 1), lambda s: torch.tanh(head(s.feat())), 4,
                                      torch.Generator().manual_seed(1))
        loss = head(states.feat()).square().sum() + actions.sum()
        loss.backward()
        return states, [p.grad.clone() for p in (*net.parameters(), *head.parameters()) if p.grad is not None]

    searches = []
    real_search = layers._onehot_positions
    monkeypatch.setattr(layers, "_onehot_positions", lambda x3: searches.append(1) or real_search(x3))
    fast, fast_grads = rollout()
    assert searches == []
    monkeypatch.setattr(rssm_module, "remember_onehot", lambda *args: None)
    slow, slow_grads = rollout()
    assert searches  # without the classes the layers search
    assert_states_equal(fast, slow, rtol=0, atol=0)
    assert len(fast_grads) == len(slow_grads) and all(torch.equal(a, b) for a, b in zip(fast_grads, slow_grads))


def test_observe_under_bf16_autocast_keeps_latents_float32():
    rssm = make_rssm()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        post, prior = rssm.observe(*inputs(2, 3))
    assert (
        post.logits.dtype == prior.logits.dtype == torch.float32
        and post.deter.dtype == torch.float32
    )
    assert torch.isfinite(post.feat()).all()
