"""The update steps the training stages share (part of the stage kit): one world-model update
and one actor-critic update, each with its optimizers, clipping, warm-up and precision.

Models compute losses; these functions own what the models do not: zeroing and stepping
optimizers, gradient clipping, the learning-rate warm-up, autocast, and the non-finite check
(a non-finite loss or gradient changes nothing: every world-model update, and the
actor-critic updates of a data-parallel run). Stage 02 calls ``world_model_update``, stage 03
``behavior_update``, ``dreamer train`` both on the same batch. Under ``torchrun`` both take the
run's ``distributed.Context``: gradients averaged over the ranks before clipping, one decision
on a non-finite update for every rank, the ranks' mean metrics.

Imports: interfaces, behavior, distributed, optim, types, stages.common (autocast).
"""

from __future__ import annotations

from typing import Any

import torch

from dreamer_core.behavior import ActorCritic, BehaviorConfig
from dreamer_core.distributed import Context
from dreamer_core.interfaces import WorldModelInterface
from dreamer_core.optim import OptimConfig, clip_gradients, warmup_factor
from dreamer_core.stages.common import autocast
from dreamer_core.types import Batch


def world_model_update(model: WorldModelInterface, optimizer: torch.optim.Optimizer, optim: OptimConfig, update: int,
                       batch: Batch, precision: str = "float32", state: Any = None,
                       dist: Context | None = None) -> tuple[bool, dict[str, float], Any]:
    """One world-model update on a batch (on the model's device).

    ``state``: the latent state before each window's first row (None: the initial state).
    Returns (finite, metrics as floats, posterior states ``[B, T]`` detached). A non-finite
    loss or gradient changes nothing and returns (False, {}, None). ``dist``: a data-parallel
    run's ``distributed.Context``; the gradients are then averaged over the ranks before clipping
    (clipping sees the global gradient), a non-finite loss on any rank skips the update on all
    of them, and the metrics are the ranks' means (those of the global batch); ``post`` stays
    this rank's. Any world-model family
    (``WorldModel``, ``worldmodels.VaeMdnWorldModel``: an ``nn.Module`` with ``loss``); the
    optimizer may cover part of the model (a training phase), the rest keeps its weights."""
    model.train()
    with autocast(batch.reward.device, precision):
        loss, metrics, post = model.loss(batch, state)
    grads_ok = True
    optimizer.zero_grad(set_to_none=True)
    loss_ok = bool(torch.isfinite(loss))
    if loss_ok:
        loss.backward()
    # The optimizer's parameters only, in the model's order: in a training phase the rest of the
    # model keeps the gradients of its last update, which must not enter the norm or the clipping.
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    params = [p for p in model.parameters() if id(p) in stepped]
    if dist is not None and dist.active:  # the global gradient, and one decision for every rank
        loss_ok, metrics = dist.average_gradients(params, loss_ok, {"loss": loss, **metrics})
        loss = metrics.pop("loss", loss)
    if loss_ok:
        norm = clip_gradients(params, optim)
        grads_ok = bool(torch.isfinite(norm))
    if not (grads_ok and loss_ok):
        optimizer.zero_grad(set_to_none=True)
        return False, {}, None
    _warm_up(optimizer, optim, update)
    optimizer.step()
    out = {k: float(v) for k, v in metrics.items()}  # one sync per update
    out["loss"] = float(loss.detach())
    out["grad_norm"] = float(norm)
    return True, out, post.detach()


def behavior_update(world_model: WorldModelInterface, agent: ActorCritic, actor_optim: torch.optim.Optimizer,
                    critic_optim: torch.optim.Optimizer, cfg: BehaviorConfig, batch: Batch,
                    post=None, update: int = 0, dist: Context | None = None) -> dict[str, float]:
    """One actor and one critic update from a replay batch (on the model's device).

    ``post``: the batch's posterior states when the caller has them already (the online loop
    takes them from the world-model update); otherwise the frozen world model filters the
    batch (without gradient: it only provides start states). ``update``: this update's index,
    for the optimizers' learning-rate warm-up (``warmup`` in their configs; 0 = none).

    ``dist``: a data-parallel run's ``distributed.Context``. The return normaliser then takes
    its percentiles from every rank's imagined returns (the global batch's scale, the same on
    every rank), the actor's and the critic's gradients are averaged over the ranks before
    their clipping (one all-reduce), and the metrics are the ranks' means (a max such as
    ``actor/action_max_freq`` becomes the mean of the ranks' maxima). A non-finite loss or
    gradient on any rank skips the update on every rank: nothing changes (the normaliser's
    state and the slow critic included) and the result is ``{}``. Without ``dist`` nothing is
    checked, as in a one-process run before data parallelism: a non-finite loss reaches the
    weights."""
    parallel = dist is not None and dist.active
    agent.train()
    if post is None:
        with torch.no_grad():
            post = world_model.observe(batch)
    buffers = [b.clone() for b in agent.buffers()] if parallel else []  # the normaliser's state, for a skip
    actor_loss, critic_loss, metrics = agent.loss(world_model, post, batch,
                                                  gather_returns=dist.gather_rows if parallel else None)
    actor_optim.zero_grad(set_to_none=True)
    actor_loss.backward()
    # Dynamics backprop also sends actor-loss gradients into the critic's weights through the
    # values inside the returns; they must not train the critic, so clear them first.
    critic_optim.zero_grad(set_to_none=True)
    critic_loss.backward()
    finite = True
    if parallel:  # the global gradients, and one decision for every rank
        finite = bool(torch.isfinite(actor_loss)) and bool(torch.isfinite(critic_loss))
        finite, metrics = dist.average_gradients([*agent.actor.parameters(), *agent.critic.parameters()], finite,
                                                 metrics)
    actor_norm = clip_gradients(agent.actor.parameters(), cfg.actor_optim)
    critic_norm = clip_gradients(agent.critic.parameters(), cfg.critic_optim)
    if parallel and not (finite and bool(torch.isfinite(actor_norm)) and bool(torch.isfinite(critic_norm))):
        actor_optim.zero_grad(set_to_none=True)  # the norms are the global gradient's: every rank skips
        critic_optim.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, saved in zip(agent.buffers(), buffers):
                buffer.copy_(saved)
        return {}
    _warm_up(actor_optim, cfg.actor_optim, update)
    actor_optim.step()
    _warm_up(critic_optim, cfg.critic_optim, update)
    critic_optim.step()
    agent.update_slow_critic()
    out = {k: float(v) for k, v in metrics.items()}  # one host sync per update
    out["actor/grad_norm"] = float(actor_norm)
    out["critic/grad_norm"] = float(critic_norm)
    return out


def _warm_up(optimizer: torch.optim.Optimizer, cfg: OptimConfig, update: int) -> None:
    """Set the learning rate of ``update`` (linear warm-up over ``cfg.warmup`` updates)."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * warmup_factor(update, cfg)
