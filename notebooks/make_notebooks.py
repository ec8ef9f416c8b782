"""Write the three notebooks of this folder from the cell sources below, without outputs.

    python notebooks/make_notebooks.py           # (re)write 01_dataset.ipynb ... 03_*.ipynb
    python notebooks/make_notebooks.py --check   # exit 1 if a stored notebook differs

The notebooks hold only parameters and plotting; everything they compute comes from
``dreamer_core``: ``runs`` loads a run's models and data, ``analysis`` computes the views as
numpy arrays, ``viz`` draws the ``dreamer dream`` video. ``demo.py`` (beside the notebooks,
imported from their working directory) builds the small demo run when none is given. Edit
the cells here, not in Jupyter, so the stored notebooks stay output-free and reviewable.
Cell ids are fixed, so writing twice gives the same bytes.

Imports: nbformat only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# The first code cell of every notebook: paths, overridable by environment variables, and a
# small run built into the temp directory when they do not exist.
PARAMS = '''\
import os
import tempfile
from pathlib import Path

from demo import demo_run  # notebooks/demo.py, beside this notebook

{imports}

RUN = Path(os.environ.get("DREAMER_RUN", "../runs/cartpole"))
DATASET = Path(os.environ.get("DREAMER_DATASET", "../data/cartpole"))
{extra}

# Missing paths: build a small CartPole run (tiny preset) once, in the temp directory.
DEMO = Path(tempfile.gettempdir()) / "dreamer-core-notebooks"
{build}
print(f"run: {{RUN}}\\ndataset: {{DATASET}}")'''



def plot_setup(*imports: str) -> str:
    """The imports of the second cell (plotting, then ``imports`` from dreamer_core), the plot
    style and ``note``: what a panel shows when the run has nothing to draw in it."""
    first = "import matplotlib.pyplot as plt\nimport numpy as np\n"
    extra = "\n" + "\n".join(imports) + "\n" if imports else ""
    return first + extra + '''
plt.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3})


def note(ax, text):
    """A one-line note in a panel that has nothing to draw (never an empty axis)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.35")
'''


DATASET_NB = [
    new_markdown_cell("""\
# 01 · Browse a dataset

Episodes, returns and lengths, frames and action statistics of a dataset written by
`dreamer collect` (or `dreamer data import-minari`).

Set `DATASET` in the first cell (or the environment variable `DREAMER_DATASET`). When it does
not exist, the notebook collects a small random CartPole dataset into the temp directory."""),
    new_code_cell(PARAMS.format(
        imports="from dreamer_core import analysis, runs",
        extra="EPISODE = None  # the episode to look at (None: the longest)",
        build='if not DATASET.exists() and (RUN / "world_model.pt").exists():\n'
              '    DATASET = runs.run_dataset(RUN).path  # the dataset the run was trained on\n'
              'elif not DATASET.exists():\n'
              '    RUN, DATASET = demo_run(DEMO, upto="dataset")')),
    new_code_cell(plot_setup("from dreamer_core.cli import format_summary",
                             "from dreamer_core.data.dataset import Dataset") + '''

ds = Dataset(DATASET)
print(format_summary(ds.summary()))
if EPISODE is None:
    EPISODE = int(np.argmax([ref.rows for ref in ds.refs]))'''),
    new_markdown_cell("## Returns and lengths"),
    new_code_cell('''\
overview = analysis.dataset_overview(ds)
fig, axes = plt.subplots(1, 3, figsize=(13, 3))
axes[0].hist(overview["returns"], bins=30, color="#4a7bd0")
axes[0].set(title="episode return", xlabel="return", ylabel="episodes")
axes[1].hist(overview["lengths"], bins=30, color="#4a7bd0")
axes[1].set(title="episode length", xlabel="env steps")
ended = overview["terminated"]
axes[2].scatter(overview["lengths"][ended], overview["returns"][ended], s=8, label="terminated")
axes[2].scatter(overview["lengths"][~ended], overview["returns"][~ended], s=8, label="truncated")
axes[2].set(title="return vs length", xlabel="env steps", ylabel="return")
axes[2].legend()
fig.tight_layout()

for i in np.argsort(-overview["returns"])[:5]:
    end = "terminated" if overview["terminated"][i] else "truncated"
    print(f"episode {i}: return {overview['returns'][i]:.2f}, {overview['lengths'][i]} steps, {end}")'''),
    new_markdown_cell("""\
## One episode

Row *t* holds the observation *o_t*, the action that led to it and the reward received on
arriving (row 0: zero action and reward); see `dreamer_core/data/schema.py`."""),
    new_code_cell('''\
