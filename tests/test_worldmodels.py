"""The World Models family (worldmodels.py, nets/vae.py, nets/mdn.py) on tiny configs: the
interface's shapes for image and vector observations, the paper's V, the mixture's likelihood
against torch.distributions, temperature sampling, step == observe, the staged and joint
gradients, save/load, calibrated balancing and the dream views."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.distributions as D

from dreamer_core import checkpoint
from dreamer_core.errors import DreamerError
from dreamer_core.interfaces import LatentState, WorldModelInterface
from dreamer_core.nets.mdn import MixtureDist
from dreamer_core.nets.vae import VAE, PaperConvDecoder, PaperConvEncoder
from dreamer_core.types import Batch
from dreamer_core.worldmodels import (
    PRIORITY,
    InverseModelConfig,
    MDNConfig,
    VAEConfig,
    VaeMdnState,
    VaeMdnWorldModel,
    WorldModelsConfig,
    balance_weights,
    calibrate,
    describe_calibration,
    is_family,
)
from tests.common import ACTION_SPACES, OBS_SPACES, episode_batch, tiny_world_model
from tests.nets import single_thread  # noqa: F401  (autouse fixture: tiny tensors, one thread)

FRAME64 = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
OBS = {**OBS_SPACES, "frame64": FRAME64}


def tiny_config(**changes) -> WorldModelsConfig:
    cfg = WorldModelsConfig(vae=VAEConfig(latent=4, depth=4, mlp_units=16, mlp_layers=1),
                            mdn=MDNConfig(hidden=8, mixtures=3, head_units=8),
                            inverse=InverseModelConfig(enabled=True, units=8, layers=1))
    return dataclasses.replace(cfg, **changes)


def tiny_model(obs="vector", action="discrete", seed=0, **changes) -> VaeMdnWorldModel:
    torch.manual_seed(seed)
    obs_space = OBS[obs] if isinstance(obs, str) else obs
    return VaeMdnWorldModel(tiny_config(**changes), obs_space, ACTION_SPACES[action])


def batch_for(obs="vector", action="discrete", B=2, T=5) -> Batch:
    return episode_batch(OBS[obs], action, B=B, T=T)


# --- the interface and its shapes -------------------------------------------------------------


@pytest.mark.parametrize("obs", ["vector", "image", "dict", "frame64"])
@pytest.mark.parametrize("action", ["discrete", "box"])
def test_interface_shapes(obs, action):
    wm = tiny_model(obs, action, training="joint")
    assert isinstance(wm, WorldModelInterface)
    B, T, H = 2, 5, 3
    batch = batch_for(obs, action, B, T)
    Z, D, A = 4, 8, wm.actions.dim
    post = wm.observe(batch)
    assert isinstance(post, LatentState)
    assert post.z.shape == (B, T, Z) and post.h.shape == (B, T, D) and post.c.shape == (B, T, D)
    feat = wm.features(post)
    assert feat.shape == (B, T, wm.feat_dim) and wm.feat_dim == Z + D and wm.feat_onehot is None
    for key, dist in wm.decode(feat).items():
        assert dist.mode.shape == (B, T, *wm.observation_space[key].shape)
    for key, value in wm.reconstruct(feat).items():
        if wm.observation_space[key].dtype == np.uint8:
            assert 0 <= float(value.detach().min()) and float(value.detach().max()) <= 1
    assert wm.reward_dist(feat).mean.shape == (B, T) and wm.cont_dist(feat).mean.shape == (B, T)
    assert wm.categorical_latents(post) is None
    start = post.detach().flatten(0, 1)  # [N]
    states, actions = wm.imagine(start, lambda s: torch.zeros(s.z.shape[0], A), H)
    assert states.z.shape == (B * T, H + 1, Z) and actions.shape == (B * T, H + 1, A)
    assert torch.equal(states[:, 0].z, start.z)
    loss, metrics, post = wm.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    assert {"loss/recon", "loss/kl", "loss/dyn", "loss/reward", "loss/cont", "loss/inverse"} <= set(metrics)


def test_the_paper_vae_on_64x64_frames():
    """V as in the paper: 64 -> 31 -> 14 -> 6 -> 2 (2x2x256 = 1024), decoder 1 -> 64, Z = 32,
    and the paper's parameter count of V (4,348,547)."""
    encoder = PaperConvEncoder(3)
    assert encoder(torch.zeros(1, 3, 64, 64)).shape == (1, 1024)
    assert PaperConvDecoder(32, 3)(torch.zeros(1, 32)).shape == (1, 3, 64, 64)
    vae = VAE(FRAME64)
    assert vae.latent == 32 and vae.paper_keys == ["image"]
    assert sum(p.numel() for p in vae.parameters()) == 4_348_547
    mean, std = vae.encode({"image": torch.zeros(2, 3, 64, 64, 3, dtype=torch.uint8)})
    assert mean.shape == std.shape == (2, 3, 32)


