"""The one initialisation of every network (nets.layers.init_weights), checked on whole models.

A WorldModel and an ActorCritic built from the default config (DreamerV3, size S), for a vector
and a pixel observation space: every Linear / Conv / ConvTranspose / BlockLinear weight is a
normal truncated at 2 std with fan-average variance (``std = sqrt(1 / fan_avg)`` after
truncation), every bias 0, every norm weight 1 and bias 0; the reward head's and the critic's
output layers are 0 (outscale 0), so the predicted reward and value start at exactly 0. The
fans are computed here from the layer shapes, not by the code under test.
"""

from __future__ import annotations

import dataclasses
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import nn

from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic, BehaviorConfig
from dreamer_core.nets.layers import BlockLinear
from dreamer_core.nets.rssm import RSSMConfig
from dreamer_core.stages.train_behavior import TrainBehaviorConfig
from dreamer_core.stages.train_world_model import make_config
from dreamer_core.world_model import WorldModel, WorldModelConfig
from tests.nets import single_thread  # noqa: F401  (autouse fixture)

TRUNC = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
LARGE = 1000  # weights with at least this many entries have a sample std within 10% of the target

OBS = {
    "vector": gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)}),
    "pixels": gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)}),
}
ACTIONS = {"vector": gym.spaces.Box(-1.0, 1.0, (6,), np.float32), "pixels": gym.spaces.Discrete(18)}
LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, BlockLinear)
NORMS = (nn.LayerNorm, nn.RMSNorm)


def fans(name: str, layer: nn.Module, wm: WorldModel) -> tuple[int, int]:
    """``(fan_in, fan_out)`` from the layer's shape (receptive field included; one block of a
    BlockLinear). The RSSM's posterior input is one Linear over ``[deter, embed]`` in DreamerV3,
    split in two here: both parts take that layer's fans."""
    if name.endswith(("rssm.post_deter", "rssm.post_embed")):
        return wm.rssm.cfg.deter + wm.encoder.embed_dim, layer.out_features
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    if isinstance(layer, BlockLinear):
        return layer.in_features // layer.blocks, layer.out_features // layer.blocks
    k = math.prod(layer.kernel_size)
    return layer.in_channels * k, layer.out_channels * k


def build(obs: str, wm_cfg: WorldModelConfig, ac_cfg: BehaviorConfig) -> tuple[WorldModel, ActorCritic]:
    torch.manual_seed(0)
    wm = WorldModel(wm_cfg, OBS[obs], ACTIONS[obs])
    return wm, ActorCritic.for_world_model(ac_cfg, wm)


def check_scheme(wm: WorldModel, agent: ActorCritic, zero: set[str]) -> int:
    """Check every parameter of both models against the scheme; ``zero``: the output layers with
    outscale 0. Returns how many weights were large enough for the std check."""
    covered: set[int] = set()
    large = 0
    for prefix, model in (("wm.", wm), ("ac.", agent)):
        for name, layer in model.named_modules():
            name = prefix + name
            if isinstance(layer, NORMS):
                assert torch.equal(layer.weight, torch.ones_like(layer.weight)), name
                if getattr(layer, "bias", None) is not None:
                    assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), name
            elif not isinstance(layer, LAYERS):
                continue
            covered.update(id(p) for p in layer.parameters(recurse=False))
            if isinstance(layer, NORMS):
                continue
            if layer.bias is not None:
                assert torch.equal(layer.bias, torch.zeros_like(layer.bias)), f"{name}: bias not 0"
            w = layer.weight.detach()
            if name in zero:
                assert torch.equal(w, torch.zeros_like(w)), f"{name}: outscale 0 but weight not 0"
                continue
            fan_in, fan_out = fans(name, layer, wm)
            target = math.sqrt(1 / ((fan_in + fan_out) / 2))  # std after truncation
            assert w.abs().max() <= 2 * target / TRUNC * (1 + 1e-6), f"{name}: beyond 2 std"
            if w.numel() >= LARGE:
                large += 1
                assert abs(w.std().item() / target - 1) < 0.1, (name, w.std().item(), target)
    # every parameter belongs to a checked layer, except the learned initial GRU state (zeros)
    rest = [n for m in (wm, agent) for n, p in m.named_parameters() if id(p) not in covered]
    assert rest == ["rssm.init_deter"], rest
    assert torch.equal(wm.rssm.init_deter, torch.zeros_like(wm.rssm.init_deter))
    return large


def v3_zero(wm: WorldModel, agent: ActorCritic) -> set[str]:
    """Names of the outscale-0 layers: the output Linears of the reward head and the critics."""
    outputs = {wm.reward_head.net[-1], agent.critic.net[-1], agent.slow_critic.net[-1]}
    names = {f"{prefix}.{n}" for prefix, model in (("wm", wm), ("ac", agent))
             for n, m in model.named_modules() if m in outputs}
    assert len(names) == 3 and all(n.endswith(f"net.{3 * 2}") for n in names), names  # after 2 hidden blocks
    return names


@pytest.mark.parametrize("obs", ["vector", "pixels"])
def test_default_models_follow_the_dreamerv3_init(obs):
    wm, agent = build(obs, WorldModelConfig(), BehaviorConfig())
    large = check_scheme(wm, agent, v3_zero(wm, agent))
    assert large >= (20 if obs == "pixels" else 15)  # most layers get the std check
    # the reward head and the critic output exactly 0 for any input
    feat = 5 * torch.randn(7, wm.feat_dim)
    assert torch.equal(wm.reward_head(feat), torch.zeros(7, wm.cfg.heads.bins))
    assert torch.equal(wm.reward_dist(feat).mean, torch.zeros(7))
    assert torch.equal(agent.value(feat).mean, torch.zeros(7))
    assert torch.equal(agent.value(feat, slow=True).mean, torch.zeros(7))
    # the other outputs are not zeroed (outscale 1)
    for head in (wm.cont_head, agent.actor):
        assert head.net[-1].weight.abs().sum() > 0


def test_the_2025_block_gru_follows_the_scheme():
    cfg = dataclasses.replace(WorldModelConfig(), rssm=RSSMConfig(deter=512, hidden=256, gru_blocks=8))
    wm, agent = build("vector", cfg, BehaviorConfig())
    assert check_scheme(wm, agent, v3_zero(wm, agent)) >= 15


@pytest.mark.parametrize("preset", ["dreamerv2", "dreamerv1"])
def test_v1_v2_presets_use_the_same_scheme(preset):
    """One scheme for every variant (their Keras layers had Glorot variance and zero biases);
    their MSE reward head and critic are not zeroed."""
    wm_cfg = make_config(["data"], "out", [preset], [], {}).model
    ac_cfg = config_lib.apply_presets(TrainBehaviorConfig(run="run"), "train-behavior", [preset]).behavior
    assert wm_cfg.norm == "none" and ac_cfg.critic.head == "mse"  # every Linear has a bias
    wm, agent = build("vector", wm_cfg, ac_cfg)
    check_scheme(wm, agent, zero=set())
    assert wm.reward_head.net[-1].weight.abs().sum() > 0 and agent.critic.net[-1].weight.abs().sum() > 0
