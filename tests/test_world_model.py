"""The world model (world_model.py) through its interface (interfaces.py) on tiny configs:
observe is the loss's posterior, step reproduces observe row by row, the shapes of imagine and
features, reconstructions in display units, categorical latents, save/load from the file alone
(and a format-1 file), the inverse-dynamics head, the replay context, the dream view, and the
V1/V2/V3 presets really building their variant."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from dreamer_core import checkpoint
from dreamer_core import config as config_lib
from dreamer_core.data import schema
from dreamer_core.errors import DreamerError
from dreamer_core.interfaces import LatentState, WorldModelInterface
from dreamer_core.nets import distributions as dists
from dreamer_core.nets.rssm import RSSMState
from dreamer_core.stages.train_world_model import TrainWorldModelConfig, make_config
from dreamer_core.types import Batch
from dreamer_core.world_model import InverseConfig, ReplayContext, WorldModel
from tests.common import (
    ACTION_SPACES,
    OBS_SPACES,
    episode_batch,
    make_episode,
    tiny_world_model,
    tiny_world_model_config,
)
from tests.nets import single_thread  # noqa: F401  (autouse fixture: tiny tensors, one thread)

LATENTS = ["categorical", "gaussian"]


def assert_states_equal(lhs: RSSMState, rhs: RSSMState, **tol) -> None:
    """Every field equal (bit for bit unless a tolerance is given); None fields on both sides."""
    for f in dataclasses.fields(RSSMState):
        a, b = getattr(lhs, f.name), getattr(rhs, f.name)
        assert (a is None) == (b is None), f.name
        if a is not None:
            if tol:
                torch.testing.assert_close(a, b, **tol)
            else:
                assert torch.equal(a, b), f.name


def obs_row(batch: Batch, t: int) -> dict[str, torch.Tensor]:
    return {k: v[:, t] for k, v in batch.obs.items()}


# --- the interface ----------------------------------------------------------------------------------


@pytest.mark.parametrize("latent", LATENTS)
def test_the_world_model_implements_the_interface(latent):
    wm = tiny_world_model("dict", "box", latent=latent)
    assert isinstance(wm, WorldModelInterface)
    init = wm.initial_state(3)
    assert isinstance(init, LatentState) and init.deter.shape == (3, 16)
    assert wm.features(init).shape == (3, wm.feat_dim)
    stoch = 4 * 4 if latent == "categorical" else 4
    assert wm.feat_dim == 16 + stoch
    assert wm.feat_onehot == ((16, 4, 4) if latent == "categorical" else None)
    assert wm.actions.dim == 2 and wm.actions.space is wm.action_space


@pytest.mark.parametrize("latent", LATENTS)
def test_observe_is_the_posterior_of_the_loss(latent):
    wm = tiny_world_model("dict", "discrete", latent=latent)
    batch = episode_batch("dict", "discrete", B=2, T=5)
    torch.manual_seed(7)
    post = wm.observe(batch)
    torch.manual_seed(7)
    _, _, loss_post = wm.loss(batch)
    assert post.deter.shape == (2, 5, 16)
    assert_states_equal(post, loss_post)
    # with a given state before row 0 (rows after a window start mid-episode)
    before = post[:, -1]
    batch.is_first[:] = False
    torch.manual_seed(8)
    post = wm.observe(batch, before)
    torch.manual_seed(8)
    _, _, loss_post = wm.loss(batch, before)
    assert_states_equal(post, loss_post)
    torch.manual_seed(8)
    assert not torch.equal(wm.observe(batch).deter, post.deter)  # the state is used


@pytest.mark.parametrize("latent", LATENTS)
@pytest.mark.parametrize("obs", ["vector", "dict"])
def test_step_from_the_previous_posterior_gives_the_next_one(latent, obs):
    """``step`` from observe's posterior at row t-1 (or the initial state) gives observe's deter at
    row t bit for bit, and its posterior parameters (observe projects the embeddings of all rows
    at once, so they may differ in the last bit)."""
    wm = tiny_world_model(obs, "discrete", latent=latent)
    batch = episode_batch(obs, "discrete", B=3, T=6)
    batch.is_first[1, 3] = True  # a new episode starts mid-window in one row
    action = wm.actions.encode(batch.action)
    with torch.no_grad():
        post = wm.observe(batch)
        for t in range(6):
            prev = wm.initial_state(3) if t == 0 else post[:, t - 1]
            state = wm.step(prev, action[:, t], obs_row(batch, t), batch.is_first[:, t],
                            generator=torch.Generator().manual_seed(t))
            assert torch.equal(state.deter, post.deter[:, t]), t
            if latent == "categorical":
                torch.testing.assert_close(state.logits, post.logits[:, t], rtol=1e-6, atol=1e-6)
                assert torch.equal(state.stoch.sum(-1), torch.ones(3, 4))  # a one-hot sample per latent
            else:
                torch.testing.assert_close(state.mean, post.mean[:, t], rtol=1e-6, atol=1e-6)
                torch.testing.assert_close(state.std, post.std[:, t], rtol=1e-6, atol=1e-6)


@pytest.fixture
def shared_noise(monkeypatch):
    """Every latent draw gets the same noise. ``observe`` draws the posteriors in its loop and the
    priors after it, ``step`` draws a prior before each posterior (rssm.py), so one seed cannot
    give both the same samples; with draws independent of their order, the stochastic samples
    of the two paths must agree."""
    for cls, name in ((dists.OneHotDist, "sample_with_index"), (dists.GaussianLatent, "sample")):
        sample = getattr(cls, name)
        monkeypatch.setattr(cls, name, lambda self, generator=None, _s=sample: _s(
            self, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("latent", LATENTS)
@pytest.mark.parametrize("obs", ["vector", "dict"])
def test_step_over_a_window_row_by_row_reproduces_observe(shared_noise, latent, obs):
    wm = tiny_world_model(obs, "discrete", latent=latent)
    batch = episode_batch(obs, "discrete", B=3, T=7)
    batch.is_first[1, 3] = True
    action = wm.actions.encode(batch.action)
    with torch.no_grad():
        post = wm.observe(batch)
        state, states = wm.initial_state(3), []
        for t in range(7):
            state = wm.step(state, action[:, t], obs_row(batch, t), batch.is_first[:, t])
            states.append(state)
    chained = RSSMState.stack(states, 1)
    if latent == "categorical":  # one-hot samples: the same classes, so the same deter, bit for bit
        assert torch.equal(chained.deter, post.deter) and torch.equal(chained.stoch, post.stoch)
        torch.testing.assert_close(chained.logits, post.logits, rtol=1e-6, atol=1e-6)
    else:  # float samples carry observe's last-bit differences forward
        assert torch.equal(chained.deter[:, 0], post.deter[:, 0])
        assert_states_equal(chained, post, rtol=1e-5, atol=1e-5)
    # the row-3 restart of window 1 forgets everything before it
    with torch.no_grad():
        fresh = wm.step(wm.initial_state(3), action[:, 3], obs_row(batch, 3), torch.ones(3, dtype=torch.bool))
    assert torch.equal(fresh.deter[1], post.deter[1, 3])
    assert not torch.equal(fresh.deter[0], post.deter[0, 3])


def test_step_uses_the_generator():
    wm = tiny_world_model()
    batch = episode_batch(B=4, T=2)
    action = wm.actions.encode(batch.action)
    with torch.no_grad():
        runs = [wm.step(wm.initial_state(4), action[:, 0], obs_row(batch, 0), batch.is_first[:, 0],
                        generator=torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(runs[0].stoch, runs[1].stoch) and not torch.equal(runs[0].stoch, runs[2].stoch)


@pytest.mark.parametrize("action", ["discrete", "box", "multibinary"])
def test_imagine_shapes_and_alignment(action):
    wm = tiny_world_model("vector", action)
    start = wm.observe(episode_batch("vector", action, B=2, T=3)).flatten(0, 1).detach()  # N = 6
    A, H, calls = wm.actions.dim, 4, []

    def policy(state):
        calls.append(state)
        return torch.tanh(wm.features(state)[:, :A])

    with torch.no_grad():
        states, actions = wm.imagine(start, policy, H)
    assert len(calls) == H + 1
    assert states.deter.shape[:2] == (6, H + 1) and actions.shape == (6, H + 1, A)
    assert wm.features(states).shape == (6, H + 1, wm.feat_dim)
    assert_states_equal(states[:, 0], start)
    for h in range(H + 1):  # action h is the policy's at state h
        assert_states_equal(calls[h], states[:, h])
        torch.testing.assert_close(actions[:, h], policy(states[:, h]))


@pytest.mark.parametrize("latent", LATENTS)
def test_features_shapes(latent):
    wm = tiny_world_model("vector", "discrete", latent=latent)
    post = wm.observe(episode_batch(B=2, T=5))
    assert wm.features(post).shape == (2, 5, wm.feat_dim)
    assert wm.features(post.flatten(0, 1)).shape == (10, wm.feat_dim)
    assert wm.features(post[:, 2]).shape == (2, wm.feat_dim)
    torch.testing.assert_close(wm.features(post)[:, :, :16], post.deter)


def test_reconstruct_gives_images_in_0_1_and_vectors_as_decoded():
    wm = tiny_world_model("dict", "discrete")
    with torch.no_grad():
        for p in wm.decoder.parameters():  # large outputs, so the clamp to [0, 1] has work to do
            p.mul_(20)
        feat = wm.features(wm.observe(episode_batch("dict", "discrete", B=2, T=3)))
        recon = wm.reconstruct(feat)
        decoded = wm.decode(feat)
    assert set(recon) == set(OBS_SPACES["dict"].spaces) == set(decoded)
    image = recon["image"]
    assert image.shape == (2, 3, 8, 8, 3) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and ((image == 0) | (image == 1)).any()
    torch.testing.assert_close(image, (decoded["image"].mode + 0.5).clamp(0, 1))
    for key in ("vector", "joints"):
        assert torch.equal(recon[key], decoded[key].mode)
    assert recon["vector"].shape == (2, 3, 3) and recon["joints"].shape == (2, 3, 5)


def test_categorical_latents():
    wm = tiny_world_model()
    post = wm.observe(episode_batch(B=2, T=3))
    samples, probs = wm.categorical_latents(post)
    assert samples.shape == probs.shape == (2, 3, 4, 4)
    assert torch.equal(samples, post.stoch)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 3, 4))
    torch.testing.assert_close(probs, post.logits.softmax(-1))
    assert wm.categorical_latents(tiny_world_model(latent="gaussian").observe(episode_batch(B=2, T=3))) is None


# --- artifacts ---------------------------------------------------------------------------------------


def test_save_load_round_trip_from_the_file_alone(tmp_path):
    box = ACTION_SPACES["box"]
    cfg = tiny_world_model_config("gaussian", inverse=InverseConfig(enabled=True, units=8, layers=1))
    cfg = dataclasses.replace(cfg, kl=dataclasses.replace(cfg.kl, mode="v1", free_nats=3.0),
                              heads=dataclasses.replace(cfg.heads, reward="mse"))
    torch.manual_seed(0)
    wm = WorldModel(cfg, OBS_SPACES["dict"], box)
    path = tmp_path / "world_model.pt"
    wm.save(path, {"seed": 4}, update=9, datasets=["data/a"], batch_size=8, seq_len=32, calibration={"w": 1.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world_model.pt"]
    loaded, artifact = WorldModel.load(path)
    assert loaded.cfg == cfg and loaded.observation_space == OBS_SPACES["dict"] and loaded.action_space == box
    want = wm.state_dict()
    assert set(loaded.state_dict()) == set(want)
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    assert (artifact.update, artifact.datasets, artifact.batch_size, artifact.seq_len) == (9, ["data/a"], 8, 32)
    assert artifact.stage_config == {"seed": 4} and artifact.calibration == {"w": 1.0}
    batch = episode_batch("dict", box, B=2, T=4)
    outputs = []
    for model in (wm, loaded):
        torch.manual_seed(1)
        loss, metrics, post = model.loss(batch)
        outputs.append((loss, metrics, post, model.reconstruct(model.features(post))))
    (loss_a, metrics_a, post_a, recon_a), (loss_b, metrics_b, post_b, recon_b) = outputs
    assert torch.equal(loss_a, loss_b) and metrics_a.keys() == metrics_b.keys()
    assert all(torch.equal(metrics_a[k], metrics_b[k]) for k in metrics_a)
    assert_states_equal(post_a, post_b)
    assert all(torch.equal(recon_a[k], recon_b[k]) for k in recon_a)


def test_a_format_1_world_model_loads(tmp_path):
    """A ``world_model.pt`` of dreamer-core 0.1.0: an untyped dict with ``checkpoint_version`` 1,
    the stage-02 config, the state dict under ``model`` and the spaces as JSON."""
    wm = tiny_world_model("vector", "discrete")
    stage = config_lib.to_dict(TrainWorldModelConfig(datasets=("data/old",), out="runs/old", model=wm.cfg,
                                                     batch_size=8, seq_len=24))
    old = {
        "checkpoint_version": 1, "dreamer_core_version": "0.1.0", "dataset_schema_version": schema.SCHEMA_VERSION,
        "config": stage, "observation_space": schema.space_to_json(wm.observation_space),
        "action_space": schema.space_to_json(wm.action_space),
        "model": wm.state_dict(), "update": 42, "calibration": {"weights": {"reward": 2.0}},
    }
    path = tmp_path / "world_model.pt"
    torch.save(old, path)
    loaded, artifact = WorldModel.load(path)
    assert loaded.cfg == wm.cfg
    assert all(torch.equal(v, wm.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert isinstance(artifact, checkpoint.WorldModelArtifact)
    assert (artifact.update, artifact.datasets, artifact.batch_size, artifact.seq_len) == (42, ["data/old"], 8, 24)
    assert artifact.calibration == {"weights": {"reward": 2.0}} and artifact.stage_config == stage
    batch = episode_batch(B=2, T=3)
    torch.manual_seed(0)
    want = wm.observe(batch)
    torch.manual_seed(0)
    assert_states_equal(loaded.observe(batch), want)


# --- inverse dynamics ---------------------------------------------------------------------------------


def inverse_world_model(action):
    torch.manual_seed(0)
    cfg = tiny_world_model_config(inverse=InverseConfig(enabled=True, units=8, layers=1))
    return WorldModel(cfg, OBS_SPACES["vector"], ACTION_SPACES[action])


@pytest.mark.parametrize("action", ["discrete", "box", "multibinary"])
def test_inverse_head_loss_and_accuracy_against_a_plain_loop(action):
    wm = inverse_world_model(action)
    batch = episode_batch("vector", action, B=2, T=5)
    batch.is_first[0, 3] = True  # row 3 of window 0 starts an episode: a_3 there is a placeholder
    torch.manual_seed(0)
    _, metrics, post = wm.loss(batch)
    feat = wm.features(post)
    actions = wm.actions
    nll, hits = 0.0, []
    for b in range(2):
        for t in range(4):  # predict a_{t+1} from (s_t, s_{t+1}) unless row t+1 starts an episode
            if batch.is_first[b, t + 1]:
                continue
            dist = wm.inverse_dist(feat[b:b + 1, t:t + 2])
            stored = batch.action[b:b + 1, t + 1:t + 2]
            nll -= dist.log_prob(actions.inverse_target(stored)).item()
            hits.append(actions.inverse_metric(dist, stored).item())
    assert len(hits) == 7
    assert metrics["loss/inverse"].item() == pytest.approx(nll / 10, rel=1e-5)  # zeros count in the mean
    accuracy = wm.inverse_accuracy(feat, batch)
    assert accuracy.item() == pytest.approx(sum(hits) / len(hits), rel=1e-5)
    if action == "box":
        assert accuracy >= 0
    else:
        assert 0 <= accuracy <= 1


def test_inverse_accuracy_is_none_without_the_head_and_multidiscrete_is_refused():
    wm = tiny_world_model()
    batch = episode_batch(B=2, T=4)
    assert wm.inverse_head is None and wm.inverse_accuracy(wm.features(wm.observe(batch)), batch) is None
    assert "loss/inverse" not in wm.loss(batch)[1]
    with pytest.raises(DreamerError, match="--inverse-model supports Discrete, MultiBinary and Box"):
        WorldModel(tiny_world_model_config(inverse=InverseConfig(enabled=True)), OBS_SPACES["vector"],
                   ACTION_SPACES["multidiscrete"])


# --- the replay context ----------------------------------------------------------------------------


def windows(episode, starts, T) -> Batch:
    """Rows ``start..start+T-1`` of one stored episode per start, as the sampler cuts them."""

    def cut(column):
        return torch.as_tensor(np.stack([column[s:s + T] for s in starts]))

    return Batch(obs={k: cut(v) for k, v in episode.obs.items()}, action=cut(episode.action),
                 reward=cut(episode.reward), is_first=cut(episode.is_first), is_last=cut(episode.is_last),
                 is_terminal=cut(episode.is_terminal))


@pytest.mark.parametrize("latent", LATENTS)
def test_replay_context_round_trip(latent):
    wm = tiny_world_model(latent=latent)
    episode = make_episode(OBS_SPACES["vector"], ACTION_SPACES["discrete"], 15, terminated=True)  # rows 0..15
    context = ReplayContext(wm)
    first = windows(episode, [0, 4], 4)
    assert context.initial_state(np.array([0, 4]) - 1, first.is_first) is None  # nothing stored yet
    with torch.no_grad():
        long = wm.observe(windows(episode, [0], 8))  # rows 0..7 in one pass
    context.store(np.arange(4)[None], long[:, :4])  # rows 0..3 as a first window saw them
    # the window at row 4 continues from row 3; the one at row 0 starts the episode
    batch = windows(episode, [4, 0], 4)
    state = context.initial_state(np.array([4, 0]) - 1, batch.is_first)
    init = wm.initial_state(2)
    assert torch.equal(state.deter[0], long.deter[0, 3]) and torch.equal(state.stoch[0], long.stoch[0, 3])
    assert torch.equal(state.deter[1], init.deter[1]) and torch.equal(state.stoch[1], init.stoch[1])
    # starting from the stored state, the window at row 4 goes on where the long pass went (up to
    # the last bit: the long pass ran with another batch size), not from a fresh start
    with torch.no_grad():
        post = wm.observe(batch, state)
        cold = wm.observe(batch)
    torch.testing.assert_close(post.deter[0, 0], long.deter[0, 4], rtol=1e-6, atol=1e-6)
    assert (cold.deter[0, 0] - long.deter[0, 4]).abs().max() > 1e-3
    # rows never replayed give the initial state; when no window has a context, None
    assert context.initial_state(np.array([9, 12]) - 1, windows(episode, [9, 12], 4).is_first) is None
    state = context.initial_state(np.array([9, 4]) - 1, windows(episode, [9, 4], 4).is_first)
    assert torch.equal(state.deter[0], init.deter[0]) and torch.equal(state.deter[1], long.deter[0, 3])
    # later stores overwrite: the context holds the posterior as the model last saw it
    context.store(np.array([[2, 3]]), long[:, 4:6])  # pretend rows 2..3 were replayed again
    state = context.initial_state(np.array([3]), windows(episode, [4], 4).is_first)
    assert torch.equal(state.deter[0], long.deter[0, 5])
    if latent == "categorical":
        assert context.stoch.dtype == np.int16  # class indices, one-hot again on the way out
    else:
        assert context.stoch.dtype == np.float32


# --- the dream view ----------------------------------------------------------------------------------


@pytest.mark.parametrize("obs", ["vector", "image"])
def test_dream_with_full_context_equals_the_reconstruction(obs):
    wm = tiny_world_model(obs, "discrete")
    batch = episode_batch(obs, "discrete", B=2, T=6)
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


# --- the variants the presets build ------------------------------------------------------------------


def plain_kl_categorical(post_logits, prior_logits):
    p, q = post_logits.double().log_softmax(-1), prior_logits.double().log_softmax(-1)
    return (p.exp() * (p - q)).sum((-2, -1))


def plain_kl_gaussian(m1, s1, m2, s2):
    m1, s1, m2, s2 = (x.double() for x in (m1, s1, m2, s2))
    return (torch.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5).sum(-1)


@pytest.mark.parametrize("preset", ["dreamerv3", "dreamerv2", "dreamerv1"])
def test_each_preset_builds_its_variant(preset):
    """Stage 02's config for each preset builds that variant (a V1 preset silently running V3 fails
    here): latents, KL mode and free nats, loss terms and their scales, reward head."""
    cfg = make_config(["data"], "out", [preset], [], {}).model
    version = preset[-2:]
    assert cfg.kl.mode == version
    assert cfg.rssm.latent == ("gaussian" if version == "v1" else "categorical")
    assert cfg.kl.free_nats == (3.0 if version == "v1" else 1.0)
    assert cfg.heads.reward == ("twohot" if version == "v3" else "mse")
    if version == "v2":
        assert cfg.kl.balance == 0.8 and cfg.rssm.deter == 600
    if version == "v1":
        assert (cfg.rssm.stoch, cfg.rssm.deter, cfg.heads.units) == (30, 200, 400)
    if version != "v3":
        assert (cfg.norm, cfg.act, cfg.rssm.norm, cfg.rssm.act) == ("none", "elu", "none", "elu")
        assert not cfg.encoder.symlog_inputs and cfg.scales.kl == 1.0

    torch.manual_seed(0)
    wm = WorldModel(cfg, OBS_SPACES["vector"], ACTION_SPACES["discrete"])
    batch = episode_batch(B=1, T=3)
    torch.manual_seed(1)
    loss, metrics, post = wm.loss(batch)
    # the same pass again, for the prior (the loss returns only the posterior)
    torch.manual_seed(1)
    post_again, prior = wm.rssm.observe(wm.encoder(batch.obs), wm.actions.encode(batch.action), batch.is_first)
    assert_states_equal(post, post_again)
    terms = {k[len("loss/"):] for k in metrics if k.startswith("loss/")}
    feat = wm.features(post)
    reward = wm.reward_dist(feat)
    if version == "v1":
        assert post.mean is not None and post.std is not None and post.logits is None
        assert wm.categorical_latents(post) is None
        kl = plain_kl_gaussian(post.mean, post.std, prior.mean, prior.std)
    else:
        assert post.logits is not None and post.mean is None and post.std is None
        assert wm.categorical_latents(post) is not None
        kl = plain_kl_categorical(post.logits, prior.logits)
    clipped = kl.clamp(min=cfg.kl.free_nats).mean().item()
    if version == "v3":
        assert terms == {"recon", "reward", "cont", "dyn", "rep"}
        assert metrics["loss/dyn"].item() == pytest.approx(clipped, rel=1e-5)
        assert metrics["loss/rep"].item() == pytest.approx(clipped, rel=1e-5)
        kl_part = cfg.scales.dyn * metrics["loss/dyn"] + cfg.scales.rep * metrics["loss/rep"]
        assert (cfg.scales.dyn, cfg.scales.rep) == (0.5, 0.1)
        assert isinstance(reward, dists.TwoHotDist) and wm.reward_head.net[-1].out_features == 255
        assert metrics["loss/reward"].item() == pytest.approx(
            -reward.log_prob(batch.reward).mean().item(), rel=1e-5)
    else:
        assert terms == {"recon", "reward", "cont", "kl"}
        assert metrics["loss/kl"].item() == pytest.approx(clipped, rel=1e-5)
        kl_part = cfg.scales.kl * metrics["loss/kl"]
        assert isinstance(reward, dists.MSEDist) and wm.reward_head.net[-1].out_features == 1
        assert metrics["loss/reward"].item() == pytest.approx(
            ((reward.mode - batch.reward) ** 2).mean().item(), rel=1e-5)
    total = metrics["loss/recon"] + metrics["loss/reward"] + metrics["loss/cont"] + kl_part
    assert loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert math.isfinite(loss.item())
    # posterior = prior (same output layers, zero weights): every KL term sits at the free nats
    with torch.no_grad():
        bias = torch.randn(wm.rssm.prior_net.net[-1].out_features, generator=torch.Generator().manual_seed(0))
        for head in (wm.rssm.post_net.net[-1], wm.rssm.prior_net.net[-1]):
            head.weight.zero_()
            head.bias.copy_(bias)
        _, metrics, _ = wm.loss(batch)
    for term in ({"dyn", "rep"} if version == "v3" else {"kl"}):
        assert metrics[f"loss/{term}"].item() == pytest.approx(cfg.kl.free_nats, abs=1e-6), term


@pytest.mark.parametrize("latent,mode", [("gaussian", "v3"), ("gaussian", "v2"), ("categorical", "v1")])
def test_latents_and_kl_that_do_not_go_together_are_refused(latent, mode):
    cfg = tiny_world_model_config(latent)
    cfg = dataclasses.replace(cfg, kl=dataclasses.replace(cfg.kl, mode=mode))
    with pytest.raises(DreamerError, match=f"latents \\({latent}\\) and KL \\({mode}\\) do not go together"):
        WorldModel(cfg, OBS_SPACES["vector"], ACTION_SPACES["discrete"])