ep = ds.load_episode(EPISODE)
print(ep)
image_keys = [k for k, v in ep.obs.items() if v.dtype == np.uint8]
vector_keys = [k for k in ep.obs if k not in image_keys]
for key in image_keys:
    steps = np.linspace(0, ep.rows - 1, num=min(8, ep.rows)).round().astype(int)
    fig, axes = plt.subplots(1, len(steps), figsize=(1.8 * len(steps), 2.1))
    for ax, t in zip(np.atleast_1d(axes), steps):
        ax.imshow(ep.obs[key][t].squeeze(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"t={t}", fontsize=9)
        ax.axis("off")
    fig.suptitle(f"'{key}' frames of episode {EPISODE}")

fig, axes = plt.subplots(len(vector_keys) + 2, 1, figsize=(10, 1.7 * (len(vector_keys) + 2)), sharex=True)
for ax, key in zip(axes, vector_keys):
    values = ep.obs[key].reshape(ep.rows, -1)
    ax.plot(values, label=[f"{key}[{d}]" for d in range(values.shape[1])])
    ax.set_ylabel(key)
    ax.legend(fontsize=7, ncol=min(values.shape[1], 8))
axes[-2].step(np.arange(ep.rows), ep.reward, where="mid", color="k")
axes[-2].set_ylabel("reward")
axes[-1].step(np.arange(1, ep.rows), ep.action.reshape(ep.rows, -1)[1:], where="mid")
axes[-1].set(ylabel="action", xlabel="row t")
fig.tight_layout()'''),
    new_markdown_cell("## Actions and rewards over the whole dataset"),
    new_code_cell('''\
import gymnasium as gym

space, actions = ds.action_space, overview["actions"]
fig, axes = plt.subplots(1, 2, figsize=(12, 3))
if isinstance(space, gym.spaces.Discrete):
    counts = np.bincount(actions.astype(int) - int(space.start), minlength=int(space.n))
    axes[0].bar(np.arange(space.n) + int(space.start), counts / counts.sum())
    axes[0].set(title=f"action frequencies ({space})", xlabel="action", ylabel="share",
                xticks=np.arange(space.n) + int(space.start))
elif isinstance(space, gym.spaces.Box):
    flat = actions.reshape(len(actions), -1)
    for d in range(flat.shape[1]):
        axes[0].hist(flat[:, d], bins=40, histtype="step", label=f"dim {d}")
    axes[0].set(title=f"action values ({space})")
    axes[0].legend()
else:  # MultiBinary / MultiDiscrete: the mean of each component
    flat = actions.reshape(len(actions), -1)
    axes[0].bar(np.arange(flat.shape[1]), flat.mean(0))
    axes[0].set(title=f"mean of each action component ({space})", xlabel="component")
axes[1].hist(overview["rewards"], bins=40, color="#d04a3a")
axes[1].set(title="rewards per step", xlabel="reward", ylabel="steps", yscale="log")
fig.tight_layout()'''),
]

DREAMS_NB = [
    new_markdown_cell("""\
# 02 · World-model dreams

Is the world model wrong, or is the policy? Here: what the model reconstructs from real
observations, what it dreams open-loop after a context of C real rows under the recorded
actions, how fast that dream drifts from the truth (against repeating the last real frame),
its reward and continue predictions, which latent classes it uses, which steps surprise it
(KL between posterior and prior), how its latent space is laid out (PCA), and its training
curves.

`dreamer dream --run RUN --out dreams.gif` writes the same views as a video.
Set `RUN` / `DATASET` in the first cell (or `DREAMER_RUN` / `DREAMER_DATASET`); a run of
stage 02 and one of `dreamer train` both work (its dataset is `RUN/replay`). When the run
does not exist, the notebook trains a tiny CartPole world model first (about a minute)."""),
    new_code_cell(PARAMS.format(
        imports="from dreamer_core import analysis, runs, viz",
        extra="EPISODE = None  # None: the longest episode\nCONTEXT = 5  # real rows the dream sees\n"
              "HORIZON = 15  # steps of the error-vs-horizon curve\n"
              "PCA_EPISODES = 8  # episodes in the latent PCA (spread over the dataset)",
        build='if not (RUN / "world_model.pt").exists():\n'
              '    RUN, DATASET = demo_run(DEMO, upto="world_model")\n'
              'elif not DATASET.exists():\n'
              '    DATASET = runs.run_dataset(RUN).path  # the dataset the run was trained on')),
    new_code_cell(plot_setup() + '''

world_model, artifact = runs.load_world_model(RUN)
ds = runs.run_dataset(RUN, DATASET, artifact)
if EPISODE is None:
    EPISODE = int(np.argmax([ref.rows for ref in ds.refs]))
batch = analysis.load_episode_batch(ds, EPISODE)
result = analysis.dream_episode(world_model, batch, CONTEXT)
L = result.length
print(f"episode {EPISODE}: {L} rows; the dream sees rows 0-{CONTEXT - 1} and imagines {L - CONTEXT}; "
      f"{result.latent_usage():.0%} of the latent classes fire")'''),
    new_markdown_cell("""\
## The video frame

Real | reconstruction | dream (images), bars of the current vector values and traces up to
the current row (black real, blue reconstruction, red dream); the red strip on top marks
imagined rows."""),
    new_code_cell('''\
from IPython.display import Image as ShowImage

frames = viz.dream_frames(result)
video = viz.write_video(frames, Path(tempfile.gettempdir()) / f"dream_episode_{EPISODE}.gif")
ShowImage(filename=str(video))'''),
    new_markdown_cell("## Real, reconstructed and dreamed observations"),
    new_code_cell('''\
steps = np.unique(np.linspace(0, L - 1, num=min(8, L)).round().astype(int))
for key in result.image_keys:
    fig, axes = plt.subplots(3, len(steps), figsize=(1.7 * len(steps), 5.4), squeeze=False)
    for row, (name, values) in enumerate([("real", result.real), ("recon", result.recon), ("dream", result.dream)]):
        for col, t in enumerate(steps):
            image = values[key][t]
            axes[row, col].imshow(image.squeeze(), cmap="gray", vmin=0, vmax=255 if image.dtype == np.uint8 else 1)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            axes[0, col].set_title(f"t={t}" + (" (dream)" if t >= CONTEXT else ""), fontsize=8)
        axes[row, 0].set_ylabel(name)
    fig.suptitle(f"'{key}'")

for key in result.vector_keys:
    real, recon, dreamed = (v[key].reshape(L, -1) for v in (result.real, result.recon, result.dream))
    dims = real.shape[1]
    fig, axes = plt.subplots(dims, 1, figsize=(10, 1.6 * dims), sharex=True, squeeze=False)
    for d, ax in enumerate(axes[:, 0]):
        ax.plot(real[:, d], "k", label="real")
        ax.plot(recon[:, d], color="#2870dc", label="reconstruction")
        ax.plot(dreamed[:, d], color="#dc3c28", label="dream")
        ax.axvline(CONTEXT - 0.5, color="#dc3c28", ls=":")
        ax.set_ylabel(f"{key}[{d}]")
    axes[0, 0].legend(ncol=3, fontsize=8)
    axes[-1, 0].set_xlabel("row t")
    fig.tight_layout()'''),
    new_markdown_cell("""\
## Error against the horizon

Mean squared error of the dream at each step after the context (images in [0, 1] units),
for this episode and averaged over up to 50 episodes, next to two references: repeating the
last context row (a model that has learned nothing about dynamics) and the reconstruction (a
floor: it sees the row)."""),
    new_code_cell('''\
average = analysis.error_vs_horizon(world_model, ds, CONTEXT, HORIZON, episodes=list(range(min(50, len(ds.refs)))))
single = result.horizon()
fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
for ax, errors, title in ((axes[0], single, f"episode {EPISODE}"),
                          (axes[1], average, f"mean over {int(average['count'][0])} episodes")):
    h = np.arange(1, len(errors["dream"]) + 1)
    ax.plot(h, errors["dream"], ".-", color="#dc3c28", label="open-loop dream")
    ax.plot(h, errors["baseline"], "--", color="0.5", label="repeat last context row")
    ax.plot(h, errors["recon"], color="#2870dc", label="reconstruction")
    ax.set(title=title, xlabel="horizon (steps after the context)", ylabel="MSE")
    ax.legend(fontsize=8)
fig.tight_layout()'''),
    new_markdown_cell("## Reward and continue: predictions against the truth"),
    new_code_cell('''\
fig, axes = plt.subplots(2, 1, figsize=(10, 4.5), sharex=True)
t = np.arange(L)
axes[0].step(t, result.reward, "k", where="mid", label="real")
axes[0].plot(t, result.reward_recon, color="#2870dc", label="reconstruction")
axes[0].plot(t, result.reward_dream, color="#dc3c28", label="dream")
axes[0].set_ylabel("reward")
axes[0].legend(ncol=3, fontsize=8)
axes[1].step(t, result.cont, "k", where="mid", label="real (1 - terminal)")
axes[1].plot(t, result.cont_recon, color="#2870dc", label="reconstruction")
axes[1].plot(t, result.cont_dream, color="#dc3c28", label="dream")
axes[1].set(ylabel="continue", xlabel="row t", ylim=(-0.05, 1.05))
for ax in axes:
    ax.axvline(CONTEXT - 0.5, color="#dc3c28", ls=":")
fig.tight_layout()'''),
    new_markdown_cell("""\
## Latent usage

Which of the S x K categorical classes the posterior samples at each row (left) and their
probabilities (right). Classes that never fire anywhere are capacity the model does not use."""),
    new_code_cell('''\
if result.latent_fired is None:
    print("Gaussian latents (DreamerV1 variant): no categorical classes to show.")
else:
    S, K = result.latent_fired.shape[1:]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    axes[0].imshow(result.latent_fired.reshape(L, S * K).T, aspect="auto", cmap="Greys", interpolation="nearest")
    axes[0].set(title=f"classes fired ({result.latent_usage():.0%} of {S}x{K} used)", xlabel="row t",
                ylabel="latent x class")
    im = axes[1].imshow(result.latent_probs.reshape(L, S * K).T, aspect="auto", cmap="viridis", interpolation="nearest")
    axes[1].set(title="class probabilities", xlabel="row t")
    fig.colorbar(im, ax=axes[1])
    for ax in axes:
        ax.grid(False)
    fig.tight_layout()'''),
    new_markdown_cell("""\
## Surprise: KL(posterior || prior) per step

How much each observation changed what the model expected from the rows before it and the
action: the KL of the posterior of row *t* (which saw *o_t*) from the prior (which did not),
in nats, the quantity the KL terms of the loss train. Spikes mark what the model cannot
foresee: resets, collisions, rewards; a model that has learned the dynamics is quiet in
between. Frames (or observations) and rewards of the same rows above and below."""),
    new_code_cell('''\
surprise = analysis.kl_surprise(world_model, batch)
if surprise is None:
    print("Gaussian latents (DreamerV1 variant): the world-model interface gives no per-step prior "
          "to compare with (categorical_latents is None), so no surprise strip.")
else:
    kl, t = surprise[0], np.arange(L)
    names = result.image_keys + result.vector_keys + ["KL", "reward"]
    ratios = [1.2] * len(result.image_keys) + [1] * len(result.vector_keys) + [1.2, 0.8]
    fig, axes = plt.subplots(len(names), 1, figsize=(12, 1.4 * len(names) + 0.6), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": ratios})
    axes = axes[:, 0]
    shown = np.unique(np.linspace(0, L - 1, num=min(12, L)).round().astype(int))
    width = 0.9 * L / len(shown)
    for ax, key in zip(axes, result.image_keys):  # a film strip on the time axis
        for s in shown:
            ax.imshow(result.real[key][s].squeeze(), cmap="gray", vmin=0, vmax=255, aspect="auto",
                      extent=(s - width / 2, s + width / 2, 0, 1))
        ax.set(ylim=(0, 1), yticks=[], ylabel=key)
        ax.grid(False)
    for ax, key in zip(axes[len(result.image_keys):], result.vector_keys):
        ax.plot(t, result.real[key].reshape(L, -1), lw=1)
        ax.set_ylabel(key)
    top = np.argsort(-kl)[:3]
    axes[-2].bar(t, kl, width=1.0, color="#7a4ad0")
    axes[-2].plot(top, kl[top], "v", color="#dc3c28", label="most surprising rows")
    axes[-2].set_ylabel("KL (nats)")
    axes[-2].legend(fontsize=8)
    axes[-1].step(t, result.reward, "k", where="mid", label="real")
    axes[-1].plot(t, result.reward_recon, color="#2870dc", label="predicted (posterior)")
    axes[-1].set(ylabel="reward", xlabel="row t", xlim=(-0.5, L - 0.5))
    axes[-1].legend(ncol=2, fontsize=8)
    fig.tight_layout()
    print(f"mean KL {kl.mean():.3f} nats; most surprising rows: "
          + ", ".join(f"t={i} ({kl[i]:.2f})" for i in top))'''),
    new_markdown_cell("""\
## The latent space: PCA of the posterior features

The features every head, the actor and the critic read (`world_model.features` of the
posterior), for every row of a few episodes, on their first two principal components. Each
thin line is one episode. Coloured by the time step, by the real return still to come (the
sum of the rewards after the row) and by the action taken from that state: structure along a
colour means the latent space encodes it."""),
    new_code_cell('''\
import gymnasium as gym

ids = np.unique(np.linspace(0, len(ds.refs) - 1, num=min(PCA_EPISODES, len(ds.refs))).round().astype(int))
latent = analysis.latent_pca(world_model, ds, ids.tolist())
x, y = latent.points[:, 0], latent.points[:, 1]
taken = latent.action.reshape(len(x), -1)[:, 0]  # Discrete: the index; otherwise the first component
has_action = np.isfinite(taken)
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
for ax in axes:
    for e in ids:
        rows = latent.episode == e
        ax.plot(x[rows], y[rows], color="0.85", lw=0.6, zorder=0)
    ax.set(xlabel=f"PC1 ({latent.explained[0]:.0%} of the variance)", ylabel=f"PC2 ({latent.explained[1]:.0%})")
for ax, values, title, cmap in ((axes[0], latent.step, "time step t", "viridis"),
                                (axes[1], latent.return_to_go, "return to go", "plasma")):
    fig.colorbar(ax.scatter(x, y, c=values, cmap=cmap, s=8), ax=ax)
    ax.set_title(f"coloured by {title}")
if isinstance(ds.action_space, gym.spaces.Discrete):
    for a in np.unique(taken[has_action]).astype(int):
        axes[2].scatter(x[taken == a], y[taken == a], s=8, label=f"action {a}")
    axes[2].set_title("coloured by the action taken")
else:
    fig.colorbar(axes[2].scatter(x[has_action], y[has_action], c=taken[has_action], cmap="coolwarm", s=8), ax=axes[2])
    axes[2].set_title("coloured by the action taken (first component)")
axes[2].scatter(x[~has_action], y[~has_action], s=8, color="0.6", marker="x", label="last row (no action)")
axes[2].legend(fontsize=7)
fig.suptitle(f"{len(x)} rows of {len(ids)} episodes, F = {latent.feat_dim} features")
fig.tight_layout()'''),
    new_markdown_cell("""\
## Training curves (`RUN/metrics.jsonl`)

Stage 02 logs against world-model updates and holds out part of the data (the `val/` metrics:
held-out loss and open-loop MSE); `dreamer train` logs against env steps and has no held-out
split, so its third panel shows the KL and the posterior entropy of the training batches."""),
    new_code_cell('''\
metrics = analysis.run_metrics(RUN)
records, unit = metrics.world_model, metrics.world_model_unit
print(f"{metrics.kind} run: {len(records)} records, steps count {unit}")


def series(key):
    return analysis.metric_series(records, key)


fig, axes = plt.subplots(1, 3, figsize=(14, 3.2))
for key, label in (("wm/loss", "train"), ("val/wm/loss", "held out")):
    if metrics.has(key):
        axes[0].plot(*series(key), label=label)
axes[0].set(title="world-model loss", xlabel=unit, yscale="log")
for key in sorted({k for r in records for k in r if k.startswith("wm/loss/")}):
    axes[1].plot(*series(key), label=key.removeprefix("wm/loss/"))
axes[1].set(title="loss terms (train)", xlabel=unit, yscale="log")
if metrics.has("val/wm/openloop_mse"):
    for key, label in (("val/wm/openloop_mse", "open-loop dream"), ("val/wm/openloop_baseline_mse", "repeat last")):
        axes[2].plot(*series(key), ".-", label=label)
    axes[2].set(title="held-out open-loop MSE", xlabel=unit)
else:  # dreamer train: no held-out split
    for key, label in (("wm/kl", "KL (nats)"), ("wm/post_entropy", "posterior entropy (nats)")):
        if metrics.has(key):
            axes[2].plot(*series(key), label=label)
    axes[2].set(title="latents (train batches; no held-out split)", xlabel=unit)
for ax, missing in zip(axes, ("no world-model loss logged yet", "no loss terms logged yet", "nothing logged yet")):
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        note(ax, missing)
fig.tight_layout()'''),
]

BEHAVIOR_NB = [
    new_markdown_cell("""\
# 03 · Behavior in imagination

The actor-critic learns only inside the world model. Here: rollouts of the actor in
imagination from real start states, with the predicted rewards, continue probabilities,
critic values and the lambda-returns the actor is trained on; its action distributions; one
real episode played by the same agent for comparison (the critic's values along it against
the real discounted return, and the actor's own dream against what happened); the critic
against real returns over many episodes; imagined against real return over training; and
the behavior's training curves.

Set `RUN` / `DATASET` in the first cell (or `DREAMER_RUN` / `DREAMER_DATASET`); the run needs
`behavior.pt`: stage 03 or `dreamer train` wrote it (an online run's dataset is `RUN/replay`).
Without one the notebook trains a tiny CartPole agent first (a few minutes); its 200 behavior
updates show the machinery, not a good policy: train longer for that."""),
    new_code_cell(PARAMS.format(
        imports="from dreamer_core import analysis, runs, viz",
        extra="EPISODE = None  # None: the longest episode\nCONTEXT = 5  # real rows before imagining\n"
              "HORIZON = 15  # imagined steps (stage 03 trains with 15)\nSAMPLES = 16  # rollouts from the same start\n"
              "VALUE_EPISODES = 8  # episodes the agent plays for the value-vs-return check",
        build='if not (RUN / "behavior.pt").exists():\n'
              '    RUN, DATASET = demo_run(DEMO, upto="behavior")\n'
              'elif not DATASET.exists():\n'
              '    DATASET = runs.run_dataset(RUN).path  # the dataset the run was trained on')),
    new_code_cell(plot_setup() + '''

world_model, agent, artifact = runs.load_agent(RUN)
ds = runs.run_dataset(RUN, DATASET)
if EPISODE is None:
    EPISODE = int(np.argmax([ref.rows for ref in ds.refs]))
start = analysis.load_episode_batch(ds, EPISODE, length=CONTEXT)
imagined = analysis.imagine_with_actor(world_model, agent, start, CONTEXT, HORIZON, samples=SAMPLES)
print(f"{SAMPLES} rollouts of {HORIZON} steps from row {CONTEXT - 1} of episode {EPISODE}; "
      f"gamma {agent.cfg.gamma:.4g}, lambda {agent.cfg.lam}")
print(f"lambda-return at the start: {imagined.lambda_return[:, 0].mean():.3f} "
      f"+- {imagined.lambda_return[:, 0].std():.3f}; critic value {imagined.value[:, 0].mean():.3f}")'''),
    new_markdown_cell("""\
## Rewards, continues, values and lambda-returns of the imagined rollouts

Thin lines are single rollouts, the thick line their mean. Entry h of reward, continue and
return belongs to the step out of imagined state h."""),
    new_code_cell('''\
fig, axes = plt.subplots(2, 2, figsize=(12, 6), sharex=True)
panels = [(axes[0, 0], imagined.reward, "predicted reward"), (axes[0, 1], imagined.cont, "continue probability"),
          (axes[1, 0], imagined.value, "critic value"), (axes[1, 1], imagined.lambda_return, "lambda-return")]
for ax, values, title in panels:
    h = np.arange(values.shape[1])
    ax.plot(h, values.T, color="#4a7bd0", alpha=0.25, lw=0.8)
    ax.plot(h, values.mean(0), color="#1a3b80", lw=2)
    ax.set_title(title)
axes[1, 1].plot(np.arange(HORIZON), imagined.value[:, :-1].mean(0), "--", color="#d04a3a", label="value (mean)")
axes[1, 1].legend(fontsize=8)
for ax in axes[1]:
    ax.set_xlabel("imagined step h")
fig.tight_layout()'''),
    new_markdown_cell("## Action distributions along the rollouts"),
    new_code_cell('''\
fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
if imagined.policy_probs is not None:
    probs = imagined.policy_probs.mean(0)  # [H+1, A]
    im = axes[0].imshow(probs.T, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set(title="mean action probabilities", xlabel="imagined step h", ylabel="action",
                yticks=np.arange(probs.shape[1]))
    axes[0].grid(False)
    fig.colorbar(im, ax=axes[0])
    chosen = imagined.action.reshape(-1, imagined.action.shape[-1]).mean(0)
    axes[1].bar(np.arange(len(chosen)), chosen)
    axes[1].set(title="share of each sampled action", xlabel="action", xticks=np.arange(len(chosen)))
else:  # Box actions: the sampled values
    flat = imagined.env_action.reshape(-1, int(np.prod(imagined.env_action.shape[2:])))
    for d in range(flat.shape[1]):
        axes[0].hist(flat[:, d], bins=30, histtype="step", label=f"dim {d}")
    axes[0].set(title="sampled action values")
    axes[0].legend(fontsize=8)
    axes[1].plot(imagined.env_action.reshape(*imagined.env_action.shape[:2], -1).mean(0))
    axes[1].set(title="mean action per imagined step", xlabel="imagined step h")
axes[1].text(0.02, 0.9, f"entropy {imagined.entropy.mean():.3f}", transform=axes[1].transAxes)
fig.tight_layout()'''),
    new_markdown_cell("## What the actor imagines (first rollouts, decoded)"),
    new_code_cell('''\
steps = np.unique(np.linspace(0, HORIZON, num=min(8, HORIZON + 1)).round().astype(int))
for key, values in imagined.obs.items():
    if values.ndim >= 5:  # images [N, H+1, Hi, Wi, C]
        rows = min(3, SAMPLES)
        fig, axes = plt.subplots(rows, len(steps), figsize=(1.7 * len(steps), 1.8 * rows), squeeze=False)
        for n in range(rows):
            for col, h in enumerate(steps):
                axes[n, col].imshow(values[n, h].squeeze(), cmap="gray", vmin=0, vmax=1)
                axes[n, col].axis("off")
                axes[0, col].set_title(f"h={h}", fontsize=8)
        fig.suptitle(f"'{key}' in {rows} imagined rollouts")
    else:
        flat = values.reshape(*values.shape[:2], -1)
        fig, axes = plt.subplots(1, flat.shape[2], figsize=(3 * flat.shape[2], 2.5), squeeze=False)
        for d, ax in enumerate(axes[0]):
            ax.plot(flat[:, :, d].T, color="#4a7bd0", alpha=0.3)
            ax.set(title=f"{key}[{d}]", xlabel="h")
        fig.tight_layout()'''),
    new_markdown_cell("""\
## One real episode, played by the same agent

`analysis.play_episode` plays the agent greedily in the env the data came from (as
`dreamer evaluate` does). Along it: the critic's value of each posterior state against the
real discounted return that followed, and the actor's own dream (from row C-1, under its own
actions) against what really happened."""),
    new_code_cell('''\
episode = analysis.play_episode(world_model, agent, artifact.env_config, seed=0)
real = analysis.dream_episode(world_model, analysis.episode_to_batch(episode), min(CONTEXT, episode.rows - 1), agent=agent)
print(f"real episode: return {episode.ret:.2f} in {episode.steps} steps "
      f"({'terminated' if episode.terminated else 'truncated'})")
fig, axes = plt.subplots(1, 2, figsize=(13, 3.2))
t = np.arange(real.length)
axes[0].plot(t, real.return_to_go, "k", label="real discounted return after t")
axes[0].plot(t, real.value, color="#2870dc", label="critic value of the posterior")
axes[0].set(xlabel="row t", title="values along the real episode")
axes[0].legend(fontsize=8)
axes[1].step(t, real.reward, "k", where="mid", label="real reward")
axes[1].plot(t, real.reward_recon, color="#2870dc", label="predicted (posterior)")
axes[1].plot(t, real.reward_actor, color="#28963c", label="actor's dream")
axes[1].axvline(real.context - 0.5, color="#dc3c28", ls=":")
axes[1].set(xlabel="row t", title="rewards")
axes[1].legend(fontsize=8)
fig.tight_layout()'''),
    new_code_cell('''\
from IPython.display import Image as ShowImage

video = viz.write_video(viz.dream_frames(real), Path(tempfile.gettempdir()) / "agent_episode.gif")
ShowImage(filename=str(video))'''),
    new_markdown_cell("""\
## The critic against real returns, over many episodes

The agent plays `VALUE_EPISODES` episodes with sampled actions (the policy its critic
evaluates); at every row, the critic's value of the posterior state against the real
discounted return that followed (the agent's gamma). Points on the diagonal are right. Where
an episode was cut by a time limit, the return after the limit is missing: those rows (grey)
lie below the diagonal for a good critic, and only the others (blue) count in r."""),
    new_code_cell('''\
played = [analysis.play_episode(world_model, agent, artifact.env_config, seed=100 + i, mode="sample")
          for i in range(VALUE_EPISODES)]
check = analysis.value_vs_return(world_model, agent, played)
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for mask, colour, label in ((check.exact, "#2870dc", "return complete"),
                            (~check.exact, "0.6", "cut at a time limit")):
    if mask.any():
        axes[0].scatter(check.ret[mask], check.value[mask], s=8, color=colour, alpha=0.6, label=label)
        axes[1].scatter(check.step[mask], (check.value - check.ret)[mask], s=8, color=colour, alpha=0.6, label=label)
low, high = min(check.ret.min(), check.value.min()), max(check.ret.max(), check.value.max())
axes[0].plot([low, high], [low, high], "k--", lw=1, label="value = return")
axes[0].set(title=f"r = {check.correlation:.2f} (complete returns), {check.correlation_all:.2f} (all)",
            xlabel=f"real discounted return after t (gamma {check.gamma:.4g})", ylabel="critic value of the posterior")
axes[1].axhline(0, color="k", lw=1)
axes[1].set(title="value - return along the episodes", xlabel="row t", ylabel="error")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
returns = [ep.ret for ep in played]
print(f"{len(played)} episodes: return {np.mean(returns):.2f} +- {np.std(returns):.2f}, "
      f"{sum(ep.rows for ep in played)} rows; {check.exact.mean():.0%} with complete returns")'''),
    new_markdown_cell("""\
## Imagined against real return over training

`imag/return` is the mean lambda-return of the actor's imagined rollouts: a *discounted* return
from replayed states, often mid-episode, so it sits below the episode return even for a
perfect model. Its real counterpart is the star: the real discounted return after each state
of the episodes played above, averaged. An imagined return well above it means the actor
exploits errors of the model. Online runs log the training episodes (sampled actions) and
the evaluations against env steps; staged runs draw the reports of `dreamer evaluate` (if
any) at the behavior update they evaluated, and the dataset's episodes for reference."""),
    new_code_cell('''\
metrics = analysis.run_metrics(RUN)
curves = analysis.return_curves(metrics)
fig, ax = plt.subplots(figsize=(11, 3.8))
if curves["imagined"].size:
    ax.plot(*curves["imagined"], ".-", color="#7a4ad0", label="imagined (imag/return)")
if curves["train"].size:
    steps, values = curves["train"]
    ax.plot(steps, values, ".", color="#28963c", alpha=0.3, ms=4)
    smooth = np.convolve(values, np.ones(min(10, len(values))) / min(10, len(values)), mode="valid")
    ax.plot(steps[len(steps) - len(smooth):], smooth, color="#28963c", label="training episodes (mean of 10)")
if curves["eval"].size:
    ax.errorbar(*curves["eval"], yerr=np.nan_to_num(curves["eval_std"]), fmt="o-", color="#dc3c28", capsize=3,
                label="evaluation return")
if metrics.kind == "staged":
    ax.axhline(np.mean([ref.ret for ref in ds.refs]), color="0.5", ls=":", label="dataset episodes (mean return)")
ends = [c[0, -1] for c in (curves["imagined"], curves["train"], curves["eval"]) if c.size]
end = max(ends) if ends else artifact.update
ax.plot([end], [np.mean(returns)], "D", color="#1a3b80", label="played above: episode return")
ax.plot([end], [check.ret.mean()], "*", ms=12, color="#7a4ad0", label="played above: discounted return after a state")
ax.set(title=f"imagined vs real return ({metrics.kind} run)", xlabel=metrics.behavior_unit, ylabel="return")
ax.legend(fontsize=8, loc="best")
fig.tight_layout()'''),
    new_markdown_cell("## Behavior training curves (online: `RUN/metrics.jsonl`; staged: `RUN/behavior_metrics.jsonl`)"),
    new_code_cell('''\
keys = ["imag/return", "critic/value", "actor/entropy", "actor/loss", "critic/loss"]
fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8))
for ax, key in zip(axes, keys):
    points = analysis.metric_series(metrics.behavior, key)
    if points.size:
        ax.plot(*points, ".-")
    else:
        note(ax, f"{key} not logged")
    ax.set(title=key, xlabel=metrics.behavior_unit)
fig.tight_layout()'''),
]

NOTEBOOKS = {
    "01_dataset.ipynb": DATASET_NB,
    "02_world_model_dreams.ipynb": DREAMS_NB,
    "03_behavior_in_imagination.ipynb": BEHAVIOR_NB,
}


def build(name: str, cells: list) -> nbformat.NotebookNode:
    """A notebook without outputs, with fixed cell ids (so the file is reproducible)."""
    stem = name.split("_")[0]
    for i, cell in enumerate(cells):
        cell["id"] = f"nb{stem}-{i:02d}"
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(build(name, cells)) + "\n"
        path = HERE / name
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)}; run python notebooks/make_notebooks.py")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