def test_the_state_type():
    wm = tiny_model()
    post = wm.observe(batch_for())
    assert post.flatten(0, 1).z.shape == (10, 4)
    assert post[:, 1].h.shape == (2, 8) and post.to("cpu").detach().z.requires_grad is False
    assert post.map(lambda x: x * 0).z.abs().sum() == 0
    assert VaeMdnState.stack([post[:, 0], post[:, 1]], 1).z.shape == (2, 2, 4)
    assert post.flatten(0, 1).reshape(2, 5).feat().shape == (2, 5, 12)


def test_step_reproduces_observe_across_an_episode_start():
    wm = tiny_model("dict", "box", sample_latents=False)
    batch = batch_for("dict", "box", B=2, T=6)
    batch.is_first[1, 3] = True  # a window crossing into a new episode
    post = wm.observe(batch)
    state = wm.initial_state(2)
    action = wm.actions.encode(batch.action)
    for t in range(6):
        state = wm.step(state, action[:, t], {k: v[:, t] for k, v in batch.obs.items()}, batch.is_first[:, t])
        torch.testing.assert_close(state.h, post.h[:, t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.c, post.c[:, t], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.z, post.z[:, t])
    # after the reset, row 3 of window 1 equals a fresh window starting there
    fresh = wm.observe(Batch({k: v[1:, 3:] for k, v in batch.obs.items()}, batch.action[1:, 3:],
                             batch.reward[1:, 3:], batch.is_first[1:, 3:], batch.is_last[1:, 3:],
                             batch.is_terminal[1:, 3:]))
    torch.testing.assert_close(fresh.h[0], post.h[1, 3:], rtol=1e-5, atol=1e-6)


# --- M: the mixture ---------------------------------------------------------------------------


def random_mixture(shared: bool, lead=(3, 2), Z=4, K=5, seed=0) -> MixtureDist:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*lead, 1 if shared else Z, K, generator=g)
    mean = torch.randn(*lead, Z, K, generator=g)
    std = torch.rand(*lead, Z, K, generator=g) + 0.2
    return MixtureDist(logits, mean, std)


@pytest.mark.parametrize("shared", [False, True])
def test_mixture_log_prob_matches_torch_distributions(shared):
    mix = random_mixture(shared)
    z = torch.randn(3, 2, 4)
    if shared:  # one categorical per step over K diagonal Gaussians of all Z dims
        ref = D.MixtureSameFamily(D.Categorical(logits=mix.logits[..., 0, :]),
                                  D.Independent(D.Normal(mix.mean_k.transpose(-1, -2), mix.std_k.transpose(-1, -2)), 1))
        expected = ref.log_prob(z)
    else:  # one 1-D mixture per dimension, independent dimensions
        ref = D.MixtureSameFamily(D.Categorical(logits=mix.logits), D.Normal(mix.mean_k, mix.std_k))
        expected = ref.log_prob(z).sum(-1)
    torch.testing.assert_close(mix.log_prob(z), expected)
    # and the explicit formula for one entry of the per-dimension layout
    if not shared:
        w = torch.softmax(mix.logits[0, 0], -1)  # [Z, K]
        dens = torch.exp(-0.5 * ((z[0, 0, :, None] - mix.mean_k[0, 0]) / mix.std_k[0, 0]) ** 2) / (
            mix.std_k[0, 0] * (2 * torch.pi) ** 0.5)
        torch.testing.assert_close(mix.log_prob(z)[0, 0], (w * dens).sum(-1).log().sum())


