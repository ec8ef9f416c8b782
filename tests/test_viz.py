"""dreamer_core.viz: frames of the right shape and dtype (the `dreamer dream` video and stage
04's episode videos, with the red strip on imagined rows), the panel helpers, videos, and the
PNG figures (error vs horizon, returns, learning curves through `dreamer plot`)."""

import time

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dreamer_core import analysis, viz
from tests.test_analysis import synthetic, tiny_agent

runner = CliRunner()


def same_frames(frames):
    assert all(f.dtype == np.uint8 and f.ndim == 3 and f.shape[-1] == 3 for f in frames)
    assert len({f.shape for f in frames}) == 1
    return frames[0].shape


# --- panels ------------------------------------------------------------------------------------------


def test_panel_helpers_have_exact_sizes():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    rgb = viz.to_rgb(gray)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8 and (rgb[..., 0] == rgb[..., 2]).all()
    np.testing.assert_array_equal(viz.to_rgb(np.array([[[0.0], [0.5], [2.0]]])).ravel()[::3], [0, 128, 255])
    assert viz.fit(rgb, 6).shape == (6, 8, 3) and viz.upscale(rgb, 2).shape == (6, 8, 3)
    panel = viz.vector_panel([np.zeros(3), np.ones(3)], [viz.REAL, viz.DREAM], np.ones(3), height=20)
    assert panel.shape == (20, 3 * (2 * 6 + 6), 3)
    wide = viz.side_by_side([np.zeros((5, 2, 3), np.uint8), np.zeros((7, 3, 3), np.uint8)])
    assert wide.shape == (7, 2 + 4 + 3, 3) and (wide[5:, :2] == 255).all()


# --- the `dreamer dream` video -------------------------------------------------------------------------


@pytest.mark.parametrize("obs", ["vector", "image", "dict"])
def test_dream_frames_are_equal_sized_rgb_with_a_red_strip_on_imagined_rows(obs):
    wm, episode, batch = synthetic(obs, steps=9)
    C = 4
    result = analysis.dream_episode(wm, batch, C)
    result.title = "a title"
    frames = viz.dream_frames(result)
    assert len(frames) == episode.rows
    shape = same_frames(frames)
    for t, frame in enumerate(frames):
        want = viz.DREAM if t >= C else (255, 255, 255)
        assert (frame[:3] == want).all(), t
    with_actor = analysis.dream_episode(wm, batch, C, agent=tiny_agent(wm))
    actor_frames = viz.dream_frames(with_actor)
    actor_shape = same_frames(actor_frames)
    assert len(actor_frames) == episode.rows and actor_shape[0] >= shape[0]
    if obs != "vector":  # a fourth image panel (the actor's dream) is wider than the traces
        assert actor_shape[1] > shape[1]


def test_a_200_step_episode_renders_quickly(tmp_path):
    wm, episode, batch = synthetic("dict", steps=199, terminated=False)
    start = time.perf_counter()
    result = analysis.dream_episode(wm, batch, 10, agent=tiny_agent(wm))
    frames = viz.dream_frames(result)
    viz.write_video(frames, tmp_path / "long.gif")
    seconds = time.perf_counter() - start
    assert len(frames) == 200 and len({f.shape for f in frames}) == 1
    assert seconds < 30, seconds


# --- stage 04's episode video ---------------------------------------------------------------------------


def views(rows=6, context=2):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (rows, 8, 8, 3), dtype=np.uint8)
    vector = rng.standard_normal((rows, 3)).astype(np.float32)
    return analysis.EpisodeViews(context=context, real={"image": image, "vector": vector},
                                 recon={"image": image / 255.0, "vector": vector + 0.1},
                                 dream={"image": image / 255.0, "vector": vector - 0.1})


def test_episode_frames_show_real_recon_dream_and_the_rendered_env():
    frames = viz.episode_frames(views(), height=128)
    # 3 image panels of 128 x 128, bars of 3 dimensions (3 x 24 px), 4-px gaps between them
    assert len(frames) == 6 and same_frames(frames) == (128, 3 * 128 + 72 + 3 * 4, 3)
    for t, frame in enumerate(frames):
        assert (frame[:3] == viz.DREAM).all() == (t >= 2), t
    rendered = [np.full((20, 30, 3), 90, np.uint8)] * 6
    frames = viz.episode_frames(views(), rendered, height=128)
    assert same_frames(frames) == (128, 3 * 128 + 192 + 72 + 4 * 4, 3)
    assert (frames[0][3:, 3 * 128 + 3 * 4:3 * 128 + 3 * 4 + 192] == 90).all()  # the rendered env, scaled


def test_episode_frames_of_a_played_episode_cover_every_row(tmp_path):
    wm, episode, _ = synthetic("image")
    frames = viz.episode_frames(analysis.episode_views(wm, episode, 3))
    assert len(frames) == episode.rows and same_frames(frames) == (128, 3 * 128 + 2 * 4, 3)
    path = viz.write_video(frames, tmp_path / "episode.gif", fps=10)
    with Image.open(path) as gif:
        assert gif.n_frames == episode.rows and gif.size == (3 * 128 + 2 * 4, 128)


# --- figures ---------------------------------------------------------------------------------------


def png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_plot_error_and_plot_returns_write_pngs(tmp_path):
    wm, _, batch = synthetic("dict")
    result = analysis.dream_episode(wm, batch, 4)
    result.title = "synthetic"
    path = viz.plot_error(result, tmp_path / "new" / "dir" / "error.png")
    assert path == tmp_path / "new" / "dir" / "error.png" and png_size(path) == (900, 320)
    assert [p.name for p in path.parent.iterdir()] == ["error.png"]  # no temporary file left
    viz.plot_returns([1.0, 3.0, 2.0], tmp_path / "returns.png", "three episodes")
    assert png_size(tmp_path / "returns.png") == (600, 300)


def test_plot_curves_writes_one_panel_per_entry(tmp_path):
    x = np.arange(40.0)
    panels = [viz.CurvePanel("a", "steps", [viz.Curve(x, x ** 0.5, 0, "run", raw=x ** 0.5 + 1)]),
              viz.CurvePanel("b", "updates", [viz.Curve(x, -x, 0, "k1"), viz.Curve(x, x, 1, "k2", dashed=True,
                                                                                     band=np.ones(40))], legend=True),
              viz.CurvePanel("c", "steps", [])]
    out = viz.plot_curves(panels, tmp_path / "sub" / "curves.png", title="three")
    assert out == tmp_path / "sub" / "curves.png" and png_size(out) == (1200, 720)
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]
    assert png_size(viz.plot_curves(panels[:1], tmp_path / "one.png")) == (600, 360)
