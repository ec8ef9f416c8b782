"""dreamer_core.stages.dream and `dreamer dream`: the shapes and alignment of the dream views, a dream
whose context covers the window equals the reconstruction, open-loop error below the
repeat-last baseline after a short run on a deterministic toy env, the actor's views, the
videos and error plots of the CLI for vector and pixel data, and its refusals."""

import dataclasses
import time

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from dreamer_core.behavior import ActorConfig, ActorCritic, BehaviorConfig
from dreamer_core.cli import app
from dreamer_core.data.dataset import Dataset
from dreamer_core.errors import DreamerError
from dreamer_core.nets.rssm import RSSMConfig
from dreamer_core.stages import dream
from dreamer_core.stages.agents import load_agent
from dreamer_core.world_model import EncoderConfig, HeadConfig, WorldModel, WorldModelConfig
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode

runner = CliRunner()
TINY = ["--preset", "tiny", "-q"]


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


def tiny_world_model(obs="vector", action="discrete"):
    cfg = WorldModelConfig(rssm=RSSMConfig(deter=16, hidden=16, stoch=4, classes=4),
                           encoder=EncoderConfig(cnn_depth=4, mlp_units=16, mlp_layers=1),
                           heads=HeadConfig(units=16, layers=1))
    return WorldModel(cfg, OBS_SPACES[obs], ACTION_SPACES[action]).eval()


def tiny_agent(world_model):
    cfg = BehaviorConfig(horizon=5, actor=ActorConfig(units=16, layers=1),
                         critic=dataclasses.replace(BehaviorConfig().critic, units=16, layers=1))
    return ActorCritic(cfg, world_model.rssm.feat_dim, world_model.action_space).eval()


def synthetic(obs="dict", action="discrete", steps=11, terminated=True):
    torch.manual_seed(0)
    wm = tiny_world_model(obs, action)
    episode = make_episode(OBS_SPACES[obs], ACTION_SPACES[action], steps, terminated=terminated)
    return wm, episode, dream.episode_to_batch(episode)


