"""The update steps of the stage kit (stages/updates.py): what changes, what must not, the
non-finite refusal, the warm-up, and the posterior shortcut of the online loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from dreamer_core.behavior import ActorCritic
from dreamer_core.optim import OptimConfig, make_optimizer
from dreamer_core.stages.updates import behavior_update, world_model_update
from tests.common import episode_batch as batch_of
from tests.common import tiny_behavior_config as small_behavior
from tests.common import tiny_world_model


def small_world_model(action: str = "discrete"):
    return tiny_world_model("vector", action, seed=None)


def params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_world_model_update_changes_the_model_and_returns_detached_posteriors():
    torch.manual_seed(0)
    wm = small_world_model()
    optim = OptimConfig(lr=1e-3)
    optimizer = make_optimizer(wm.parameters(), optim)
    before = params(wm)
    ok, metrics, post = world_model_update(wm, optimizer, optim, 0, batch_of())
    assert ok
    assert {"loss", "grad_norm", "loss/recon", "loss/dyn", "loss/rep"} <= set(metrics)
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert post.deter.shape == (2, 6, 16) and not post.deter.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, params(wm)))


def test_world_model_update_refuses_a_non_finite_loss_and_changes_nothing():
    torch.manual_seed(0)
    wm = small_world_model()
    optim = OptimConfig(lr=1e-3)
    optimizer = make_optimizer(wm.parameters(), optim)
    world_model_update(wm, optimizer, optim, 0, batch_of())  # optimizer state exists now
    before, state = params(wm), copy.deepcopy(optimizer.state_dict())
    bad = batch_of()
    bad.obs["vector"][0, 2, 0] = float("nan")
    ok, metrics, post = world_model_update(wm, optimizer, optim, 1, bad)
    assert (ok, metrics, post) == (False, {}, None)
    assert all(torch.equal(a, b) for a, b in zip(before, params(wm)))
    assert all(p.grad is None for p in wm.parameters())
    assert optimizer.state_dict()["state"][0]["step"] == state["state"][0]["step"]


def test_world_model_update_applies_the_warmup():
    wm = small_world_model()
    optim = OptimConfig(lr=1e-3, warmup=10)
    optimizer = make_optimizer(wm.parameters(), optim)
    world_model_update(wm, optimizer, optim, 4, batch_of())
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 5 / 10)


@pytest.mark.parametrize("action,grad", [("discrete", "reinforce"), ("box", "dynamics")])
def test_behavior_update_trains_actor_and_critic_and_leaves_the_world_model(action, grad):
    torch.manual_seed(0)
    wm = small_world_model(action).requires_grad_(False)
    cfg = small_behavior(grad)
    agent = ActorCritic.for_world_model(cfg, wm)
    actor_optim = make_optimizer(agent.actor.parameters(), cfg.actor_optim)
    critic_optim = make_optimizer(agent.critic.parameters(), cfg.critic_optim)
    wm_before, actor_before = params(wm), params(agent.actor)
    critic_before, slow_before = params(agent.critic), params(agent.slow_critic)
    metrics = behavior_update(wm, agent, actor_optim, critic_optim, cfg, batch_of(action=action))
    assert {"actor/loss", "critic/loss", "actor/grad_norm", "critic/grad_norm", "imag/return"} <= set(metrics)
    assert all(torch.equal(a, b) for a, b in zip(wm_before, params(wm)))
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, params(agent.actor)))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, params(agent.critic)))
    assert any(not torch.equal(a, b) for a, b in zip(slow_before, params(agent.slow_critic)))  # EMA step
    assert int(agent.updates) == 1


def test_behavior_update_from_given_posteriors_equals_filtering_the_batch():
    """The online loop passes the world-model update's posteriors; stage 03 lets the frozen
    model filter the batch. Same posteriors, same RNG: the same update, bit for bit."""
    batch = batch_of()
    results = []
    for given in (False, True):
        torch.manual_seed(0)
        wm = small_world_model().requires_grad_(False)
        cfg = small_behavior()
        agent = ActorCritic.for_world_model(cfg, wm)
        optims = (make_optimizer(agent.actor.parameters(), cfg.actor_optim),
                  make_optimizer(agent.critic.parameters(), cfg.critic_optim))
        torch.manual_seed(1)
        post = None
        if given:
            with torch.no_grad():
                post = wm.observe(batch)
        metrics = behavior_update(wm, agent, *optims, cfg, batch, post=post)
        results.append((metrics, params(agent)))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
