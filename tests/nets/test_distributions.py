"""Tests of nets/distributions.py: exact values, references from torch.distributions, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import distributions as td

from dreamer_core.nets.distributions import (
    BernoulliDist,
    BoundedNormal,
    GaussianLatent,
    MSEDist,
    OneHotDist,
    SymlogMSEDist,
    TwoHotDist,
    kl_categorical,
    kl_gaussian,
    symexp,
    symexp_bins,
    symlog,
    two_hot,
)
from tests.nets import single_thread  # noqa: F401  (autouse fixture)

BINS5 = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])


# --- symlog / symexp ---------------------------------------------------------------------------


def test_symlog_known_values():
    x = torch.tensor([0.0, math.e - 1, -(math.e - 1), math.e**2 - 1], dtype=torch.float64)
    assert torch.equal(symlog(x), torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64))
    assert symexp(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(
        math.e - 1, abs=1e-15
    )


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_symexp_inverts_symlog_over_a_wide_range(dtype, rtol):
    x = torch.cat(
        [torch.linspace(-1e6, 1e6, 10001), torch.logspace(-8, 6, 200), -torch.logspace(-8, 6, 200)]
    )
    x = x.to(dtype)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=rtol, atol=0.0)
    torch.testing.assert_close(symlog(symexp(symlog(x))), symlog(x), rtol=rtol, atol=0.0)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_symexp_symlog_roundtrip_property(value):
    x = torch.tensor(value, dtype=torch.float64)
    assert symexp(symlog(x)).item() == pytest.approx(value, rel=1e-12, abs=1e-300)


def test_gradcheck_symlog_symexp():
    x = torch.tensor([-50.0, -3.0, -0.5, 0.1, 2.0, 40.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(symlog, (x,))
    assert torch.autograd.gradcheck(symexp, (x.detach().clamp(-5, 5).requires_grad_(),))


# --- bins and two-hot --------------------------------------------------------------------------


def test_symexp_bins_are_symmetric_with_an_exact_zero():
    bins = symexp_bins()
    assert bins.shape == (255,) and bins.dtype == torch.float32
    assert bins[127].item() == 0.0 and bins[0].item() == -20.0 and bins[-1].item() == 20.0
    assert torch.equal(bins, -bins.flip(0))
    torch.testing.assert_close(bins.diff(), torch.full((254,), 40 / 254))
    torch.testing.assert_close(symexp_bins(4, -1.0, 2.0), torch.tensor([-1.0, 0.0, 1.0, 2.0]))


@pytest.mark.parametrize(
    "x, expected",
    [
        (0.3, [0, 0, 0.7, 0.3, 0]),
        (-0.3, [0, 0.3, 0.7, 0, 0]),
        (1.75, [0, 0, 0, 0.25, 0.75]),
        (0.0, [0, 0, 1, 0, 0]),
        (1.0, [0, 0, 0, 1, 0]),
        (-2.0, [1, 0, 0, 0, 0]),
        (2.0, [0, 0, 0, 0, 1]),
        (5.0, [0, 0, 0, 0, 1]),
        (-7.0, [1, 0, 0, 0, 0]),
    ],
)
def test_two_hot_known_bins(x, expected):
    weights = two_hot(torch.tensor(x), BINS5)
    torch.testing.assert_close(weights, torch.tensor(expected, dtype=torch.float32))


def test_two_hot_sheeprl_example_and_batch_shape():
    bins = torch.linspace(-5, 5, 11)
    weights = two_hot(torch.tensor([[2.3], [-5.0]]), bins)  # [2, 1, 11]
    assert weights.shape == (2, 1, 11)
    assert weights[0, 0, 7].item() == pytest.approx(0.7) and weights[
        0, 0, 8
    ].item() == pytest.approx(0.3)
    assert weights[1, 0, 0].item() == 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=-30, max_value=30, allow_nan=False), min_size=1, max_size=20))
def test_two_hot_properties(values):
    bins = symexp_bins().double()
    x = torch.tensor(values, dtype=torch.float64)
    weights = two_hot(x, bins)  # [n, 255]
    assert (weights >= 0).all() and ((weights > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones_like(x))
    torch.testing.assert_close((weights * bins).sum(-1), x.clamp(-20, 20))


# --- TwoHotDist --------------------------------------------------------------------------------


@pytest.mark.parametrize("index", [0, 3, 127, 200, 254])
def test_two_hot_dist_mean_of_a_concentrated_vector_is_the_bin(index):
    bins = symexp_bins()
    logits = torch.full((255,), -math.inf)
    logits[index] = 0.0
    assert TwoHotDist(logits, bins).mean.item() == symexp(bins[index]).item()
    large = torch.zeros(255)
    large[index] = 1e4
    assert TwoHotDist(large, bins).mode.item() == symexp(bins[index]).item()


def test_two_hot_dist_zero_logits_predict_exactly_zero():
    dist = TwoHotDist(torch.zeros(4, 7, 255), symexp_bins())
    assert torch.equal(dist.mean, torch.zeros(4, 7))


def test_two_hot_dist_log_prob_is_the_two_hot_cross_entropy():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    target = symexp(torch.tensor([0.3, -2.0, 9.0]))
    log_prob = TwoHotDist(logits, BINS5).log_prob(target)  # [3]
    logp = torch.log_softmax(logits, -1)
    expected = torch.stack([0.7 * logp[0, 2] + 0.3 * logp[0, 3], logp[1, 0], logp[2, 4]])
    torch.testing.assert_close(log_prob, expected)
    # a distribution matching the two-hot weights scores better than any other
    weights = two_hot(symlog(target), BINS5)
    best = TwoHotDist(torch.log(weights + 1e-9), BINS5).log_prob(target)
    assert (best > log_prob).all()


def test_gradcheck_two_hot_dist_log_prob():
    bins = symexp_bins(31, -5, 5).double()
    logits = torch.randn(4, 31, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([-30.0, 0.0, 1.5, 200.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: TwoHotDist(z, bins).log_prob(target), (logits,))
    assert torch.autograd.gradcheck(lambda z: TwoHotDist(z, bins).mean, (logits,))


# --- OneHotDist --------------------------------------------------------------------------------


def test_unimix_keeps_every_prob_above_floor():
    logits = torch.tensor([[100.0, -100.0, -100.0, -100.0], [0.0, 0.0, -1e9, 3.0]])
    dist = OneHotDist(logits, unimix=0.01)
    assert (dist.probs >= 0.01 / 4 - 1e-9).all()
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(2))
    torch.testing.assert_close(dist.logits, torch.log(dist.probs))
    expected = 0.99 * torch.softmax(logits, -1) + 0.0025
    torch.testing.assert_close(dist.probs, expected)


def test_one_hot_sample_is_one_hot_and_follows_probs():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    gen = torch.Generator().manual_seed(0)
    dist = OneHotDist(logits.expand(20000, 4))
    sample = dist.sample(gen)
    assert sample.shape == (20000, 4)
    assert torch.equal(sample.sum(-1), torch.ones(20000)) and set(sample.unique().tolist()) == {
        0.0,
        1.0,
    }
    torch.testing.assert_close(
        sample.mean(0), torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.015, rtol=0
    )


def test_one_hot_sample_with_generator_is_deterministic_and_works_on_latents():
    logits = torch.randn(2, 3, 8, 5)  # [B, T, S, K]
    one = OneHotDist(logits, 0.01).sample(torch.Generator().manual_seed(3))
    two = OneHotDist(logits, 0.01).sample(torch.Generator().manual_seed(3))
    assert one.shape == (2, 3, 8, 5) and torch.equal(one, two)
    dist = OneHotDist(logits, 0.01)
    assert dist.log_prob(one).shape == (2, 3, 8) and dist.entropy().shape == (2, 3, 8)


@pytest.mark.parametrize("search_from", [2, 1000])  # the binary search, the comparison
def test_one_hot_draw_equals_counting_the_classes_below_the_noise(search_from, monkeypatch):
    """Either way of drawing (a binary search over the cumulative probabilities, or the plain
    count ``sum(cdf < u)``) draws exactly the counted class, with zero-probability classes, ties
    and a probability-1 class; the returned classes are the positions of the sample's ones."""
    from dreamer_core.nets import distributions

    monkeypatch.setattr(distributions, "_DRAW_SEARCH_CLASSES", search_from)
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.25, 0.25, 0.25, 0.25], [0.0, 0.0, 1.0, 0.0], [1.0, 0, 0, 0]])
    probs = torch.cat([probs, torch.softmax(torch.randn(500, 4, generator=torch.Generator().manual_seed(1)), -1)])
    dist = OneHotDist(probs.log())
    sample, index = dist.sample_with_index(torch.Generator().manual_seed(5))
    noise = torch.rand((probs.shape[0], 1), generator=torch.Generator().manual_seed(5))
    expected = (dist.probs.cumsum(-1) < noise).sum(-1).clamp(max=3)
    assert torch.equal(index, expected) and torch.equal(sample, F.one_hot(expected, 4).float())
    assert torch.equal(dist.sample(torch.Generator().manual_seed(5)), sample)
    mode, mode_index = dist.mode_with_index()
    assert torch.equal(mode_index, dist.probs.argmax(-1)) and torch.equal(mode, dist.mode)
    assert (sample[probs == 0] == 0).all()  # a class of probability 0 is never drawn


