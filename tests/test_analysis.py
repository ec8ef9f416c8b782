"""dreamer_core.analysis: the shapes and alignment of the dream views, a dream whose context
covers the window equals the reconstruction, exact errors and averages, seeded determinism,
open-loop error below the repeat-last baseline after a short run on a deterministic toy env,
the actor's views, a played episode's views (stage 04) and the dataset overview."""

import dataclasses

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamer_core import analysis, runs
from dreamer_core.behavior import ActorConfig, ActorCritic, BehaviorConfig
from dreamer_core.cli import app
from dreamer_core.data.dataset import Dataset
from dreamer_core.errors import DreamerError
from dreamer_core.nets.rssm import RSSMConfig
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
    return ActorCritic(cfg, world_model.feat_dim, world_model.action_space).eval()


def synthetic(obs="dict", action="discrete", steps=11, terminated=True):
    torch.manual_seed(0)
    wm = tiny_world_model(obs, action)
    episode = make_episode(OBS_SPACES[obs], ACTION_SPACES[action], steps, terminated=terminated)
    return wm, episode, analysis.episode_to_batch(episode)


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


# --- loading windows --------------------------------------------------------------------------


def test_episode_batch_is_the_stored_episode_with_a_reset_at_row_0(trained):
    data, _ = trained
    ds = Dataset(data)
    ep = ds.load_episode(2)
    batch = analysis.load_episode_batch(ds, 2)
    assert batch.shape == (1, ep.rows)
    np.testing.assert_array_equal(batch.obs["vector"][0].numpy(), ep.obs["vector"])
    np.testing.assert_array_equal(batch.action[0].numpy(), ep.action)
    np.testing.assert_array_equal(batch.reward[0].numpy(), ep.reward)
    assert batch.is_first[0].tolist() == [True] + [False] * (ep.rows - 1)
    assert batch.is_terminal[0].tolist() == ep.is_terminal.tolist()
    window = analysis.load_episode_batch(ds, 2, start=3, length=5)
    assert window.shape == (1, 5) and window.is_first[0].tolist() == [True, False, False, False, False]
    np.testing.assert_array_equal(window.obs["vector"][0].numpy(), ep.obs["vector"][3:8])
    last = analysis.load_episode_batch(ds, -1)
    assert last.shape == (1, ds.refs[-1].rows)
    with pytest.raises(DreamerError, match=f"holds {len(ds.refs)} episode"):
        analysis.load_episode_batch(ds, len(ds.refs))


def test_episode_refs_and_windows_past_the_end(trained):
    data, _ = trained
    ds = Dataset(data)
    assert analysis.episode_ref(ds, -1) == ds.refs[-1] and analysis.episode_ref(ds, 0) == ds.refs[0]
    with pytest.raises(DreamerError, match="does not exist"):
        analysis.episode_ref(ds, -len(ds.refs) - 1)
    rows = ds.refs[2].rows
    with pytest.raises(DreamerError, match=f"starts at row {rows}, but episode 2 has {rows} rows"):
        analysis.load_episode_batch(ds, 2, start=rows)


def test_first_rows_cuts_every_field():
    _, episode, batch = synthetic("dict")
    cut = analysis._first_rows(batch, 3)
    assert cut.shape == (1, 3)
    for key in batch.obs:
        assert torch.equal(cut.obs[key], batch.obs[key][:, :3])
    for name in ("action", "reward", "is_first", "is_last", "is_terminal"):
        assert torch.equal(getattr(cut, name), getattr(batch, name)[:, :3]), name


# --- dreams ----------------------------------------------------------------------------------


def test_step_error_in_pixel_units_for_frames_and_raw_units_for_vectors():
    frames = np.full((2, 2, 2, 1), 255, np.uint8)
    np.testing.assert_allclose(analysis.step_error(frames, np.zeros_like(frames)), [1.0, 1.0])
    half = np.full((2, 2, 2, 1), 0.5, np.float32)  # floats are compared as they are
    np.testing.assert_allclose(analysis.step_error(half, np.zeros((2, 2, 2, 1), np.float32)), [0.25, 0.25])
    vectors = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    np.testing.assert_allclose(analysis.step_error(vectors, np.zeros_like(vectors)), [2.5, 12.5])


