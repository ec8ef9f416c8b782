"""dreamer_core.analysis: the shapes and alignment of the dream views, a dream whose context
covers the window equals the reconstruction, exact errors and averages, seeded determinism,
open-loop error below the repeat-last baseline after a short run on a deterministic toy env,
the actor's views, a played episode's views (stage 04) and the dataset overview. The research
views against plain references: discounted returns against a double sum, the correlation
against np.corrcoef, PCA against the eigenvectors of the covariance, the latent PCA against
its own parts, the per-step KL against the world model's own posterior/prior pass (and the
loss's ``kl`` diagnostic), the critic check against the critic and the returns; a run's
metrics and return curves on hand-written online, staged and legacy runs."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dreamer_core import analysis, runs
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorConfig, ActorCritic, BehaviorConfig
from dreamer_core.cli import app
from dreamer_core.data.dataset import Dataset
from dreamer_core.errors import DreamerError
from dreamer_core.nets import distributions as dists
from dreamer_core.nets.rssm import RSSMConfig
from dreamer_core.types import Batch
from dreamer_core.world_model import EncoderConfig, HeadConfig, WorldModel, WorldModelConfig
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode, tiny_world_model_config

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


# --- plain numerics --------------------------------------------------------------------------------


def test_discounted_returns_match_the_double_sum():
    """G_t = sum_k r_k prod_{t<j<k} gamma c_j + bootstrap prod_{t<j<L} gamma c_j, summed directly."""
    rng = np.random.default_rng(0)
    for gamma, bootstrap in ((0.9, 0.0), (0.5, 2.5), (1.0, 0.0)):
        reward = rng.standard_normal(9)
        cont = (rng.random(9) > 0.3).astype(float)
        L = len(reward)
        want = np.zeros(L)
        for t in range(L):
            for k in range(t + 1, L):
                want[t] += reward[k] * np.prod(gamma * cont[t + 1:k])
            want[t] += bootstrap * np.prod(gamma * cont[t + 1:])
        np.testing.assert_allclose(analysis.discounted_returns(reward, cont, gamma, bootstrap), want, rtol=1e-12)
    # gamma 1 without terminals: the plain return-to-go
    reward = rng.standard_normal(6)
    togo = analysis.discounted_returns(reward, np.ones(6), 1.0)
    np.testing.assert_allclose(togo, [reward[t + 1:].sum() for t in range(6)], rtol=1e-12)
    assert analysis.discounted_returns(np.zeros(0), np.zeros(0), 0.9).shape == (0,)


def test_correlation_is_numpys_pearson():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(50)
    y = 0.6 * x + rng.standard_normal(50)
    assert analysis.correlation(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], rel=1e-12)
    assert analysis.correlation(x, -2 * x + 1) == pytest.approx(-1.0)
    assert np.isnan(analysis.correlation(x, np.ones(50)))  # constant
    assert np.isnan(analysis.correlation([1.0], [2.0]))


def test_pca_matches_the_covariance_eigenvectors():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 6)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) @ np.linalg.qr(
        rng.standard_normal((6, 6)))[0] + 4.0
    fit = analysis.pca(x, components=3)
    eigvals, eigvecs = np.linalg.eigh(np.cov(x, rowvar=False))
    order = np.argsort(eigvals)[::-1][:3]
    for axis, ref in zip(fit.axes, eigvecs[:, order].T):
        np.testing.assert_allclose(np.abs(axis @ ref), 1.0, rtol=1e-8)  # the same direction up to sign
        assert axis[np.abs(axis).argmax()] > 0  # the sign convention
    np.testing.assert_allclose(fit.explained, eigvals[order] / eigvals.sum(), rtol=1e-8)
    np.testing.assert_allclose(fit.mean, x.mean(0))
    np.testing.assert_allclose(fit.points, (x - x.mean(0)) @ fit.axes.T, atol=1e-9)
    cov = np.cov(fit.points, rowvar=False)
    np.testing.assert_allclose(cov - np.diag(np.diag(cov)), 0.0, atol=1e-8)  # uncorrelated components
    assert analysis.pca(x[:2], components=5).points.shape == (2, 2)  # at most as many as the points
    with pytest.raises(DreamerError, match="at least two points"):
        analysis.pca(x[:1])


# --- latent views ----------------------------------------------------------------------------------


def test_latent_pca_projects_every_row_of_the_episodes(trained):
    data, run = trained
    wm, _ = runs.load_world_model(run)
    ds = Dataset(data)
    ids = [0, 3]
    latent = analysis.latent_pca(wm, ds, ids, seed=4)
    eps = [ds.load_episode(i) for i in ids]
    M = sum(ep.rows for ep in eps)
    assert latent.points.shape == (M, 2) and latent.explained.shape == (2,)
    assert latent.step.tolist() == [t for ep in eps for t in range(ep.rows)]
    assert latent.episode.tolist() == [i for i, ep in zip(ids, eps) for _ in range(ep.rows)]
    # the features of a seeded posterior pass per episode, projected by pca
    feats = []
    for i, ep in zip(ids, eps):
        torch.manual_seed(4 + i)
        with torch.no_grad():
            feats.append(wm.features(wm.observe(analysis.episode_to_batch(ep)))[0].numpy())
    fit = analysis.pca(np.concatenate(feats))
    np.testing.assert_allclose(latent.points, fit.points, atol=1e-5)
    assert latent.feat_dim == wm.feat_dim
    # the plain return still to come, and the action taken from each state (none at the last row)
    np.testing.assert_allclose(latent.return_to_go, np.concatenate(
        [[ep.reward[t + 1:].sum() for t in range(ep.rows)] for ep in eps]), atol=1e-5)
    np.testing.assert_array_equal(latent.action, np.concatenate([np.append(ep.action[1:], np.nan) for ep in eps]))
    with pytest.raises(DreamerError, match="at least one episode"):
        analysis.latent_pca(wm, ds, [])


def _window_batch(episode, start, stop, first=True):
    batch = analysis.episode_to_batch(episode, start, stop)
    if not first:
        batch.is_first[:, 0] = False
    return batch


def _cat_batches(parts, dim):
    fields = ("action", "reward", "is_first", "is_last", "is_terminal")
    return Batch(obs={k: torch.cat([b.obs[k] for b in parts], dim) for k in parts[0].obs},
                 **{f: torch.cat([getattr(b, f) for b in parts], dim) for f in fields})


def test_kl_surprise_is_the_kl_between_the_models_own_posterior_and_prior():
    """Two windows: one with an episode start at row 6, one starting mid-episode (row 0 not
    first). The prior each row gets through the interface is the one ``observe`` pairs with
    the posterior, so the KL equals the model's own pass, and its mean the loss's diagnostic."""
    torch.manual_seed(0)
    wm = tiny_world_model("dict", "discrete")
    a, b, c = (make_episode(OBS_SPACES["dict"], ACTION_SPACES["discrete"], 11, terminated=True, episode_id=i)
               for i in range(3))
    first = _cat_batches([_window_batch(a, 6, 12), _window_batch(b, 0, 6)], 1)  # [1, 12], start at row 6
    batch = _cat_batches([first, _window_batch(c, 0, 12, first=False)], 0)  # [2, 12]
    assert batch.is_first.tolist()[0] == [True] + [False] * 5 + [True] + [False] * 5
    assert not batch.is_first[1].any()
    kl = analysis.kl_surprise(wm, batch, seed=3)
    assert kl.shape == (2, 12) and (kl >= -1e-9).all()
    torch.manual_seed(3)
    with torch.no_grad():
        post, prior = wm._observe(batch)
        want = dists.kl_categorical(post.logits, prior.logits).numpy()
    np.testing.assert_allclose(kl, want, rtol=1e-4, atol=1e-6)
    torch.manual_seed(3)
    with torch.no_grad():
        _, metrics, _ = wm.loss(batch)
    assert kl.mean() == pytest.approx(float(metrics["kl"]), rel=1e-4)
    # a Gaussian model: no prior probabilities through the interface
    gaussian = WorldModel(tiny_world_model_config("gaussian"), OBS_SPACES["dict"], ACTION_SPACES["discrete"]).eval()
    assert analysis.kl_surprise(gaussian, batch) is None


@pytest.mark.parametrize("action", ["discrete", "box"])
def test_value_vs_return_against_the_critic_and_the_returns(action):
    torch.manual_seed(0)
    wm = tiny_world_model("vector", action)
    agent = tiny_agent(wm)
    with torch.no_grad():  # the critic's output layer starts at zero: make its values differ
        for param in agent.parameters():
            param.add_(0.3 * torch.randn_like(param))
    ended = make_episode(OBS_SPACES["vector"], ACTION_SPACES[action], 12, terminated=True, episode_id=1)
    cut = make_episode(OBS_SPACES["vector"], ACTION_SPACES[action], 9, terminated=False, episode_id=2)
    check = analysis.value_vs_return(wm, agent, [ended, cut], seed=5)
    assert len(check.value) == ended.rows - 1 + cut.rows  # the terminal row is left out
    assert check.gamma == agent.cfg.gamma
    for i, ep in enumerate((ended, cut)):
        torch.manual_seed(5 + i)
        with torch.no_grad():
            value = agent.value(wm.features(wm.observe(analysis.episode_to_batch(ep)))).mean[0].double().numpy()
        keep = ~ep.is_terminal
        rows = check.episode == i
        np.testing.assert_allclose(check.value[rows], value[keep], rtol=1e-6)
        ret = analysis.discounted_returns(ep.reward, 1.0 - ep.is_terminal, agent.cfg.gamma)
        np.testing.assert_allclose(check.ret[rows], ret[keep])
        np.testing.assert_array_equal(check.step[rows], np.arange(ep.rows)[keep])
    # gamma 0.997: only the terminated episode's returns are complete
    np.testing.assert_array_equal(check.exact, check.episode == 0)
    exact = check.exact
    assert np.isfinite(check.correlation) and np.std(check.value) > 0
    assert check.correlation == pytest.approx(np.corrcoef(check.value[exact], check.ret[exact])[0, 1], rel=1e-9)
    assert check.correlation_all == pytest.approx(np.corrcoef(check.value, check.ret)[0, 1], rel=1e-9)
    # gamma 0.5: rows of the cut episode with 7 or more rows left lose less than 1% of their return
    half = analysis.value_vs_return(wm, agent, [ended, cut], gamma=0.5, seed=5)
    left = cut.rows - 1 - half.step[half.episode == 1]
    np.testing.assert_array_equal(half.exact[half.episode == 1], left >= 7)
    with pytest.raises(DreamerError, match="at least one episode"):
        analysis.value_vs_return(wm, agent, [])


# --- a run's metrics ---------------------------------------------------------------------------------


def _write_run(path, sections=None, metrics=(), behavior=(), reports=(), legacy=None):
    path.mkdir(parents=True)
    if sections:
        (path / "config.yaml").write_text(config_lib.dump_sections(sections))
    if legacy:
        (path / legacy[0]).write_text(json.dumps(legacy[1]))  # YAML reads JSON
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    if behavior:
        (path / "behavior_metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in behavior))
    for name, report in reports:
        (path / "eval" / name).mkdir(parents=True)
        (path / "eval" / name / "report.json").write_text(report if isinstance(report, str) else json.dumps(report))
    return path


def test_run_metrics_and_return_curves_of_an_online_run(tmp_path):
    records = [{"step": 25, "train/return": 9.0}, {"step": 50, "train/return": 12.0},
               {"step": 100, "wm/loss": 3.0, "imag/return": 0.5, "actor/entropy": 1.0},
               {"step": 200, "wm/loss": 2.0, "imag/return": "nan"},  # non-finite values are logged as text
               {"step": 200, "eval/return": 11.0, "eval/return_std": 2.0},
               {"step": 300, "imag/return": 0.9, "eval/return": 15.0, "eval/return_std": 1.0}]
    run = _write_run(tmp_path / "online", {"train": {"config": {"steps": 300}}}, records)
    assert analysis.run_kind(run) == "online"
    metrics = analysis.run_metrics(run)
    assert metrics.kind == "online" and metrics.behavior is metrics.world_model
    assert metrics.world_model_unit == metrics.behavior_unit == "env steps"
    assert metrics.has("wm/loss") and not metrics.has("val/wm/loss") and metrics.has("actor/entropy", "behavior")
    curves = analysis.return_curves(metrics)
    np.testing.assert_array_equal(curves["imagined"], [[100, 300], [0.5, 0.9]])
    np.testing.assert_array_equal(curves["train"], [[25, 50], [9.0, 12.0]])
    np.testing.assert_array_equal(curves["eval"], [[200, 300], [11.0, 15.0]])
    np.testing.assert_array_equal(curves["eval_std"], [2.0, 1.0])
    # a run of dreamer-core 0.3.0 and earlier: its own train_config.yaml
    legacy = _write_run(tmp_path / "legacy", metrics=records,
                        legacy=("train_config.yaml", {"stage": "train", "config": {"steps": 300}}))
    assert analysis.run_kind(legacy) == "online"


def test_run_metrics_and_return_curves_of_a_staged_run(tmp_path):
    reports = [("2026-01-02", {"behavior_update": 40, "return_mean": 20.0, "return_std": 3.0}),
               ("2026-01-01", {"behavior_update": 10, "return_mean": 5.0, "return_std": 1.0}),
               ("2026-01-03", "{torn"),  # unreadable: skipped
               ("2026-01-04", {"returns": [1.0]})]  # no update recorded: not on the curve
    run = _write_run(tmp_path / "staged", {"train-world-model": {"config": {"updates": 20}},
                                           "train-behavior": {"config": {"updates": 50}}},
                     [{"step": 5, "wm/loss": 3.0}, {"step": 10, "val/wm/loss": 2.5}],
                     [{"step": 2, "imag/return": 0.1}, {"step": 4, "imag/return": 0.3}], reports)
    assert analysis.run_kind(run) == "staged"
    metrics = analysis.run_metrics(run)
    assert (metrics.world_model_unit, metrics.behavior_unit) == ("world-model updates", "behavior updates")
    assert metrics.has("val/wm/loss") and not metrics.has("imag/return") and metrics.has("imag/return", "behavior")
    assert len(metrics.evaluations) == 3
    curves = analysis.return_curves(metrics)
    np.testing.assert_array_equal(curves["imagined"], [[2, 4], [0.1, 0.3]])
    assert curves["train"].shape == (2, 0)
    np.testing.assert_array_equal(curves["eval"], [[10, 40], [5.0, 20.0]])
    np.testing.assert_array_equal(curves["eval_std"], [1.0, 3.0])
    assert analysis.run_kind(_write_run(tmp_path / "bare")) == "staged"
    assert analysis.metric_series([], "x").shape == (2, 0)