@pytest.mark.parametrize("method", ["sample", "mode"])
def test_straight_through_gradient_is_the_gradient_of_probs(method):
    logits = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 6, dtype=torch.float64)
    dist = OneHotDist(logits, unimix=0.01)
    onehot = dist.sample(torch.Generator().manual_seed(1)) if method == "sample" else dist.mode
    (grad_st,) = torch.autograd.grad((onehot * weights).sum(), logits)
    probs = 0.99 * torch.softmax(logits, -1) + 0.01 / 6
    (grad_probs,) = torch.autograd.grad((probs * weights).sum(), logits)
    torch.testing.assert_close(grad_st, grad_probs)
    assert torch.equal(onehot.detach().sum(-1), torch.ones(3, dtype=torch.float64))
    if method == "mode":
        assert torch.equal(onehot.detach().argmax(-1), logits.detach().argmax(-1))


def test_one_hot_log_prob_and_entropy_match_categorical():
    logits = torch.randn(4, 7)
    dist = OneHotDist(logits, unimix=0.01)
    ref = td.Categorical(probs=dist.probs)
    index = torch.tensor([0, 3, 6, 2])
    torch.testing.assert_close(dist.log_prob(F.one_hot(index, 7).float()), ref.log_prob(index))
    torch.testing.assert_close(dist.entropy(), ref.entropy())