@pytest.mark.parametrize("shared", [False, True])
def test_temperature_to_zero_gives_the_most_likely_components_mean(shared):
    mix = random_mixture(shared)
    best = mix.logits.argmax(-1, keepdim=True).expand(*mix.mean_k.shape[:-1], 1)  # [..., Z, 1]
    expected = mix.mean_k.gather(-1, best)[..., 0]
    torch.testing.assert_close(mix.mode, expected)
    assert torch.equal(mix.sample(0.0), expected)
    g = torch.Generator().manual_seed(1)
    torch.testing.assert_close(mix.sample(1e-8, g), expected, atol=1e-3, rtol=0)


def test_temperature_scales_logits_and_std():
    """tau divides the logits and scales each std by sqrt(tau): checked on the empirical
    moments of many draws against the tempered mixture's own moments."""
    mix = random_mixture(False, lead=(), Z=3, K=4, seed=3)
    g = torch.Generator().manual_seed(0)
    for tau in (0.5, 2.0):
        tempered = MixtureDist(mix.logits / tau, mix.mean_k, mix.std_k * tau**0.5)
        many = MixtureDist(*(x.expand(20000, *x.shape) for x in (mix.logits, mix.mean_k, mix.std_k)))
        draws = many.sample(tau, g)  # [n, Z]
        torch.testing.assert_close(draws.mean(0), tempered.mean, atol=0.05, rtol=0)
        torch.testing.assert_close(draws.var(0), tempered.variance, atol=0.1, rtol=0.05)


def test_model_dreams_at_temperature_zero_are_deterministic():
    wm = tiny_model()
    start = wm.observe(batch_for()).flatten(0, 1)
    act = torch.zeros(10, wm.actions.dim)
    a = wm.dream_step(start, act, tau=0.0)
    b = wm.dream_step(start, act, tau=0.0)
    assert torch.equal(a.z, b.z) and torch.equal(a.z, wm.latent_dist(a).mode)


# --- losses and gradients -----------------------------------------------------------------------


def grads(module: torch.nn.Module) -> list[bool]:
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in module.parameters()]


def test_staged_training_trains_v_then_m_and_never_the_frozen_vae():
    wm = tiny_model("dict", "discrete")  # staged: starts in the vae phase
    batch = batch_for("dict", "discrete")
    assert wm.phase == "vae"
    loss, metrics, _ = wm.loss(batch)
    assert set(k for k in metrics if k.startswith("loss/")) == {"loss/recon", "loss/kl"}
    loss.backward()
    assert all(grads(wm.vae)) and not any(grads(wm.memory)) and not any(grads(wm.inverse_head))
    wm.zero_grad(set_to_none=True)
    wm.set_phase("memory")
    loss, metrics, _ = wm.loss(batch)
    assert set(k for k in metrics if k.startswith("loss/")) == {"loss/dyn", "loss/reward", "loss/cont", "loss/inverse"}
    loss.backward()
    assert all(p.grad is None for p in wm.vae.parameters())  # frozen: no gradient at all
    assert all(grads(wm.memory.cell)) and all(grads(wm.memory.mdn)) and all(grads(wm.inverse_head))
    assert all(grads(wm.memory.reward_head)) and all(grads(wm.memory.cont_head))


def test_joint_training_reaches_everything_and_dynamics_targets_are_fixed():
    wm = tiny_model("vector", "discrete", training="joint")
    batch = batch_for("vector", "discrete")
    loss, _, _ = wm.loss(batch)
    loss.backward()
    assert all(p.grad is not None for p in wm.parameters())
    # the dynamics NLL reaches V only through the LSTM inputs, never through its targets
    wm.zero_grad(set_to_none=True)
    terms, post, _ = wm.loss_terms(batch)
    z = post.z
    assert z.requires_grad
    grad_target = torch.autograd.grad(terms["dyn"].mean(), z, retain_graph=True)[0]
    assert grad_target[:, -1].abs().sum() == 0  # the last row's z feeds no LSTM input: only a target
    # with the inverse model detached from V, only reconstruction, KL, dynamics and heads shape V
    wm2 = tiny_model("vector", "discrete", training="joint",
                     inverse=InverseModelConfig(enabled=True, units=8, layers=1, grad_to_vae=False))
    terms, _, _ = wm2.loss_terms(batch)
    terms["inverse"].mean().backward()
    assert all(p.grad is None for p in wm2.vae.parameters())


