"""The KL terms of the three Dreamer generations (losses.py) against hand-computed values,
their free nats and stop-gradients, and the optimizers (optim.py). The closed-form KLs they
combine are tested in tests/nets/test_distributions.py (nets/distributions.py owns them)."""

import math

import numpy as np
import pytest
import torch

from dreamer_core import losses
from dreamer_core.nets import distributions
from dreamer_core.optim import LaProp, OptimConfig, adaptive_grad_clip_, clip_gradients


def test_the_kl_terms_use_the_one_kl_implementation():
    """losses.py combines nets.distributions' KLs; it has no second implementation (which would
    not upcast half precision)."""
    assert losses.kl_categorical is distributions.kl_categorical
    assert losses.kl_gaussian is distributions.kl_gaussian
    post = torch.tensor([[0.7, 0.3]]).log()
    prior = torch.tensor([[0.5, 0.5]]).log()
    expected = 0.7 * math.log(0.7 / 0.5) + 0.3 * math.log(0.3 / 0.5)
    dyn, rep = losses.kl_v3(post, prior, free_nats=0.0)
    assert dyn.item() == pytest.approx(expected, rel=1e-6) and rep.item() == pytest.approx(expected, rel=1e-6)
    assert losses.kl_v2(post, prior, alpha=0.8, free_nats=0.0).item() == pytest.approx(expected, rel=1e-6)
    # half-precision logits are scored in float32 (the shared implementation upcasts)
    dyn, rep = losses.kl_v3(post.bfloat16(), prior.bfloat16(), free_nats=0.0)
    assert dyn.dtype == rep.dtype == torch.float32
    assert losses.kl_v1(*(torch.ones(1, 2, dtype=torch.bfloat16),) * 4, free_nats=0.0).dtype == torch.float32


def test_kl_v1_exact_with_free_nats_and_gradients_to_both_sides():
    post_mean = torch.tensor([[1.0, 0.0]], requires_grad=True)
    post_std = torch.tensor([[2.0, 1.0]], requires_grad=True)
    prior_mean = torch.tensor([[0.0, 0.0]], requires_grad=True)
    prior_std = torch.tensor([[1.0, 1.0]], requires_grad=True)
    exact = 0.5 * (4 + 1 - 1 - math.log(4))  # first dimension; the second has KL 0
    kl = losses.kl_v1(post_mean, post_std, prior_mean, prior_std, free_nats=0.0)
    assert kl.shape == (1,) and kl.item() == pytest.approx(exact, rel=1e-6)
    kl.sum().backward()
    # DreamerV1 has no stop-gradient: both the posterior and the prior learn
    assert post_mean.grad.abs().sum() > 0 and prior_mean.grad.abs().sum() > 0
    assert post_std.grad.abs().sum() > 0 and prior_std.grad.abs().sum() > 0
    for t in (post_mean, post_std, prior_mean, prior_std):
        t.grad = None
    clipped = losses.kl_v1(post_mean, post_std, prior_mean, prior_std)  # default: 3 free nats
    assert clipped.item() == 3.0 and exact < 3.0
    clipped.sum().backward()
    assert all(t.grad is None or not t.grad.any() for t in (post_mean, post_std, prior_mean, prior_std))


def test_free_nats_clip_per_element_and_block_gradient():
    post = torch.randn(3, 4, 8, 8, requires_grad=True)
    prior = (post.detach() + 0.01 * torch.randn(3, 4, 8, 8)).requires_grad_(True)
    dyn, rep = losses.kl_v3(post, prior, free_nats=1.0)
    assert dyn.shape == (3, 4) and torch.all(dyn == 1.0)  # tiny KL -> clipped to 1 nat
    (dyn.sum() + rep.sum()).backward()
    assert torch.all(post.grad == 0) and torch.all(prior.grad == 0)  # no gradient below the free nats


def test_dyn_trains_prior_only_and_rep_trains_post_only():
    post = torch.randn(2, 3, 4, 4, requires_grad=True)
    prior = torch.randn(2, 3, 4, 4, requires_grad=True)
    dyn, rep = losses.kl_v3(post, 5 * prior, free_nats=0.0)
    torch.testing.assert_close(dyn, rep)  # same values, different gradients
    dyn.sum().backward()
    assert post.grad is None and prior.grad.abs().sum() > 0
    prior.grad = None
    rep = losses.kl_v3(post, 5 * prior, free_nats=0.0)[1]
    rep.sum().backward()
    assert prior.grad is None and post.grad.abs().sum() > 0


def test_kl_v2_balance_weights_the_two_directions():
    post = torch.randn(5, 4, 4, requires_grad=True)
    prior = torch.randn(5, 4, 4, requires_grad=True)
    kl = losses.kl_v2(post, prior, alpha=0.8, free_nats=0.0)
    torch.testing.assert_close(kl, distributions.kl_categorical(post, prior))  # value: alpha + (1 - alpha) = 1
    kl.sum().backward()
    g_prior, g_post = prior.grad.clone(), post.grad.clone()
    prior.grad = post.grad = None
    distributions.kl_categorical(post.detach(), prior).sum().backward()
    torch.testing.assert_close(g_prior, 0.8 * prior.grad)
    distributions.kl_categorical(post, prior.detach()).sum().backward()
    torch.testing.assert_close(g_post, 0.2 * post.grad)


def test_kl_v2_free_nats_clip_each_direction():
    post = torch.randn(3, 4, 4, requires_grad=True)
    prior = (post.detach() + 0.01 * torch.randn(3, 4, 4)).requires_grad_(True)
    kl = losses.kl_v2(post, prior, alpha=0.8, free_nats=1.0)
    torch.testing.assert_close(kl, torch.ones(3))  # 0.8 * 1 + 0.2 * 1
    kl.sum().backward()
    assert not post.grad.any() and not prior.grad.any()


def test_laprop_matches_a_plain_reference():
    torch.manual_seed(0)
    p = torch.randn(5, requires_grad=True)
    opt = LaProp([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    ref = p.detach().clone().numpy().astype(np.float64)
    nu = np.zeros(5)
    mu = np.zeros(5)
    for t in range(1, 6):
        grad = torch.randn(5)
        p.grad = grad.clone()
        opt.step()
        g = grad.numpy().astype(np.float64)
        nu = 0.99 * nu + 0.01 * g * g
        mu = 0.9 * mu + 0.1 * g / (np.sqrt(nu / (1 - 0.99**t)) + 1e-8)
        ref = ref - 0.1 * mu / (1 - 0.9**t)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-5, atol=1e-6)


def test_adaptive_grad_clip():
    big = torch.nn.Parameter(torch.ones(4))  # ||p|| = 2
    small = torch.nn.Parameter(torch.ones(4))
    big.grad = torch.full((4,), 10.0)  # ||g|| = 20 > 0.3 * 2
    small.grad = torch.full((4,), 0.1)  # ||g|| = 0.2 < 0.6
    adaptive_grad_clip_([big, small], clip=0.3)
    assert torch.linalg.vector_norm(big.grad).item() == pytest.approx(0.6, rel=1e-5)
    torch.testing.assert_close(small.grad, torch.full((4,), 0.1))
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 10.0)
    norm = clip_gradients([p], OptimConfig(name="adam", clip=1.0))
    assert norm.item() == pytest.approx(20.0) and torch.linalg.vector_norm(p.grad).item() == pytest.approx(1.0, rel=1e-5)
