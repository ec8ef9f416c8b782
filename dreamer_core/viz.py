"""Drawing: video frames and PNG figures, from numpy arrays (analysis.py computes them).

- Frames: real | reconstruction | dream side by side for image and vector observations
  (``to_rgb``, ``fit``, ``vector_panel``, ``side_by_side``), the ``dreamer dream`` video
  (``dream_frames``: panels, bars and traces of a :class:`~dreamer_core.analysis.DreamResult`)
  and stage 04's episode videos (``episode_frames``). Numpy in, uint8 ``[H, W, 3]`` frames
  out, drawn with Pillow (text) and numpy, without matplotlib, so a 500-step episode renders
  in well under a second. :func:`write_video` writes frames to GIF (Pillow) or MP4
  (imageio-ffmpeg) atomically.
- Figures (matplotlib, Agg): ``plot_error`` (dream error vs horizon), ``plot_returns``
  (stage 04's returns), ``plot_curves`` (the learning curves of ``dreamer plot``, with bands:
  a standard deviation, or a confidence interval of a mean over seeds) and the figures of
  ``dreamer sweep`` (``plot_sweep_history``, ``plot_importances``).

Nothing here computes with a model: the inputs are arrays, :class:`Curve`/:class:`CurvePanel`
and analysis.py's result types.

Imports: numpy, files; Pillow, imageio and matplotlib lazily; analysis only for type
annotations. It must not import stages or cli.
"""

from __future__ import annotations

import functools
import io
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dreamer_core.files import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    from dreamer_core.analysis import DreamResult, EpisodeViews

# Panel colours (RGB): real data, posterior reconstruction, open-loop dream, the actor's dream.
REAL, RECON, DREAM = (30, 30, 30), (40, 110, 220), (220, 60, 40)
ACTOR = (40, 150, 60)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``[H, W, C]`` uint8 (C = 1 or 3) or float in [0, 1] -> uint8 ``[H, W, 3]``."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, -1) if image.shape[-1] == 1 else image[..., :3]


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return image.repeat(factor, 0).repeat(factor, 1) if factor > 1 else image


def fit(image: np.ndarray, height: int) -> np.ndarray:
    """Nearest-neighbour resize to ``height`` rows, keeping the aspect ratio."""
    h, w = image.shape[:2]
    width = max(1, round(w * height / h))
    rows = (np.arange(height) * h / height).astype(int)
    cols = (np.arange(width) * w / width).astype(int)
    return image[rows][:, cols]


def vector_panel(values: list[np.ndarray], colors: list[tuple[int, int, int]], scale: np.ndarray,
                 height: int = 128, bar: int = 6) -> np.ndarray:
    """Bars for each vector dimension: one bar per series (real, reconstruction, dream) side by
    side, growing up or down from a centre line, ``scale`` per dimension mapping to half height.

    Shapes:
        values: each ``[V]``      scale: ``[V]``      returns: ``[height, V * (len(values) * bar + bar), 3]``
    """
    V = len(values[0])
    group = len(values) * bar + bar
    panel = np.full((height, V * group, 3), 255, np.uint8)
    mid = height // 2
    panel[mid, :] = (180, 180, 180)
    for d in range(V):
        for j, (series, color) in enumerate(zip(values, colors)):
            v = float(np.clip(series[d] / max(float(scale[d]), 1e-6), -1, 1))
            size = int(round(abs(v) * (mid - 2)))
            x0 = d * group + bar // 2 + j * bar
            top, bottom = (mid - size, mid) if v >= 0 else (mid, mid + size)
            panel[top:bottom + 1, x0:x0 + bar - 1] = color
    return panel


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Concatenate panels horizontally (padded to the tallest, white gaps)."""
    height = max(p.shape[0] for p in panels)
    out = []
    for i, p in enumerate(panels):
        pad = np.full((height - p.shape[0], p.shape[1], 3), 255, np.uint8)
        out.append(np.concatenate([p, pad], 0))
        if i < len(panels) - 1:
            out.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(out, 1)


def write_video(frames: list[np.ndarray], path: Path | str, fps: int = 15) -> Path:
    """Write frames as GIF (by suffix ``.gif``, Pillow) or MP4 (``.mp4``, imageio-ffmpeg).

    The file is written beside ``path`` under a temporary name and renamed into place, so an
    existing video is replaced whole or not at all.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".gif":
            _write_gif(frames, Path(tmp), fps)
        else:
            _write_mp4(frames, Path(tmp), fps)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def _write_gif(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """Pillow GIF with a fast octree palette per frame: about 8x faster than imageio's default
    quantizer on these frames (25 s -> 3 s for 200 frames of 540x600)."""
    from PIL import Image

    images = [Image.fromarray(f).quantize(method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
              for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=round(1000 / fps), loop=0)


def _write_mp4(frames: list[np.ndarray], path: Path, fps: int) -> None:
    import imageio.v2 as imageio

    # libx264 needs even sizes: pad by one white row/column when odd.
    h, w = frames[0].shape[:2]
    frames = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=255) for f in frames]
    imageio.mimsave(path, frames, fps=fps, macro_block_size=1)