def test_the_vae_learns():
    wm = tiny_model("image", "discrete")
    batch = batch_for("image", "discrete", B=4, T=4)
    g = torch.Generator().manual_seed(0)  # frames of one random colour each: learnable from z
    colours = torch.randint(0, 256, (4, 4, 1, 1, 3), generator=g, dtype=torch.uint8)
    batch.obs["image"] = colours.expand(4, 4, 8, 8, 3).contiguous()
    opt = torch.optim.Adam(wm.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss, metrics, _ = wm.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(metrics["loss/recon"])
    assert float(metrics["loss/recon"]) < 0.5 * first


def test_kl_has_the_free_bits_floor():
    wm = tiny_model()
    terms, _, metrics = wm.loss_terms(batch_for(), phase="vae")
    floor = 0.5 * 4  # kl_tolerance * Z
    assert float(terms["kl"].detach().min()) >= floor - 1e-6 and float(metrics["kl_raw"]) < floor


# --- artifacts -----------------------------------------------------------------------------


def test_save_and_load_from_the_file_alone(tmp_path):
    wm = tiny_model("dict", "box", training="joint")
    path = tmp_path / "world_model.pt"
    wm.save(path, {"seed": 3}, update=7, calibration={"weights": {"recon": 1.0}})
    loaded, artifact = VaeMdnWorldModel.load(path)
    assert is_family(artifact.model_config) and artifact.model_config["family_format"] == 2
    assert artifact.update == 7 and loaded.cfg == wm.cfg
    batch = batch_for("dict", "box")
    for model in (wm, loaded):
        model.cfg = dataclasses.replace(model.cfg, sample_latents=False)
    torch.testing.assert_close(loaded.observe(batch).feat(), wm.observe(batch).feat())
    rssm = tiny_world_model("dict", "box")
    rssm.save(tmp_path / "rssm.pt")
    with pytest.raises(DreamerError, match="not a World Models"):
        VaeMdnWorldModel.load(tmp_path / "rssm.pt")
    assert not is_family(checkpoint.load(tmp_path / "rssm.pt", checkpoint.WorldModelArtifact).model_config)


def test_the_paper_decoder_output_linear_by_default_sigmoid_on_request():
    """Linear pixels by default (unbounded, what DreamerV3's decoders do); the paper's sigmoid
    keeps every decoded pixel in [-0.5, 0.5]; both are the same logits underneath."""
    z = torch.randn(6, 4) * 50  # far out: the logits are large
    linear = VAE(FRAME64, latent=4, depth=4)
    sigmoid = VAE(FRAME64, latent=4, depth=4, output="sigmoid")
    sigmoid.load_state_dict(linear.state_dict())
    logits = linear.decode(z)["image"].mode
    squashed = sigmoid.decode(z)["image"].mode
    torch.testing.assert_close(squashed, torch.sigmoid(logits) - 0.5)
    assert logits.abs().max() > 0.5 >= squashed.abs().max()
    with pytest.raises(ValueError, match="unknown output"):
        VAE(FRAME64, output="relu")


def test_a_format_1_world_model_loads_with_the_sigmoid_it_was_trained_with(tmp_path):
    """World models written before ``vae.output`` existed (family format 1) always decoded
    through the sigmoid: they must load as such, decoding exactly as before."""
    wm = tiny_model("frame64", vae=VAEConfig(latent=4, depth=4, mlp_units=16, mlp_layers=1, output="sigmoid"))
    path = tmp_path / "world_model.pt"
    wm.save(path)
    artifact = checkpoint.load(path, checkpoint.WorldModelArtifact)
    old = dict(artifact.model_config, family_format=1, vae={k: v for k, v in artifact.model_config["vae"].items()
                                                              if k != "output"})
    checkpoint.save(path, dataclasses.replace(artifact, model_config=old))
    loaded, _ = VaeMdnWorldModel.load(path)
    assert loaded.cfg.vae.output == "sigmoid"
    z = torch.randn(3, loaded.latent_dim)
    torch.testing.assert_close(loaded.vae.decode(z)["image"].mode, wm.vae.decode(z)["image"].mode)


# --- calibrated balancing -------------------------------------------------------------------------


def test_balance_weights_follow_the_priority_within_an_order_of_magnitude():
    magnitudes = {"recon": 2000.0, "kl": 16.0, "dyn": 40.0, "reward": 0.3, "cont": 0.7, "inverse": 1.1}
    weights = balance_weights(magnitudes)
    order = [k for k in PRIORITY if k in magnitudes]
    weighted = [magnitudes[k] * weights[k] for k in order]
    assert weighted == sorted(weighted, reverse=True) and weighted[0] / weighted[-1] < 10
    assert sum(weighted) == pytest.approx(sum(v for k, v in magnitudes.items() if k != "kl"))
    assert weights["kl"] == weights["recon"]  # V's ELBO keeps its balance


def test_calibrate_measures_sets_and_leaves_the_rng_alone():
    wm = tiny_model("image", "discrete", training="joint")
    batches = [batch_for("image", "discrete", B=2, T=4) for _ in range(2)]
    rng = torch.get_rng_state()
    before = {k: v.clone() for k, v in wm.state_dict().items()}
    result = calibrate(wm, batches, warmup_updates=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, wm.state_dict()[k]) for k, v in before.items())  # a throwaway copy trained
    assert set(result["magnitudes"]) == {"recon", "kl", "dyn", "reward", "cont", "inverse"}
    assert wm.cfg.weights.dyn == pytest.approx(result["weights"]["dyn"])
    assert "recon: |" in describe_calibration(result)