def test_kl_categorical_matches_torch_and_sums_over_latents():
    post, prior = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)  # [B, T, S, K]
    kl = kl_categorical(post, prior)
    ref = td.kl_divergence(td.Categorical(logits=post), td.Categorical(logits=prior)).sum(-1)
    assert kl.shape == (2, 3)
    torch.testing.assert_close(kl, ref)
    assert torch.allclose(kl_categorical(post, post), torch.zeros(2, 3), atol=1e-6)


def test_kl_categorical_exact():
    post = torch.tensor([[0.7, 0.3]]).log()
    prior = torch.tensor([[0.5, 0.5]]).log()
    expected = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)
    assert kl_categorical(post, prior).item() == pytest.approx(expected, rel=1e-6)
    # sums over the S latents: two identical latents give twice the KL
    assert kl_categorical(post.repeat(2, 1), prior.repeat(2, 1)).item() == pytest.approx(2 * expected, rel=1e-6)
    # raw scores are re-normalised: adding a constant per latent changes nothing
    assert kl_categorical(post + 3.0, prior - 1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kl_gaussian_exact():
    value = kl_gaussian(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    assert value.item() == pytest.approx(0.5 * (4 + 1 - 1 - math.log(4)), rel=1e-6)
    # sums over the last axis
    two = kl_gaussian(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0]), torch.zeros(2), torch.ones(2))
    assert two.item() == pytest.approx(4 + 1 - 1 - math.log(4), rel=1e-6)


def test_kls_score_half_precision_in_float32():
    post, prior = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    half = kl_categorical(post.bfloat16(), prior.bfloat16())
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, kl_categorical(post.bfloat16().float(), prior.bfloat16().float()))
    mean, std = torch.randn(3, 4).bfloat16(), (torch.rand(3, 4) + 0.5).bfloat16()
    assert kl_gaussian(mean, std, mean * 0, std * 0 + 1).dtype == torch.float32


def test_kl_balancing_stop_gradients():
    post = torch.randn(2, 4, 5, requires_grad=True)
    prior = torch.randn(2, 4, 5, requires_grad=True)
    dyn = kl_categorical(post.detach(), prior).sum()
    (grad_post, grad_prior) = torch.autograd.grad(dyn, (post, prior), allow_unused=True)
    assert grad_post is None and grad_prior is not None


# --- regression, Bernoulli and Gaussian outputs ------------------------------------------------


