"""Tests of nets/actions.py: the one place that encodes actions. Per space kind: the stored ->
model encoding (exact values; Box normalised to [-1, 1] by its bounds), the actor -> model map
(the identity), the env actions (dtype, shape, inside the space, scaled to the bounds), the
policy and inverse-head distributions against torch references, the refusals and their
messages, and the inverse-dynamics targets (normalised for Box) and metrics (exact values)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import distributions as td

from dreamer_core.errors import DreamerError
from dreamer_core.nets.actions import ActionSpace
from dreamer_core.nets.distributions import BoundedNormal, MultiBernoulliDist, OneHotDist
from dreamer_core.nets.rssm import RSSM, RSSMConfig
from tests.nets import single_thread  # noqa: F401  (autouse fixture)

DISCRETE = gym.spaces.Discrete(4, start=2)  # stored actions 2..5
MULTIBINARY = gym.spaces.MultiBinary(5)
MULTIBINARY_2D = gym.spaces.MultiBinary([2, 3])
MULTIDISCRETE = gym.spaces.MultiDiscrete([3, 2])
BOX = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))
BOX_2D = gym.spaces.Box(-3.0, 5.0, (2, 2), np.float32)
ASYMMETRIC = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32))
PENDULUM = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


# --- kinds and sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("space, kind, dim, policy_out, grad", [
    (DISCRETE, "discrete", 4, 4, "reinforce"),
    (MULTIBINARY, "multibinary", 5, 5, "reinforce"),
    (MULTIBINARY_2D, "multibinary", 6, 6, "reinforce"),
    (MULTIDISCRETE, "multidiscrete", 5, 5, "reinforce"),
    (BOX, "box", 2, 4, "dynamics"),
    (BOX_2D, "box", 4, 8, "dynamics"),
])
def test_kind_and_sizes(space, kind, dim, policy_out, grad):
    actions = ActionSpace(space)
    assert (actions.kind, actions.dim, actions.policy_out_dim, actions.default_actor_grad) == (kind, dim, policy_out,
                                                                                               grad)
    if kind != "multidiscrete":
        assert actions.inverse_out_dim == policy_out


def test_unsupported_space_type():
    with pytest.raises(TypeError, match="unsupported action space"):
        ActionSpace(gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3))))


# --- stored -> model ------------------------------------------------------------------------------


def test_encode_discrete_is_a_one_hot_of_the_index_minus_start():
    stored = torch.tensor([[2, 5], [3, 4]])  # [B, T]
    want = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 1]], [[0, 1, 0, 0], [0, 0, 1, 0]]])
    got = ActionSpace(DISCRETE).encode(stored)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_encode_multidiscrete_concatenates_one_hots_per_dimension():
    got = ActionSpace(MULTIDISCRETE).encode(torch.tensor([[0, 1], [2, 0]]))
    assert torch.equal(got, torch.tensor([[1.0, 0, 0, 0, 1], [0, 0, 1, 1, 0]]))


def test_encode_multibinary_is_the_bits_as_floats_flattened():
    bits = torch.tensor([[[1, 0, 1], [0, 0, 1]]], dtype=torch.int8)  # [B=1, 2, 3]
    got = ActionSpace(MULTIBINARY_2D).encode(bits)
    assert got.dtype == torch.float32 and torch.equal(got, torch.tensor([[1.0, 0, 1, 0, 0, 1]]))
    flat = ActionSpace(MULTIBINARY).encode(torch.tensor([[0, 1, 1, 0, 1]], dtype=torch.int8))
    assert torch.equal(flat, torch.tensor([[0.0, 1, 1, 0, 1]]))


def test_encode_box_normalises_by_the_bounds_per_dimension():
    values = torch.tensor([[[[-3.0, 1.0], [5.0, 3.0]]]])  # [B=1, T=1, 2, 2], bounds [-3, 5]
    got = ActionSpace(BOX_2D).encode(values)
    assert got.dtype == torch.float32 and torch.equal(got, torch.tensor([[[-1.0, 0.0, 1.0, 0.5]]]))
    # asymmetric bounds low=[-2, 0], high=[2, 5]: -1 at low, 1 at high, per dimension
    stored = torch.tensor([[-2.0, 0.0], [2.0, 5.0], [0.0, 2.5], [1.0, 1.0], [-1.0, 4.0]])
    want = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.5, -0.6], [-0.5, 0.6]])
    got = ActionSpace(ASYMMETRIC).encode(stored)
    torch.testing.assert_close(got, want)
    assert got.min() == -1.0 and got.max() == 1.0  # exactly, at the bounds


def test_box_actions_in_the_bounds_reach_the_model_in_minus_one_to_one_and_round_trip():
    actions = ActionSpace(ASYMMETRIC)
    gen = torch.Generator().manual_seed(0)
    stored = actions.low + torch.rand(256, 2, generator=gen) * (actions.high - actions.low)  # env units
    stored[:2] = torch.stack([actions.low, actions.high])
    model = actions.encode(stored)
    assert model.min() == -1.0 and model.max() == 1.0 and model.abs().max() <= 1.0
    actor = model  # the actor works in the model's units
    assert actions.to_model(actor) is actor
    env = actions.to_env(actor)  # stored -> model -> env
    assert env.dtype == np.float32 and all(ASYMMETRIC.contains(a) for a in env)
    np.testing.assert_allclose(env, stored.numpy(), rtol=0, atol=1e-6)
    torch.testing.assert_close(actions.denormalise(actions.normalise(stored)), stored)
    # differentiable: d env / d model = (high - low) / 2 per dimension
    a = torch.zeros(1, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(actions.denormalise(a).sum(), a)
    torch.testing.assert_close(grad, torch.tensor([[2.0, 2.5]]))


def test_pendulum_torques_above_one_stay_distinct_in_the_model():
    actions = ActionSpace(PENDULUM)  # bounds +-2: 1.0 and 2.0 are different torques
    model = actions.encode(torch.tensor([[1.0], [2.0], [-2.0], [-1.0]]))
    torch.testing.assert_close(model, torch.tensor([[0.5], [1.0], [-1.0], [-0.5]]))
    # and the RSSM (its input guard divides by max(1, |a|)) steps differently under them
    torch.manual_seed(0)
    rssm = RSSM(RSSMConfig(deter=16, hidden=16, stoch=4, classes=4), 6, actions.dim)
    start = rssm.initial(2)
    with torch.no_grad():
        deter = rssm.img_step(start, model[:2], sample=False).deter  # torques 1.0 and 2.0
    assert not torch.allclose(deter[0], deter[1])


def test_unbounded_and_degenerate_box_dimensions_pass_unchanged():
    space = gym.spaces.Box(np.array([-np.inf, 0.0, -2.0, 3.0], np.float32),
                           np.array([np.inf, np.inf, 2.0, 3.0], np.float32))  # free, half-open, scaled, fixed
    actions = ActionSpace(space)
    assert actions.scaled.tolist() == [False, False, True, False]
    stored = torch.tensor([[-7.5, 12.0, 1.0, 3.0]])
    model = actions.encode(stored)
    assert torch.equal(model, torch.tensor([[-7.5, 12.0, 0.5, 3.0]]))
    assert model.isfinite().all()
    assert torch.equal(actions.denormalise(model), stored)
    (grad,) = torch.autograd.grad(actions.normalise(stored.requires_grad_(True)).sum(), stored)
    assert torch.equal(grad, torch.tensor([[1.0, 1.0, 0.5, 1.0]]))  # finite gradients everywhere
    # the env gets raw values where unbounded, the fixed value where low == high
    assert actions.to_env(torch.tensor([[-7.5, 12.0, 0.5, 0.9]])).tolist() == [[-7.5, 12.0, 1.0, 3.0]]


@pytest.mark.parametrize("space", [DISCRETE, MULTIBINARY, MULTIDISCRETE, BOX, BOX_2D])
def test_to_model_is_the_identity(space):
    actions = ActionSpace(space)
    x = torch.rand(3, actions.dim) * 2 - 1
    assert actions.to_model(x) is x


def test_to_env_discrete_adds_the_start():
    onehot = torch.tensor([[0.0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    env = ActionSpace(DISCRETE).to_env(onehot)
    assert env.dtype == np.int64 and env.shape == (3,)
    assert env.tolist() == [4, 2, 5] and all(DISCRETE.contains(a) for a in env)


def test_to_env_multibinary_gives_int8_bits_in_the_space_shape():
    bits = torch.tensor([[1.0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1]])
    env = ActionSpace(MULTIBINARY_2D).to_env(bits)
    assert env.dtype == np.int8 and env.shape == (2, 2, 3)
    assert env[0].tolist() == [[1, 0, 1], [1, 0, 0]] and all(MULTIBINARY_2D.contains(a) for a in env)
    straight_through = bits.clone().requires_grad_(True) * 1.0  # a sample with a graph
    assert ActionSpace(MULTIBINARY_2D).to_env(straight_through).dtype == np.int8


def test_to_env_box_scales_the_actor_sample_to_the_bounds():
    actor = torch.tensor([[-1.0, -1.0, 1.0, 1.0], [0.0, 0.5, -0.5, 1.0]])
    env = ActionSpace(BOX_2D).to_env(actor)
    assert env.dtype == np.float32 and env.shape == (2, 2, 2)
    np.testing.assert_allclose(env[0], [[-3.0, -3.0], [5.0, 5.0]])
    np.testing.assert_allclose(env[1], [[1.0, 3.0], [-1.0, 5.0]])
    assert all(BOX_2D.contains(a) for a in env)
    env = ActionSpace(BOX).to_env(torch.tensor([[0.0, 0.0]]))
    assert env.dtype == np.float32 and env.shape == (1, 2) and env[0].tolist() == [0.0, 5.0]
    env = ActionSpace(ASYMMETRIC).to_env(torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.5, -0.6]]))
    np.testing.assert_allclose(env, [[-2.0, 0.0], [2.0, 5.0], [1.0, 1.0]], rtol=0, atol=1e-6)
    assert ActionSpace(PENDULUM).to_env(torch.tensor([[0.5], [1.0]])).tolist() == [[1.0], [2.0]]
    # rounding never leaves the space: samples clipped to [-1, 1] land exactly on the bounds
    odd = gym.spaces.Box(np.float32(-0.1), np.float32(0.3), (1,), np.float32)
    env = ActionSpace(odd).to_env(torch.tensor([[-1.0], [1.0], [1.5], [-3.0]]))
    assert env[:, 0].tolist() == [odd.low[0], odd.high[0], odd.high[0], odd.low[0]]


# --- policy distributions -------------------------------------------------------------------------


def test_discrete_policy_is_a_mixed_categorical():
    actions = ActionSpace(DISCRETE)
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    dist = actions.policy_dist(logits, unimix=0.01, min_std=0.1, max_std=1.0)
    assert isinstance(dist, OneHotDist)
    ref = td.Categorical(probs=0.99 * logits.softmax(-1) + 0.01 / 4)
    onehot = dist.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(dist.log_prob(onehot), ref.log_prob(onehot.argmax(-1)))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    env = actions.to_env(onehot)
    assert env.dtype == np.int64 and set(env.tolist()) <= {2, 3, 4, 5}
    assert (env == onehot.argmax(-1).numpy() + 2).all()


def test_box_policy_is_a_bounded_normal_rescaled_to_the_bounds():
    actions = ActionSpace(BOX)
    raw = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    dist = actions.policy_dist(raw, unimix=0.01, min_std=0.2, max_std=0.8)
    assert isinstance(dist, BoundedNormal)
    torch.testing.assert_close(dist.mean, torch.tanh(raw[:, :2]))
    torch.testing.assert_close(dist.std, 0.6 * torch.sigmoid(raw[:, 2:] + 2) + 0.2)
    a = dist.sample(torch.Generator().manual_seed(1))
    assert a.abs().max() <= 1.0
    ref = td.Normal(dist.mean, dist.std)
    torch.testing.assert_close(dist.log_prob(a), ref.log_prob(a).sum(-1))
    torch.testing.assert_close(dist.entropy(), ref.entropy().sum(-1))
    env = actions.to_env(a)
    assert env.dtype == np.float32 and all(BOX.contains(x) for x in env)


def test_multibinary_policy_is_independent_bernoullis_with_unimix():
    actions = ActionSpace(MULTIBINARY)
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    dist = actions.policy_dist(logits, unimix=0.0, min_std=0.1, max_std=1.0)
    assert isinstance(dist, MultiBernoulliDist)
    ref = td.Independent(td.Bernoulli(logits=logits), 1)
    bits = dist.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(dist.log_prob(bits), ref.log_prob(bits), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dist.entropy(), ref.entropy(), atol=1e-5, rtol=1e-5)
    assert actions.to_env(bits).dtype == np.int8
    mixed = actions.policy_dist(torch.full((1, 5), -50.0), unimix=0.1, min_std=0.1, max_std=1.0)
    torch.testing.assert_close(mixed.probs, torch.full((1, 5), 0.05))  # unimix keeps every bit possible


def test_policy_support_refuses_multidiscrete_and_unbounded_boxes_with_what_to_do():
    with pytest.raises(DreamerError, match=r"not MultiDiscrete\(\[3 2\]\).*Flatten the action space in a wrapper"):
        ActionSpace(MULTIDISCRETE).check_policy_support()
    unbounded = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    with pytest.raises(DreamerError, match="needs a bounded Box.*infinite bounds.*ClipAction"):
        ActionSpace(unbounded).check_policy_support()
    half = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, np.inf], np.float32))
    with pytest.raises(DreamerError, match="bounded Box"):
        ActionSpace(half).check_policy_support()
    for space in (DISCRETE, MULTIBINARY, MULTIBINARY_2D, BOX, BOX_2D):
        ActionSpace(space).check_policy_support()  # no error


# --- inverse dynamics -----------------------------------------------------------------------------


def test_inverse_support_refuses_multidiscrete():
    with pytest.raises(DreamerError, match="--inverse-model supports Discrete, MultiBinary and Box.*without"):
        ActionSpace(MULTIDISCRETE).check_inverse_support()
    with pytest.raises(ValueError, match="does not support"):
        ActionSpace(MULTIDISCRETE).inverse_dist(torch.zeros(1, 5))
    for space in (DISCRETE, MULTIBINARY, BOX):
        ActionSpace(space).check_inverse_support()


def test_inverse_discrete_target_and_accuracy():
    actions = ActionSpace(DISCRETE)
    stored = torch.tensor([[2, 5, 3]])  # [B=1, T=3]
    target = actions.inverse_target(stored)
    assert target.dtype == torch.int64 and target.tolist() == [[0, 3, 1]]
    out = torch.tensor([[[5.0, 0, 0, 0], [0, 0, 0, 5], [0, 0, 5, 0]]])  # predicts 0, 3, 2
    dist = actions.inverse_dist(out)
    assert isinstance(dist, td.Categorical)
    torch.testing.assert_close(dist.log_prob(target), out.log_softmax(-1)[0, [0, 1, 2], [0, 3, 1]][None])
    assert actions.inverse_metric(dist, stored).tolist() == [[1.0, 1.0, 0.0]]


def test_inverse_multibinary_target_and_per_button_accuracy():
    actions = ActionSpace(MULTIBINARY_2D)
    stored = torch.tensor([[[[1, 0, 1], [0, 0, 0]], [[1, 1, 1], [1, 1, 1]]]], dtype=torch.int8)  # [1, 2, 2, 3]
    target = actions.inverse_target(stored)
    assert target.dtype == torch.float32 and target.tolist() == [[[1, 0, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]]
    out = torch.tensor([[[3.0, -3, 3, -3, -3, 3], [3.0, 3, -3, -3, -3, -3]]])  # 5/6 and 2/6 buttons right
    dist = actions.inverse_dist(out)
    torch.testing.assert_close(dist.log_prob(target), td.Bernoulli(logits=out).log_prob(target).sum(-1))
    torch.testing.assert_close(actions.inverse_metric(dist, stored), torch.tensor([[5 / 6, 2 / 6]]))


def test_inverse_box_target_is_normalised_and_scored_in_those_units():
    actions = ActionSpace(BOX)  # bounds [-2, 2] x [0, 10]
    stored = torch.tensor([[[1.0, 4.0], [-2.0, 10.0]]])  # [1, 2, 2], env units
    target = actions.inverse_target(stored)
    torch.testing.assert_close(target, torch.tensor([[[0.5, -0.2], [-1.0, 1.0]]]))
    torch.testing.assert_close(target, actions.encode(stored))  # the model's units
    out = torch.tensor([[[0.0, -0.2, 0.0, 0.0], [-1.0, 0.0, 1.0, 1.0]]])  # means (0, -0.2) and (-1, 0)
    dist = actions.inverse_dist(out)
    ref = td.Normal(out[..., :2], torch.nn.functional.softplus(out[..., 2:]) + 0.01)
    torch.testing.assert_close(dist.log_prob(target), ref.log_prob(target).sum(-1))
    torch.testing.assert_close(actions.inverse_metric(dist, stored), torch.tensor([[(0.25 + 0) / 2, (0 + 1) / 2]]))