# --- dream views ------------------------------------------------------------------------------


def test_reconstruct_and_dream_and_open_loop():
    wm = tiny_model("image", "discrete")
    batch = batch_for("image", "discrete", B=1, T=6)
    out = wm.reconstruct_and_dream(batch, context=2, tau=1.0)
    assert out["recon"]["image"].shape == out["dream"]["image"].shape == (1, 6, 8, 8, 3)
    assert out["dream_reward"].shape == out["recon_cont"].shape == out["dream_std"].shape == (1, 6)
    torch.testing.assert_close(out["dream"]["image"][:, :2], out["dream"]["image"][:, :2])
    result = wm.open_loop(batch_for("image", "discrete", B=2, T=6), context=2, horizon=4, sample=False)
    assert result["mse"].shape == result["baseline"].shape == result["reward_mse"].shape == (4,)
    feat = wm.features(wm.observe(batch))
    assert 0 <= float(wm.inverse_accuracy(feat, batch)) <= 1


@pytest.mark.parametrize("action", ["discrete", "box"])
def test_the_actor_critic_learns_in_this_family_through_the_interface(action):
    """behavior.ActorCritic needs nothing but the interface: REINFORCE (discrete) and dynamics
    backprop through M's reparameterised samples (Box) both run, and the frozen model takes no
    gradient."""
    from dreamer_core.behavior import ActorCritic
    from tests.common import tiny_behavior_config

    wm = tiny_model("vector", action)
    wm.eval().requires_grad_(False)
    agent = ActorCritic.for_world_model(tiny_behavior_config(), wm)
    batch = batch_for("vector", action, B=2, T=4)
    actor_loss, critic_loss, metrics = agent.loss(wm, wm.observe(batch), batch)
    (actor_loss + critic_loss).backward()
    assert torch.isfinite(actor_loss) and torch.isfinite(critic_loss)
    assert any(p.grad is not None for p in agent.actor.parameters())
    assert all(p.grad is None for p in wm.parameters())