def test_mse_dist_sums_the_event_axes():
    pred = torch.zeros(2, 3, 4, 4, 3)
    target = torch.ones(2, 3, 4, 4, 3) * 0.5
    dist = MSEDist(pred, dims=3)
    torch.testing.assert_close(dist.log_prob(target), torch.full((2, 3), -0.25 * 48))
    assert MSEDist(torch.zeros(5), dims=0).log_prob(torch.ones(5)).shape == (5,)


def test_symlog_mse_dist():
    pred = torch.tensor([[0.0, 1.0, -2.0]])
    target = torch.tensor([[math.e - 1, math.e - 1, -(math.e**2 - 1)]])
    dist = SymlogMSEDist(pred, dims=1)
    torch.testing.assert_close(dist.mode, symexp(pred))
    torch.testing.assert_close(dist.log_prob(target), torch.tensor([-1.0]))


def test_bernoulli_matches_bce_and_torch():
    logits = torch.tensor([-3.0, -0.2, 0.0, 0.4, 5.0])
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    dist = BernoulliDist(logits)
    bce = F.binary_cross_entropy(torch.sigmoid(logits), target, reduction="none")
    torch.testing.assert_close(dist.log_prob(target), -bce)
    torch.testing.assert_close(dist.log_prob(target), td.Bernoulli(logits=logits).log_prob(target))
    torch.testing.assert_close(dist.entropy(), td.Bernoulli(logits=logits).entropy())
    assert torch.equal(dist.mode, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(dist.mean, torch.sigmoid(logits))


def test_bounded_normal_from_raw_bounds_and_log_prob_reference():
    gen = torch.Generator().manual_seed(0)
    raw_mean, raw_std = 5 * torch.randn(64, 3, generator=gen), 5 * torch.randn(64, 3, generator=gen)
    dist = BoundedNormal.from_raw(raw_mean, raw_std)
    assert (dist.mean.abs() <= 1).all() and (dist.std >= 0.1).all() and (dist.std <= 1.0).all()
    torch.testing.assert_close(dist.std, 0.9 * torch.sigmoid(raw_std + 2) + 0.1)
    action = torch.rand(64, 3, generator=gen) * 2 - 1
    ref = td.Normal(torch.tanh(raw_mean), dist.std)
    torch.testing.assert_close(dist.log_prob(action), ref.log_prob(action).sum(-1))
    torch.testing.assert_close(dist.entropy(), ref.entropy().sum(-1))


def test_bounded_normal_rsample_is_clipped_with_straight_through_gradient():
    mean = torch.tensor([0.95, -0.95, 0.0], requires_grad=True)
    dist = BoundedNormal(mean, torch.ones(3))
    sample = dist.rsample(torch.Generator().manual_seed(0))
    assert (sample.abs() <= 1).all()
    (grad,) = torch.autograd.grad(sample.sum(), mean)
    torch.testing.assert_close(grad, torch.ones(3))
    again = BoundedNormal(mean, torch.ones(3)).sample(torch.Generator().manual_seed(0))
    assert torch.equal(again, sample.detach()) and not again.requires_grad


def test_gaussian_latent_and_kl_match_torch():
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 3, 8, generator=gen)  # [B, T, 2S]
    dist = GaussianLatent.from_raw(raw, min_std=0.1)
    mean, std = raw.chunk(2, -1)
    torch.testing.assert_close(dist.std, F.softplus(std) + 0.1)
    ref = td.Independent(td.Normal(mean, F.softplus(std) + 0.1), 1)
    x = torch.randn(2, 3, 4, generator=gen)
    torch.testing.assert_close(dist.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    other = GaussianLatent.from_raw(torch.randn(2, 3, 8, generator=gen))
    kl = kl_gaussian(dist.mean, dist.std, other.mean, other.std)
    ref_other = td.Independent(td.Normal(other.mean, other.std), 1)
    torch.testing.assert_close(kl, td.kl_divergence(ref, ref_other))
    assert dist.sample(gen).shape == (2, 3, 4)


def test_half_precision_inputs_are_scored_in_float32():
    logits = torch.randn(2, 255).bfloat16()
    assert TwoHotDist(logits, symexp_bins()).log_prob(torch.zeros(2)).dtype == torch.float32
    assert OneHotDist(logits[:, :4], 0.01).logits.dtype == torch.float32
    assert MSEDist(logits, 1).log_prob(torch.zeros(2, 255)).dtype == torch.float32