@pytest.mark.parametrize("obs", ["dict", "image"])
def test_dream_views_have_the_documented_shapes(obs):
    wm, episode, batch = synthetic(obs)
    L, C = episode.rows, 4
    result = analysis.dream_episode(wm, batch, C)
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
    want = np.mean([analysis.step_error(result.dream[k], result.real[k]) for k in result.real], 0)
    np.testing.assert_allclose(result.error_dream, want, rtol=1e-6)
    last = {k: np.repeat(v[C - 1:C], L - C, 0) for k, v in result.real.items()}
    want = np.mean([analysis.step_error(last[k], result.real[k][C:]) for k in result.real], 0)
    np.testing.assert_allclose(result.error_baseline[C:], want, rtol=1e-6)
    assert len(result.horizon()["dream"]) == L - C
    # one class fires per latent and row; the probabilities are distributions
    assert result.latent_fired.shape == result.latent_probs.shape == (L, S, K)
    assert (result.latent_fired.sum(-1) == 1).all()
    np.testing.assert_allclose(result.latent_probs.sum(-1), 1.0, rtol=1e-5)
    assert 0 < result.latent_usage() <= 1
    # seeded: the same dream twice, and the caller's RNG stream is left alone
    torch.manual_seed(5)
    again = analysis.dream_episode(wm, batch, C)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))
    for key in result.dream:
        np.testing.assert_array_equal(again.dream[key], result.dream[key])


def test_the_horizon_view_and_latent_usage_are_exact():
    """horizon() slices the imagined rows and takes absolute reward errors; a Gaussian model
    (no fired classes) reports NaN usage."""
    wm, episode, batch = synthetic("vector")
    result = analysis.dream_episode(wm, batch, 3)
    h = result.horizon()
    np.testing.assert_array_equal(h["dream"], result.error_dream[3:])
    np.testing.assert_array_equal(h["baseline"], result.error_baseline[3:])
    np.testing.assert_array_equal(h["recon"], result.error_recon[3:])
    np.testing.assert_array_equal(h["reward_dream"], np.abs(result.reward_dream[3:] - result.reward[3:]))
    np.testing.assert_array_equal(h["reward_recon"], np.abs(result.reward_recon[3:] - result.reward[3:]))
    assert result.latent_usage() == float(result.latent_fired.any(0).mean())
    assert np.isnan(dataclasses.replace(result, latent_fired=None).latent_usage())
    assert result.length == episode.rows and result.vector_keys == ["vector"] and result.image_keys == []


@pytest.mark.parametrize("obs", ["vector", "image"])
def test_a_context_covering_the_window_dreams_the_reconstruction(obs):
    wm, episode, batch = synthetic(obs)
    result = analysis.dream_episode(wm, batch, context=episode.rows)
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
        post = wm.observe(batch)
        decoded = wm.decode(wm.features(post))
    np.testing.assert_array_equal(wm.categorical_latents(post)[0][0].numpy() > 0, result.latent_fired)
    for key, dist in decoded.items():
        shown = (dist.mode + 0.5).clamp(0, 1) if key == "image" else dist.mode
        np.testing.assert_allclose(shown[0].numpy(), result.recon[key], atol=1e-6)
    with pytest.raises(DreamerError, match="between 1 and"):
        analysis.dream_episode(wm, batch, context=0)


def test_open_loop_error_stays_below_the_repeat_last_baseline(trained):
    """After 300 updates the dream tracks the toy env's counter and cycling target for the whole
    15-step horizon (measured for seeds 0-2: at most 0.33 of the baseline at any step)."""
    _, run = trained
    wm, artifact = runs.load_world_model(run)
    ds = runs.run_dataset(run, artifact=artifact)
    errors = analysis.error_vs_horizon(wm, ds, context=5, horizon=15)
    assert errors["dream"].shape == errors["baseline"].shape == (15,)
    assert (errors["count"] >= 10).all()
    ratio = errors["dream"] / errors["baseline"]
    assert (ratio < 0.6).all(), ratio
    assert np.mean(errors["dream"]) < 0.25 * np.mean(errors["baseline"])
    assert (errors["recon"] < errors["baseline"]).all()


def test_error_vs_horizon_of_one_episode_is_its_dream(trained):
    """The average over one episode is that episode's dream under seed ``seed + index``; steps
    past its end are NaN with count 0, and too-short episodes are skipped."""
    _, run = trained
    wm, artifact = runs.load_world_model(run)
    ds = runs.run_dataset(run, artifact=artifact)
    i, rows = 1, ds.refs[1].rows
    horizon = rows + 3  # longer than the episode
    errors = analysis.error_vs_horizon(wm, ds, context=4, horizon=horizon, episodes=[i], seed=2)
    single = analysis.dream_episode(wm, analysis.load_episode_batch(ds, i, 0, 4 + horizon), 4, seed=2 + i).horizon()
    n = rows - 4
    for key in ("dream", "baseline", "recon", "reward_dream", "reward_recon"):
        np.testing.assert_array_equal(errors[key][:n], single[key])
        assert np.isnan(errors[key][n:]).all()
    np.testing.assert_array_equal(errors["count"], [1] * n + [0] * (horizon - n))
    skipped = analysis.error_vs_horizon(wm, ds, context=rows, horizon=2, episodes=[i])
    assert (skipped["count"] == 0).all() and np.isnan(skipped["dream"]).all()