# --- the `dreamer dream` video --------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _font(size: int = 11):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _text_strip(width: int, items: list[tuple[int, str, tuple[int, int, int]]], height: int = 14) -> np.ndarray:
    """A white ``[height, width, 3]`` strip with coloured labels ``(x, text, colour)``."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for x, text, color in items:
        draw.text((x, 1), text, fill=color, font=_font(height - 3))
    return np.asarray(image).copy()


@functools.lru_cache(maxsize=64)
def _label(width: int, text: str, color: tuple[int, int, int]) -> np.ndarray:
    """The same panel labels repeat on every frame: render each once."""
    return _text_strip(width, [(2, text, color)])


def _polyline(canvas: np.ndarray, xs: np.ndarray, ys: np.ndarray, color: tuple[int, int, int]) -> None:
    """Draw connected points into ``canvas`` in place (integer pixel coordinates)."""
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        canvas[np.linspace(y0, y1, n).round().astype(int), np.linspace(x0, x1, n).round().astype(int)] = color
    if len(xs) == 1:
        canvas[ys[0], xs[0]] = color


@dataclass
class _Traces:
    """Line plots of every vector dimension (plus reward and continue) over the whole window:
    ``full`` has all lines drawn, ``base`` only axes and labels; frame t reveals ``full`` up to
    step t (drawing once and revealing keeps a long episode fast to render)."""

    base: np.ndarray
    full: np.ndarray
    xs: np.ndarray  # [L] pixel column of each row
    rows: list[tuple[int, int]] = field(default_factory=list)  # (top, bottom) of each plot


def _trace_series(result: DreamResult, max_dims: int) -> list[tuple[str, list[np.ndarray], tuple[float, float] | None]]:
    """(label, [real, recon, dream, (actor)] each ``[L]``, fixed y-range or None) per plot."""
    out = []
    for key in result.vector_keys:
        flat = [np.asarray(s[key], np.float32).reshape(result.length, -1) for s in _series(result)]
        for d in range(flat[0].shape[1]):
            out.append((f"{key}[{d}]", [f[:, d] for f in flat], None))
    out = out[:max_dims]
    rewards = [result.reward, result.reward_recon, result.reward_dream]
    if result.reward_actor is not None:
        rewards.append(result.reward_actor)
    out.append(("reward", rewards, None))
    out.append(("continue", [result.cont, result.cont_recon, result.cont_dream], (0.0, 1.0)))
    dream_std = getattr(result, "dream_std", None)  # World Models: the std of M's mixture behind each row
    if dream_std is not None:
        std = np.asarray(dream_std, np.float64)
        top = float(np.nanmax(std)) * 1.1 if np.isfinite(std).any() and np.nanmax(std) > 0 else 1.0
        out.append(("M std", [None, None, std], (0.0, top)))
    return out


def _series(result: DreamResult) -> list[dict[str, np.ndarray]]:
    series = [result.real, result.recon, result.dream]
    return series + [result.actor_dream] if result.actor_dream is not None else series


def _make_traces(result: DreamResult, width: int, plot_height: int = 42, margin: int = 64,
                 max_dims: int = 16) -> _Traces:
    L, C = result.length, result.context
    plots = _trace_series(result, max_dims)
    colors = [REAL, RECON, DREAM, ACTOR]
    gap = 4
    base = np.full((len(plots) * (plot_height + gap), width, 3), 255, np.uint8)
    xs = margin + np.round(np.arange(L) * (width - margin - 3) / max(L - 1, 1)).astype(int)
    x_context = (xs[C - 1] + xs[C]) // 2 if C < L else xs[-1]
    traces = _Traces(base, base.copy(), xs)
    for i, (label, series, fixed) in enumerate(plots):
        top = i * (plot_height + gap)
        bottom = top + plot_height - 1
        traces.rows.append((top, bottom))
        lo, hi = fixed or _value_range([v for v in series[:2] if v is not None])
        for canvas in (traces.base, traces.full):
            canvas[top:bottom + 1, margin - 1] = (170, 170, 170)
            canvas[bottom, margin - 1:] = (170, 170, 170)
            canvas[top:bottom, x_context] = (245, 190, 180)  # the dream starts right of this line
            # the name in the middle of the margin, the y-range at its ends
            for y, text, color, size in ((top, f"{hi:.3g}", (150, 150, 150), 11),
                                         (top + plot_height // 2 - 7, label, (60, 60, 60), 14),
                                         (bottom - 10, f"{lo:.3g}", (150, 150, 150), 11)):
                canvas[y:y + size, 2:margin - 4] = _text_strip(margin - 6, [(0, text, color)], size)
        for values, color in zip(series, colors):
            if values is None:  # a series this plot does not have (M std: the dream's only)
                continue
            v = np.clip((np.asarray(values, np.float64) - lo) / (hi - lo), 0, 1)
            ys = (bottom - 1 - np.round(np.nan_to_num(v, nan=0.5) * (bottom - top - 2))).astype(int)
            _polyline(traces.full, xs, ys, color)
    return traces


def _value_range(series: list[np.ndarray]) -> tuple[float, float]:
    """y-range from the real and reconstructed values (a wild dream is clipped, not rescaled)."""
    values = np.concatenate([np.asarray(s, np.float64).ravel() for s in series])
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    pad = max(0.1 * (hi - lo), 0.05 * max(abs(lo), abs(hi)), 1e-3)
    return lo - pad, hi + pad


def dream_frames(result: DreamResult, height: int = 128, trace_width: int = 440) -> list[np.ndarray]:
    """Video frames: a header; real | reconstruction | dream (| actor's dream) images per image
    key; below them, bars of the current vector values beside line plots of every vector
    dimension, reward and continue up to the current step (black real, blue reconstruction,
    red dream, green actor's dream). A red strip on top marks the imagined rows.

    Shapes:
        returns: ``L`` frames, uint8 ``[Hf, Wf, 3]`` (all the same size).
    """
    L, C = result.length, result.context
    series = _series(result)
    names = ["real", "recon", "dream", "actor dream"][:len(series)]
    colors = [REAL, RECON, DREAM, ACTOR]
    scales = {k: np.maximum(np.abs(result.real[k].reshape(L, -1)).max(0), 1e-3) * 1.25
              for k in result.vector_keys}
    traces = _make_traces(result, trace_width)
    legend = _text_strip(trace_width, [(64 + 52 * i, name, color) for i, (name, color) in enumerate(zip(names, colors))])
    frames = []
    for t in range(L):
        panels = []
        for key in result.image_keys:
            panels += [_labelled(_border(fit(to_rgb(s[key][t]), height)), f"{name} {key}", color)
                       for s, name, color in zip(series, names, colors)]
        bars = None
        if result.vector_keys:
            values = [np.concatenate([np.asarray(s[k][t], np.float32).ravel() for k in result.vector_keys])
                      for s in series]
            scale = np.concatenate([scales[k] for k in result.vector_keys])
            bars = _labelled(vector_panel(values, colors[:len(series)], scale, height), "values", REAL)
        plot = traces.base.copy()
        x = traces.xs[t]
        plot[:, :x + 1] = traces.full[:, :x + 1]
        for top, bottom in traces.rows:
            column = plot[top:bottom, x]
            column[(column == 255).all(-1)] = (200, 200, 200)  # the current step
        plot = _stack([legend, plot])
        bottom_row = side_by_side([bars, plot]) if bars is not None else plot
        body = _stack([side_by_side(panels), bottom_row]) if panels else bottom_row
        imagined = t >= C
        header = _text_strip(body.shape[1], [(4, f"{result.title}  row {t}/{L - 1}  context {C}"
                                                  + ("  (imagined)" if imagined else "  (observed)"),
                                              DREAM if imagined else REAL)], 16)
        strip = np.full((3, body.shape[1], 3), DREAM if imagined else (255, 255, 255), np.uint8)
        frames.append(_stack([strip, header, body]))
    return frames


def _border(image: np.ndarray) -> np.ndarray:
    """A 1-pixel grey frame, so panels with white backgrounds stay apart."""
    return np.pad(image, ((1, 1), (1, 1), (0, 0)), constant_values=160)


def _labelled(panel: np.ndarray, label: str, color: tuple[int, int, int]) -> np.ndarray:
    return _stack([_label(panel.shape[1], label, color), panel])


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Stack images vertically, left-aligned, padded white to the widest."""
    width = max(p.shape[1] for p in parts)
    padded = [np.concatenate([p, np.full((p.shape[0], width - p.shape[1], 3), 255, np.uint8)], 1) for p in parts]
    return np.concatenate(padded, 0)


# --- stage 04's episode video --------------------------------------------------------------------


def episode_frames(views: EpisodeViews, rendered: list[np.ndarray] | None = None,
                   height: int = 128) -> list[np.ndarray]:
    """Video frames of a played episode: real | reconstruction | dream (images), the rendered
    env (``rendered``: one frame per row, if any) and bars of each vector observation's real |
    reconstructed | dreamed values. A red strip on top marks the rows the dream did not see.

    Shapes:
        returns: ``L`` frames, uint8 ``[Hf, Wf, 3]``.
    """
    real, recon, dream = views.real, views.recon, views.dream
    image_keys, vector_keys = views.image_keys, views.vector_keys
    scales = {k: np.maximum(np.abs(real[k]).max(0), 1e-3) * 1.25 for k in vector_keys}
    frames = []
    for t in range(views.length):
        panels = []
        for key in image_keys:
            panels += [fit(to_rgb(real[key][t]), height), fit(to_rgb(recon[key][t]), height),
                       fit(to_rgb(dream[key][t]), height)]
        if rendered:
            panels.append(fit(to_rgb(rendered[t]), height))
        for key in vector_keys:
            panels.append(vector_panel([real[key][t], recon[key][t], dream[key][t]],
                                       [REAL, RECON, DREAM], scales[key], height))
        frame = side_by_side(panels)
        if t >= views.context:  # a red strip on top marks the frames the dream did not see
            frame[:3] = DREAM
        frames.append(frame)
    return frames


# --- figures (matplotlib) -------------------------------------------------------------------------


def plot_error(result: DreamResult, path: Path | str) -> Path:
    """PNG: observation MSE and reward error against the horizon (dream, repeat-last baseline,
    reconstruction), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = result.horizon()
    h = np.arange(1, len(errors["dream"]) + 1)
    fig, (ax_obs, ax_rew) = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_obs.plot(h, errors["dream"], color=np.array(DREAM) / 255, marker=".", label="open-loop dream")
    ax_obs.plot(h, errors["baseline"], color="0.5", ls="--", label="repeat last context row")
    ax_obs.plot(h, errors["recon"], color=np.array(RECON) / 255, label="reconstruction (sees the row)")
    ax_obs.set_title("observation MSE")
    ax_rew.plot(h, errors["reward_dream"], color=np.array(DREAM) / 255, marker=".", label="dream")
    ax_rew.plot(h, errors["reward_recon"], color=np.array(RECON) / 255, label="reconstruction")
    ax_rew.set_title("|predicted - real reward|")
    for ax in (ax_obs, ax_rew):
        ax.set_xlabel(f"horizon (steps after the {result.context} context rows)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(result.title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_returns(returns: list[float], path: Path, title: str) -> None:
    """PNG: one bar per episode return and a line at their mean (stage 04's ``returns.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(returns)), returns, color="#4a7bd0")
    mean = float(np.mean(returns))
    if math.isfinite(mean):
        ax.axhline(mean, color="#d04a3a", label=f"mean {mean:.1f}")
        ax.legend()
    ax.set_xlabel("episode")
    ax.set_ylabel("return")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class Curve:
    """One line of a :class:`CurvePanel`.

    Attributes:
        x, y: the points as drawn (``[P]``); ``color``: index into matplotlib's colour cycle
            (one per run); ``dashed``: a second key of the same run.
        raw: ``[P]`` values drawn as faint dots behind the line (when ``y`` is smoothed).
        band: ``[P]`` half-width of a shaded band around ``y`` (e.g. a standard deviation).
        lower, upper: ``[P]`` edges of a shaded band that need not be symmetric (e.g. a
            confidence interval of a mean over seeds); drawn instead of ``band`` when given.
    """

    x: np.ndarray
    y: np.ndarray
    color: int
    label: str
    dashed: bool = False
    raw: np.ndarray | None = None
    band: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None


@dataclass
class CurvePanel:
    """One panel of :func:`plot_curves`: its title, x label, lines and whether it has a legend."""

    title: str
    xlabel: str
    curves: list[Curve] = field(default_factory=list)
    legend: bool = False


def plot_curves(panels: list[CurvePanel], out: Path | str, title: str | None = None) -> Path:
    """PNG of learning curves, two panels per row (``dreamer plot``), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(2, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes.flat, panels):
        for curve in panel.curves:
            color = colors[curve.color % len(colors)]
            if curve.raw is not None:
                ax.plot(curve.x, curve.raw, ".", color=color, alpha=0.15, markersize=2)
            ax.plot(curve.x, curve.y, "--" if curve.dashed else "-", color=color, label=curve.label,
                    marker="o" if len(curve.x) < 30 else None, markersize=3)
            if curve.lower is not None and curve.upper is not None:
                ax.fill_between(curve.x, curve.lower, curve.upper, color=color, alpha=0.2, linewidth=0)
            elif curve.band is not None:
                ax.fill_between(curve.x, curve.y - curve.band, curve.y + curve.band, color=color, alpha=0.12)
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        ax.grid(alpha=0.3)
        if panel.legend:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save_figure(fig, out)


def _save_figure(fig, out: Path | str) -> Path:
    """Write a matplotlib figure (format by suffix) under a temporary name of its own (several
    processes may write the same figure), rename it into place and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".tmp{out.suffix}", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o644)
        fig.savefig(tmp, dpi=100)
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def plot_sweep_history(numbers: list[int], values: list[float], pruned: list[bool], maximize: bool,
                       out: Path | str, title: str) -> Path:
    """PNG of a sweep's trials in order: each complete trial's value (dots), each pruned trial's
    last reported value (crosses) and the best complete value so far (a step line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    numbers, values, pruned = np.asarray(numbers), np.asarray(values, float), np.asarray(pruned, bool)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    done = ~pruned
    ax.plot(numbers[done], values[done], "o", color="#4a7bd0", label="complete")
    if pruned.any():
        ax.plot(numbers[pruned], values[pruned], "x", color="0.55", label="pruned (last reported value)")
    if done.any():
        best = (np.maximum if maximize else np.minimum).accumulate(values[done])
        ax.step(numbers[done], best, where="post", color="#d04a3a", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("value")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save_figure(fig, out)


def plot_importances(names: list[str], importances: list[float], out: Path | str, title: str) -> Path:
    """PNG: one horizontal bar per parameter, its importance (the largest on top)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(importances)
    fig, ax = plt.subplots(figsize=(6.5, 1.4 + 0.35 * len(names)))
    ax.barh([names[i] for i in order], [importances[i] for i in order], color="#4a7bd0")
    ax.set_xlabel("importance")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _save_figure(fig, out)