# --- runs built once --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """DummyDiscrete (t and a cycling one-hot target: fully predictable from a few rows) with a
    tiny world model after 300 updates at lr 1e-3 (about 17 s), plus a 4-update behavior."""
    base = tmp_path_factory.mktemp("trained")
    data, run = base / "data", base / "run"
    assert dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", data, "--steps", 600, "-q").exit_code == 0
    result = dreamer("train-world-model", data, "--out", run, "--updates", 300, *TINY, "--set", "optim.lr=1e-3")
    assert result.exit_code == 0, result.output
    result = dreamer("train-behavior", "--run", run, "--updates", 4, *TINY)
    assert result.exit_code == 0, result.output
    return data, run


@pytest.fixture(scope="module")
def pixel_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pixels")
    data, run = base / "data", base / "run"
    result = dreamer("collect", "--env", "dreamer/DummyImage-v0", "--size", 16, "--out", data, "--steps", 200, "-q")
    assert result.exit_code == 0, result.output
    result = dreamer("train-world-model", data, "--out", run, "--updates", 4, *TINY)
    assert result.exit_code == 0, result.output
    return data, run


# --- library ----------------------------------------------------------------------------------


def test_episode_batch_is_the_stored_episode_with_a_reset_at_row_0(trained):
    data, _ = trained
    ds = Dataset(data)
    ep = ds.load_episode(2)
    batch = dream.load_episode_batch(ds, 2)
    assert batch.shape == (1, ep.rows)
    np.testing.assert_array_equal(batch.obs["vector"][0].numpy(), ep.obs["vector"])
    np.testing.assert_array_equal(batch.action[0].numpy(), ep.action)
    np.testing.assert_array_equal(batch.reward[0].numpy(), ep.reward)
    assert batch.is_first[0].tolist() == [True] + [False] * (ep.rows - 1)
    assert batch.is_terminal[0].tolist() == ep.is_terminal.tolist()
    window = dream.load_episode_batch(ds, 2, start=3, length=5)
    assert window.shape == (1, 5) and window.is_first[0].tolist() == [True, False, False, False, False]
    np.testing.assert_array_equal(window.obs["vector"][0].numpy(), ep.obs["vector"][3:8])
    last = dream.load_episode_batch(ds, -1)
    assert last.shape == (1, ds.refs[-1].rows)
    with pytest.raises(DreamerError, match=f"holds {len(ds.refs)} episode"):
        dream.load_episode_batch(ds, len(ds.refs))


@pytest.mark.parametrize("obs", ["dict", "image"])
def test_dream_views_have_the_documented_shapes(obs):
    wm, episode, batch = synthetic(obs)
    L, C = episode.rows, 4
    result = dream.dream_episode(wm, batch, C)
    S, K = wm.cfg.rssm.stoch, wm.cfg.rssm.classes
    for key, space in OBS_SPACES[obs].spaces.items():
        assert result.real[key].shape == result.recon[key].shape == result.dream[key].shape == (L, *space.shape)
        np.testing.assert_array_equal(result.dream[key][:C], result.recon[key][:C])  # the observed rows
        assert not np.allclose(result.dream[key][C:], result.recon[key][C:])
    assert result.image_keys == ["image"]
    for name in ("reward", "reward_recon", "reward_dream", "cont", "cont_recon", "cont_dream",
                 "error_recon", "error_dream", "error_baseline"):
        assert getattr(result, name).shape == (L,), name
    np.testing.assert_array_equal(result.cont, 1.0 - episode.is_terminal)
    assert np.isnan(result.error_baseline[:C]).all() and np.isfinite(result.error_baseline[C:]).all()
    # errors: mean over keys of the per-row MSE, images in [0, 1] units
    want = np.mean([dream.step_error(result.dream[k], result.real[k]) for k in result.real], 0)
    np.testing.assert_allclose(result.error_dream, want, rtol=1e-6)
    last = {k: np.repeat(v[C - 1:C], L - C, 0) for k, v in result.real.items()}
    want = np.mean([dream.step_error(last[k], result.real[k][C:]) for k in result.real], 0)
    np.testing.assert_allclose(result.error_baseline[C:], want, rtol=1e-6)
    assert len(result.horizon()["dream"]) == L - C
    # one class fires per latent and row; the probabilities are distributions
    assert result.latent_fired.shape == result.latent_probs.shape == (L, S, K)
    assert (result.latent_fired.sum(-1) == 1).all()
    np.testing.assert_allclose(result.latent_probs.sum(-1), 1.0, rtol=1e-5)
    assert 0 < result.latent_usage() <= 1
    # seeded: the same dream twice, and the caller's RNG stream is left alone
    torch.manual_seed(5)
    again = dream.dream_episode(wm, batch, C)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))
    for key in result.dream:
        np.testing.assert_array_equal(again.dream[key], result.dream[key])


@pytest.mark.parametrize("obs", ["vector", "image"])
def test_a_context_covering_the_window_dreams_the_reconstruction(obs):
    wm, episode, batch = synthetic(obs)
    result = dream.dream_episode(wm, batch, context=episode.rows)
    for key in result.recon:
        np.testing.assert_array_equal(result.dream[key], result.recon[key])
    np.testing.assert_array_equal(result.error_dream, result.error_recon)
    np.testing.assert_array_equal(result.reward_dream, result.reward_recon)
    np.testing.assert_array_equal(result.cont_dream, result.cont_recon)
    assert np.isnan(result.error_baseline).all() and len(result.horizon()["dream"]) == 0
    # the latents are the states behind the reconstruction: the same seeded posterior pass
    # fires the same classes, and decoding it gives the reconstruction back
    torch.manual_seed(0)
    with torch.no_grad():
        post, _ = wm.rssm.observe(wm.encoder(batch.obs), wm.codec.encode(batch.action), batch.is_first)
        decoded = wm.decoder(post.feat())
    np.testing.assert_array_equal(post.stoch[0].numpy() > 0, result.latent_fired)
    for key, dist in decoded.items():
        shown = (dist.mode + 0.5).clamp(0, 1) if key == "image" else dist.mode
        np.testing.assert_allclose(shown[0].numpy(), result.recon[key], atol=1e-6)
    with pytest.raises(DreamerError, match="between 1 and"):
        dream.dream_episode(wm, batch, context=0)


def test_open_loop_error_stays_below_the_repeat_last_baseline(trained):
    """After 300 updates the dream tracks the toy env's counter and cycling target for the whole
    15-step horizon (measured for seeds 0-2: at most 0.33 of the baseline at any step)."""
    _, run = trained
    wm, blob = dream.load_world_model(run)
    ds = dream.run_dataset(run, blob=blob)
    errors = dream.error_vs_horizon(wm, ds, context=5, horizon=15)
    assert errors["dream"].shape == errors["baseline"].shape == (15,)
    assert (errors["count"] >= 10).all()
    ratio = errors["dream"] / errors["baseline"]
    assert (ratio < 0.6).all(), ratio
    assert np.mean(errors["dream"]) < 0.25 * np.mean(errors["baseline"])
    assert (errors["recon"] < errors["baseline"]).all()


@pytest.mark.parametrize("action", ["discrete", "box"])
def test_actor_imagination_and_the_actor_dream(action):
    wm, episode, batch = synthetic("dict", action)
    agent = tiny_agent(wm)
    imagined = dream.imagine_with_actor(wm, agent, batch, context=3, horizon=6, samples=4)
    N, H, A = 4, 6, wm.codec.dim
    assert imagined.obs["image"].shape == (N, H + 1, *OBS_SPACES["dict"]["image"].shape)
    assert imagined.action.shape == (N, H + 1, A) and imagined.entropy.shape == (N, H + 1)
    assert imagined.reward.shape == imagined.cont.shape == imagined.lambda_return.shape == (N, H)
    assert imagined.value.shape == imagined.weight.shape == (N, H + 1)
    assert imagined.env_action.shape[:2] == (N, H + 1)
    assert np.isfinite(imagined.lambda_return).all()
    np.testing.assert_allclose(imagined.weight[:, 0], 1.0)  # the start row is not terminal
    if action == "discrete":
        np.testing.assert_allclose(imagined.policy_probs.sum(-1), 1.0, rtol=1e-5)
    else:
        assert imagined.policy_probs is None
    # all samples start from the same state: the first decoded frame is shared
    np.testing.assert_allclose(imagined.obs["image"][:, 0], imagined.obs["image"][:1, 0].repeat(N, 0), atol=1e-6)
    result = dream.dream_episode(wm, batch, 3, agent=agent)
    L = episode.rows
    for key in result.actor_dream:
        assert result.actor_dream[key].shape == result.dream[key].shape
        np.testing.assert_array_equal(result.actor_dream[key][:3], result.recon[key][:3])
    assert result.value.shape == result.return_to_go.shape == result.reward_actor.shape == (L,)
    assert result.return_to_go[-1] == 0.0
    assert result.return_to_go[-2] == pytest.approx(result.reward[-1])


def test_play_episode_runs_the_agent_in_the_real_env(trained):
    _, run = trained
    wm, agent, blob = load_agent(run)
    episode = dream.play_episode(wm, agent, blob["env_config"], seed=3)
    assert 10 <= episode.steps <= 25 and episode.is_first[0] and episode.is_last[-1]
    result = dream.dream_episode(wm, dream.episode_to_batch(episode), 5, agent=agent)
    assert result.length == episode.rows and np.isfinite(result.value).all()


def test_dataset_overview_counts_every_step(trained):
    data, _ = trained
    ds = Dataset(data)
    overview = dream.dataset_overview(ds)
    assert overview["lengths"].sum() == ds.num_steps == len(overview["actions"]) == len(overview["rewards"])
    np.testing.assert_allclose(overview["returns"].sum(), overview["rewards"].sum(), rtol=1e-5)
    assert set(np.unique(overview["actions"])) <= {0, 1, 2}


def test_a_200_step_episode_renders_quickly(tmp_path):
    wm, episode, batch = synthetic("dict", steps=199, terminated=False)
    start = time.perf_counter()
    result = dream.dream_episode(wm, batch, 10, agent=tiny_agent(wm))
    frames = dream.dream_frames(result)
    dream.write_video(frames, tmp_path / "long.gif")
    seconds = time.perf_counter() - start
    assert len(frames) == 200 and len({f.shape for f in frames}) == 1
    assert seconds < 30, seconds


def test_demo_run_builds_once_and_redoes_an_unfinished_stage(tmp_path):
    kwargs = dict(env="dreamer/DummyDiscrete-v0", steps=150, world_model_updates=3, behavior_updates=2, progress=False)
    run, data = dream.demo_run(tmp_path, upto="world_model", **kwargs)
    assert (run / "world_model.pt").exists() and not (run / "behavior.pt").exists()
    assert Dataset(data).num_steps == 150
    stamp = (run / "world_model.pt").stat().st_mtime_ns
    (run / "behavior.pt").write_bytes(b"left by a killed notebook")
    run, data = dream.demo_run(tmp_path, **kwargs)
    assert (run / "world_model.pt").stat().st_mtime_ns == stamp  # reused
    load_agent(run)  # the unfinished behavior was trained again
    with pytest.raises(DreamerError, match="upto"):
        dream.demo_run(tmp_path, upto="everything")


# --- the command --------------------------------------------------------------------------------


def gif_frames(path):
    with Image.open(path) as image:
        assert image.format == "GIF"
        return image.n_frames, image.size


def test_dream_command_writes_a_gif_and_an_error_plot_for_vectors(trained, tmp_path):
    data, run = trained
    out = tmp_path / "videos" / "dreams.gif"
    out.parent.mkdir()
    out.write_bytes(b"an older file the user named again")
    result = dreamer("dream", "--run", run, "--out", out, "--episode", 1, "--context", 4, "--actor")
    assert result.exit_code == 0, result.output
    rows = Dataset(data).refs[1].rows
    frames, (width, height) = gif_frames(out)
    assert frames == rows and width > 200 and height > 150
    with Image.open(tmp_path / "videos" / "dreams_error.png") as png:
        assert png.format == "PNG"
    assert sorted(p.name for p in out.parent.iterdir()) == ["dreams.gif", "dreams_error.png"]  # no temp files
    assert "open-loop MSE" in result.output and "repeat-last" in result.output


def test_dream_command_for_pixels_gif_and_mp4(pixel_run, tmp_path):
    data, run = pixel_run
    result = dreamer("dream", "--run", run, "--dataset", data, "--out", tmp_path / "px.gif", "--context", 3,
                     "--horizon", 6)
    assert result.exit_code == 0, result.output
    frames, (width, height) = gif_frames(tmp_path / "px.gif")
    assert frames == 9 and width >= 3 * 128 and height >= 128
    assert (tmp_path / "px_error.png").exists()
    result = dreamer("dream", "--run", run, "--out", tmp_path / "px.mp4", "--episode", -1, "--context", 2)
    assert result.exit_code == 0, result.output
    import imageio.v2 as imageio

    with imageio.get_reader(tmp_path / "px.mp4") as reader:
        assert reader.count_frames() == Dataset(data).refs[-1].rows


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_dream_command_refuses_bad_inputs(trained, pixel_run, tmp_path):
    data, run = trained
    pixel_data, pixel = pixel_run
    out = tmp_path / "x.gif"
    n = len(Dataset(data).refs)
    assert_user_error(dreamer("dream", "--run", run, "--out", out, "--episode", n), f"holds {n} episode")
    rows = Dataset(data).refs[0].rows
    assert_user_error(dreamer("dream", "--run", run, "--out", out, "--context", rows), f"has {rows} rows")
    assert_user_error(dreamer("dream", "--run", tmp_path / "missing", "--out", out), "No run directory")
    (tmp_path / "empty").mkdir()
    assert_user_error(dreamer("dream", "--run", tmp_path / "empty", "--out", out), "has no world_model.pt")
    assert_user_error(dreamer("dream", "--run", run, "--dataset", pixel_data, "--out", out),
                      "does not fit the checkpoint")
    assert_user_error(dreamer("dream", "--run", run, "--out", tmp_path / "x.png"), ".gif or .mp4")
    assert_user_error(dreamer("dream", "--run", pixel, "--out", out, "--actor"), "has no behavior.pt")
    # the recorded dataset has moved away
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "world_model.pt").write_bytes((run / "world_model.pt").read_bytes())
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["config"]["datasets"] = [str(tmp_path / "gone")]
    (moved / "config.yaml").write_text(yaml.safe_dump(config))
    assert_user_error(dreamer("dream", "--run", moved, "--out", out), "does not exist", "--dataset")
    assert not out.exists()


def test_dream_is_a_command():
    result = dreamer("dream", "--help")
    assert result.exit_code == 0 and "--context" in result.output and "--horizon" in result.output