# --- a played episode (stage 04) ----------------------------------------------------------------


@pytest.mark.parametrize("obs", ["dict", "vector"])
def test_episode_views_are_the_reconstruction_and_dream_of_the_played_rows(obs):
    wm, episode, batch = synthetic(obs)
    torch.manual_seed(3)
    views = analysis.episode_views(wm, episode, 4)
    torch.manual_seed(3)
    out = wm.reconstruct_and_dream(batch, 4)
    assert views.context == 4 and views.length == episode.rows
    assert views.image_keys == (["image"] if obs == "dict" else [])
    assert views.vector_keys == [k for k in OBS_SPACES[obs].spaces if k != "image"]
    for key in episode.obs:
        np.testing.assert_array_equal(views.real[key], batch.obs[key][0].numpy())
        np.testing.assert_array_equal(views.recon[key], out["recon"][key][0].numpy())
        np.testing.assert_array_equal(views.dream[key], out["dream"][key][0].numpy())
        np.testing.assert_array_equal(views.dream[key][:4], views.recon[key][:4])
    assert analysis.episode_views(wm, episode, 99).context == 99  # as asked: every row observed


# --- the actor in imagination ---------------------------------------------------------------------


@pytest.mark.parametrize("action", ["discrete", "box"])
def test_actor_imagination_and_the_actor_dream(action):
    wm, episode, batch = synthetic("dict", action)
    agent = tiny_agent(wm)
    imagined = analysis.imagine_with_actor(wm, agent, batch, context=3, horizon=6, samples=4)
    N, H, A = 4, 6, wm.actions.dim
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
    result = analysis.dream_episode(wm, batch, 3, agent=agent)
    L = episode.rows
    for key in result.actor_dream:
        assert result.actor_dream[key].shape == result.dream[key].shape
        np.testing.assert_array_equal(result.actor_dream[key][:3], result.recon[key][:3])
    assert result.value.shape == result.return_to_go.shape == result.reward_actor.shape == (L,)
    assert result.return_to_go[-1] == 0.0
    assert result.return_to_go[-2] == pytest.approx(result.reward[-1])


def test_actor_imagination_is_seeded_and_checks_its_context():
    wm, _, batch = synthetic("vector")
    agent = tiny_agent(wm)
    first = analysis.imagine_with_actor(wm, agent, batch, context=2, horizon=4, samples=3, seed=7)
    torch.manual_seed(123)  # the caller's stream does not matter
    again = analysis.imagine_with_actor(wm, agent, batch, context=2, horizon=4, samples=3, seed=7)
    for field in dataclasses.fields(first):
        a, b = getattr(first, field.name), getattr(again, field.name)
        if isinstance(a, dict):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
        elif a is not None:
            np.testing.assert_array_equal(a, b)
    with pytest.raises(DreamerError, match="between 1 and"):
        analysis.imagine_with_actor(wm, agent, batch, context=batch.shape[1] + 1, horizon=2)


def test_play_episode_runs_the_agent_in_the_real_env(trained):
    _, run = trained
    wm, agent, artifact = runs.load_agent(run)
    episode = analysis.play_episode(wm, agent, artifact.env_config, seed=3)
    assert 10 <= episode.steps <= 25 and episode.is_first[0] and episode.is_last[-1]
    result = analysis.dream_episode(wm, analysis.episode_to_batch(episode), 5, agent=agent)
    assert result.length == episode.rows and np.isfinite(result.value).all()


# --- dataset overview ------------------------------------------------------------------------------


def test_dataset_overview_counts_every_step(trained):
    data, _ = trained
    ds = Dataset(data)
    overview = analysis.dataset_overview(ds)
    assert overview["lengths"].sum() == ds.num_steps == len(overview["actions"]) == len(overview["rewards"])
    np.testing.assert_allclose(overview["returns"].sum(), overview["rewards"].sum(), rtol=1e-5)
    assert set(np.unique(overview["actions"])) <= {0, 1, 2}
    first = analysis.dataset_overview(ds, max_episodes=2)
    assert len(first["lengths"]) == len(ds.refs)  # per-episode figures always cover the dataset
    assert len(first["actions"]) == len(first["rewards"]) == sum(r.steps for r in ds.refs[:2])
