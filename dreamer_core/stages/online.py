"""Online Dreamer: the stages alternating in one process (`dreamer train`).

    dreamer train --env CartPole-v1 --out runs/cartpole-online --steps 20000

Stage 01 (acting in K envs), 02 (a world-model update) and 03 (a behavior update) take turns:
random actions until ``prefill`` env steps, then the current agent acts, and after every env
step the loop runs as many updates as the train ratio owes. The train ratio is DreamerV3's:
replayed steps (``batch_size * seq_len`` per update) per env step. Each behavior update starts
its imagination from the posterior states of the world-model update on the same batch.

Every env step enters the in-memory replay as it happens (uniform windows over each env's
stream of rows, the episode in progress included, as in DreamerV3); finished episodes go to
the dataset ``RUN/replay`` as crash-safe shards, so stages 02-04, the dream views and the
notebooks can use everything an online run produced. Evaluation episodes (greedy, or sampled
with ``eval_mode``) run every ``eval_every`` env steps in a separate env. With
``online_queue`` (off by default) each new window of ``seq_len`` steps is also replayed once
soon after it arrives (DreamerV3 2025's online queue). Checkpoints are written every
``checkpoint_seconds`` and at the end: ``RUN/checkpoints/online_latest.pt`` (everything needed
to resume) plus ``world_model.pt`` and ``behavior.pt`` in the formats stages 03/04 load.

Resuming (``--resume``, also after ``kill -9``) restores weights, optimizers, the return
normaliser, counters and RNG states from the checkpoint and rebuilds the replay from the
shards. The replay is the truth: the env-step and episode counters continue from what the
shards hold (episodes flushed after the checkpoint included; episodes in progress at the kill
are lost, they were never written), and metrics logged past it are dropped, so they have no
gap and no duplicate. A run killed before its first checkpoint resumes from its shards alone.
Only one process writes a run at a time (``RUN/.lock``), and checkpoints carry the run's
identity (``RUN/run.json``): one copied from another run is refused.

Past one process (``torchrun --nproc-per-node N dreamer train ...``, ``distributed.py``): each
rank steps its own K envs (its own env seeds), and after every env step the ranks exchange the
new rows (one all-gather; every rank adds them in rank order), so every rank's replay holds
every rank's streams as they happen, the same rows in the same order. Each rank draws its own
windows (the sampler's rank streams), ``--batch-size`` per rank, and the gradients are averaged
over the ranks (``stages.updates``). Env steps count over all ranks, and the train ratio applies
to the global batch: updates owed = env steps * train_ratio / (N * B * T). Each rank writes its
own finished episodes to its own shards, so every episode is stored once; rank 0 alone writes
the checkpoints (with every rank's RNG states), world_model.pt, behavior.pt, metrics, config,
trackers and progress, and plays the evaluation episodes (the others wait at the next
collective). Every rank starts from rank 0's weights; a resume rebuilds every rank's replay from
the same shards (rank 0's listing).

Other writers (``dreamer collect --policy RUN --follow --out RUN/replay``): every
``pickup_seconds`` the loop lists RUN/replay for closed shards that no rank of the run wrote and
that it has not loaded (a directory listing: known shards are never read again) and adds their
episodes to the replay (the stream of whole episodes, beside the envs' streams); their env steps
count toward the run's, and a ``pickup/*`` metrics record says how many shards, episodes and steps
came from other writers. With ``learner_only`` (``--learner-only``) the run steps no envs of its
own: its env steps are what the replay holds; it waits for collectors' data until ``prefill``,
runs the updates the train ratio owes, evaluates every ``eval_every`` replay env steps and ends at
``steps``. In both modes world_model.pt, then behavior.pt (each atomically) are published every
``publish_seconds`` when the weights changed since they were last written (and at every
checkpoint; a learner-only run also at its start, so its collectors can begin), so collectors
following the run act with recent weights.

With ``replay_context`` (off by default) windows that start mid-episode begin from the latent
state the world model computed for the row before them when it was last replayed
(``world_model.ReplayContext``).

Metrics go to ``metrics.jsonl`` (step = env steps) and to the trackers ``loggers`` names
(``--logger``: TensorBoard by default, W&B, MLflow; see trackers.py), which also get the
resolved config. At each evaluation TensorBoard also shows the open-loop dream of the first
evaluation episode (``dream/openloop``: a GIF of real | reconstruction | dream for pixel
observations, one line-plot image for vectors).

Writes into RUN/: its ``train`` section of ``config.yaml``, ``metrics.jsonl``, ``tb/`` (and ``wandb/``, ``mlruns/``,
``trackers.json`` with those trackers), ``replay/`` (dataset), ``world_model.pt``,
``behavior.pt``, ``checkpoints/``.

Imports: world_model, behavior, policies, envs, data, checkpoint, config, runs, runtime,
distributed, and the stage kit (stages.common: the training loop, resume, stop requests;
stages.outputs: the --out check; stages.updates: the world-model and behavior update steps
stages 02 and 03 use too).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from dreamer_core import checkpoint, distributed, runtime, trackers
from dreamer_core import config as config_lib
from dreamer_core.behavior import ActorCritic, BehaviorConfig
from dreamer_core.data import schema, store
from dreamer_core.data.dataset import episodes_in, row_bytes
from dreamer_core.data.sampler import SequenceSampler
from dreamer_core.data.storage import ColumnStore
from dreamer_core.data.store import is_dataset_dir
from dreamer_core.data.writer import DatasetWriter, EpisodeRecorder
from dreamer_core.envs import EnvConfig, make_env, make_env_pool
from dreamer_core.envs.pool import BACKENDS
from dreamer_core.errors import DatasetError, DreamerError
from dreamer_core.optim import OptimConfig, make_optimizer
from dreamer_core.policies import AgentPolicy, RandomPolicy, play_episode
from dreamer_core.runs import BEHAVIOR, ONLINE_CONFIG, ONLINE_LATEST, REPLAY, WORLD_MODEL
from dreamer_core.stages.common import (
    Callback,
    Every,
    EverySeconds,
    NonFiniteGuard,
    TrainLoop,
    autocast,
    claim_run_dir,
    resume_or_refuse,
    run_id,
    truncate_metrics,
    write_config,
)
from dreamer_core.stages.updates import behavior_update, world_model_update
from dreamer_core.world_model import (
    ReplayContext,
    WorldModel,
    WorldModelConfig,
    network_problems,
    qualify_networks,
)

LATEST = ONLINE_LATEST
MAX_NONFINITE = 5  # non-finite world-model losses in a row before the run stops
CONFIG = ONLINE_CONFIG
HEADLINE = ("eval/return", "train/return")  # the metric columns of TensorBoard's hparams view
# The dream shown at each evaluation: rows of the first evaluation episode the model observes,
# then rows it imagines under the actions taken (stage 02's open-loop evaluation uses 5 + 15).
DREAM_CONTEXT, DREAM_HORIZON, DREAM_FPS = 5, 15, 4
ENV_SEEDS = 2**31 - 2**16  # env seeds of ranks > 0 are below this (env i of a pool adds i)
LEARN_CHUNK = 16  # learner-only: updates between looks at the loop's cadences (logs, checkpoints, stops)
IDLE_SECONDS = 1.0  # learner-only: the longest sleep while no update is owed
READ_BLOCK_BYTES = 64 << 20  # rows read from a shard at once when loading it into the replay


@dataclass(frozen=True)
class TrainConfig:
    """Everything `dreamer train` needs. ``steps``, ``prefill`` and ``eval_every`` count env
    steps: agent steps summed over the K envs (after action repeat)."""

    out: str = "runs/online"
    env: EnvConfig = field(default_factory=lambda: EnvConfig(id="CartPole-v1"))
    steps: int = 20_000
    num_envs: int = 1
    prefill: int = 1000  # random-policy env steps before the first update
    train_ratio: float = 64.0  # replayed steps (batch_size * seq_len per update) per env step
    batch_size: int = 16
    seq_len: int = 64
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    behavior: BehaviorConfig = field(default_factory=BehaviorConfig)
    precision: str = "float32"
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch CPU threads; 0 = torch's default (use 1 beside other busy processes)
    backend: str = "auto"
    eval_every: int = 2000
    eval_episodes: int = 10
    eval_mode: str = "greedy"  # greedy (alias mode) | sample: the actions of the evaluation episodes
    log_every: int = 500
    checkpoint_seconds: float = 300.0
    shard_seconds: float = 60.0
    learner_only: bool = False  # step no envs: learn from the shards other processes write into RUN/replay
    pickup_seconds: float = 5.0  # between looks for other writers' closed shards in RUN/replay (0 = never)
    publish_seconds: float = 30.0  # between writes of new weights to world_model.pt + behavior.pt (0 = at checkpoints)
    replay_context: bool = False  # start mid-episode windows from the latent stored when last replayed
    online_queue: bool = False  # replay each new window of T steps once soon after it arrives (2025 code)
    loggers: str = "tensorboard"  # comma-separated trackers: tensorboard, wandb, mlflow, or none (trackers.py)
    project: str = ""  # W&B project / MLflow experiment; empty: WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME, else RUN's name


# What `dreamer train` changes from the DreamerV3 paper's settings, so that a 2-core CPU learns a
# task in minutes (each measured in benchmarks/RESULTS.md): the `tiny` model size, 16 x 32 replay
# windows, and learning rates raised 10x (world model 1e-3 instead of 1e-4, actor and critic 3e-4
# instead of 3e-5): with a few thousand updates the paper's rates barely move the actor (CartPole
# stayed at the random policy's return after 2000 updates). The critic learns faster still (1e-3,
# 33x the paper's) and its slow copy follows it 15x faster (EMA 0.3 per update instead of 0.02): in
# the ~2,400 updates of a 20k-step run the critic's value otherwise lags far behind what the policy
# earns (CartPole reached 475 on 1 of 5 seeds with the critic at 3e-4 and EMA 0.02, 4 of 5 at 1e-3
# and EMA 0.1, 5 of 5 with these; benchmarks/RESULTS.md online-variants). `--preset paper-lr` restores
# the paper's rates, `--preset dreamerv3` the recipe's EMA (0.02); `--preset XS` (S, M...) picks a
# bigger model.
ONLINE_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in config_lib.PRESETS["tiny"].items() if k not in ("batch_size", "seq_len")},
    "batch_size": 16, "seq_len": 32,
    "optim.lr": 1e-3, "behavior.actor_optim.lr": 3e-4, "behavior.critic_optim.lr": 1e-3,
    "behavior.critic.slow_rate": 0.3,
}


WORLDMODELS_REFUSAL = (
    "`dreamer train` (online) trains the DreamerV3 RSSM only; the World Models family (VAE + MDN-RNN with a "
    "CMA-ES controller) trains in stages, as in the paper: collect rollouts with `dreamer collect --env ID --out "
    "DATA`, train V and M with `dreamer train-world-model DATA --out RUN --preset worldmodels`, search the "
    "controller with `dreamer train-behavior --run RUN` (--scorer real or dream), then `dreamer evaluate --run "
    "RUN`; to iterate, collect more with `--policy RUN` and train again. Nothing was written.")


def make_config(out: str, presets: list[str], sets: list[str], flags: dict[str, Any]) -> TrainConfig:
    """The online defaults (ONLINE_DEFAULTS over TrainConfig), then presets in order, then the
    flags given (None = not given), then --set. The World Models family is refused (``WORLDMODELS_REFUSAL``)."""
    if "worldmodels" in presets or any(s.replace(" ", "").startswith(("family=", "worldmodels.")) for s in sets):
        raise DreamerError(WORLDMODELS_REFUSAL)
    base = config_lib.apply_overrides(TrainConfig(out=out), ONLINE_DEFAULTS)
    cfg = config_lib.resolve(base, "train", presets, flags, sets)
    validate(cfg)
    # A user's encoder or decoder as module:name, so a resume in another process imports its module.
    return replace(cfg, model=qualify_networks(cfg.model))


FLAGS = {"steps": "--steps", "num_envs": "--num-envs", "train_ratio": "--train-ratio", "prefill": "--prefill",
         "batch_size": "--batch-size", "seq_len": "--seq-len", "eval_every": "--eval-every",
         "eval_episodes": "--eval-episodes", "eval_mode": "--eval-mode", "checkpoint_seconds": "--checkpoint-seconds",
         "threads": "--threads", "device": "--device", "env.action_repeat": "--action-repeat", "loggers": "--logger",
         "learner_only": "--learner-only"}


def validate(cfg: TrainConfig) -> None:
    """Every problem of a resolved config in one DreamerError (see ``config_lib.Problems``)."""
    p = config_lib.Problems("train", FLAGS)
    p.at_least("steps", cfg.steps, 1)
    p.at_least("num_envs", cfg.num_envs, 1)
    p.positive("train_ratio", cfg.train_ratio)
    p.at_least("batch_size", cfg.batch_size, 1)
    p.at_least("seq_len", cfg.seq_len, 1)
    p.require(cfg.prefill >= cfg.seq_len,
              f"--prefill ({cfg.prefill}) must hold at least one window of seq_len={cfg.seq_len} steps")
    p.at_least("eval_every", cfg.eval_every, 0, " (0 = never)")
    p.at_least("eval_episodes", cfg.eval_episodes, 0)
    p.one_of("eval_mode", cfg.eval_mode, config_lib.ACTION_MODES)
    p.at_least("log_every", cfg.log_every, 0)
    p.at_least("checkpoint_seconds", cfg.checkpoint_seconds, 0, " (0 = only at the end)")
    p.positive("shard_seconds", cfg.shard_seconds)
    p.at_least("pickup_seconds", cfg.pickup_seconds, 0, " (0 = never)")
    p.require(not cfg.learner_only or cfg.pickup_seconds > 0,
              f"{p.name('learner_only')} learns from the shards it picks up: {p.name('pickup_seconds')} must be > 0")
    p.at_least("publish_seconds", cfg.publish_seconds, 0, " (0 = only at checkpoints)")
    p.at_least("threads", cfg.threads, 0, " (0 = torch's default)")
    p.precision("precision", cfg.precision)
    p.device("device", cfg.device)
    p.one_of("backend", cfg.backend, BACKENDS)
    p.optimizer("optim", cfg.optim)
    p.world_model("model", cfg.model)
    p.behavior("behavior", cfg.behavior)
    p.require(trackers.problem(cfg.loggers) is None, f"{p.name('loggers')} {trackers.problem(cfg.loggers)}")
    for problem in network_problems(cfg.model):
        p.add(problem)
    p.raise_any()
    trackers.check(cfg.loggers, FLAGS["loggers"])  # a tracker whose package is missing: how to install it


def replay_path(cfg: TrainConfig) -> str:
    """The run's dataset as an absolute path (what its world model and behavior record)."""
    return str((Path(cfg.out) / REPLAY).resolve())


class Clock:
    """Wall-clock seconds per part of the loop (collect, world model, behavior, data, eval...)."""

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals: dict[str, float] = dict(totals or {})
        self._part: str | None = None
        self._since = 0.0

    def switch(self, part: str | None) -> None:
        now = time.perf_counter()
        if self._part is not None:
            self.totals[self._part] = self.totals.get(self._part, 0.0) + now - self._since
        self._part, self._since = part, now


def shard_episodes(path: Path, info: store.ShardInfo, row_bytes: int) -> Iterator[tuple[int, schema.Episode]]:
    """(first row in the shard, episode) for every episode of a closed shard, in order, reading
    runs of whole episodes of about ``READ_BLOCK_BYTES`` (``dataset.episodes_in``, as
    ``Dataset.iter_episodes``). ``row_bytes``: bytes of one row (``dataset.row_bytes``).

    Raises:
        DatasetError: the shard cannot be opened or a column cannot be read.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"Shard {path} cannot be opened ({exc}): {store.DAMAGED_SHARD_FIX}") from None
    with f:
        yield from episodes_in(f, info, max(1, READ_BLOCK_BYTES // row_bytes), path)


def parameter_digest(*modules: torch.nn.Module) -> str:
    """A short hash of the modules' weights and buffers: equal on every rank of a data-parallel run."""
    digest = hashlib.sha256()
    for module in modules:
        for key, value in module.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class OnlineTrainer:
    """One online run (fresh or resumed); under ``torchrun``, this rank's part of it."""

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True, steps: int | None = None,
                 threads: int | None = None, loggers: str | None = None, callbacks: Sequence[Callback] = (),
                 learner_only: bool | None = None):
        """``steps``, ``threads``, ``loggers`` and ``learner_only``: new values for a resumed run
        (None: keep the stored ones); ``callbacks``: the hooks of ``stages.common.Callback``
        (step = env steps; rank 0 alone calls them)."""
        self.run_dir = Path(cfg.out)
        self.progress = progress
        self.callbacks = list(callbacks)
        self.dist = distributed.init(runtime.resolve_device(cfg.device))  # SINGLE without torchrun
        problem, state = None, None
        try:
            # world_model.pt and behavior.pt are published before the first checkpoint: a resume
            # without one restarts from the replay and writes them again.
            cfg, state = resume_or_refuse(
                cfg, self.run_dir / LATEST, [self.run_dir / p for p in (WORLD_MODEL, BEHAVIOR, REPLAY)], resume,
                "choose another --out", keep=lambda stored, given: replace(stored, out=given.out),
                resumable=[self.run_dir / p for p in (REPLAY, WORLD_MODEL, BEHAVIOR)],
                config_file=self.run_dir / CONFIG)
        except DreamerError as error:
            problem = error
        if not self.dist.all(problem is None):  # every rank has looked before any rank writes
            raise problem or DreamerError(f"Another rank refused the run in {self.run_dir} (its message says why); "
                                          "nothing was written.")
        if steps is not None:
            cfg = replace(cfg, steps=steps)
        if threads is not None:
            cfg = replace(cfg, threads=threads)
        if loggers is not None:
            cfg = replace(cfg, loggers=loggers)
        if learner_only is not None:
            cfg = replace(cfg, learner_only=learner_only)
        validate(cfg)
        self.cfg = cfg
        self.run_id = run_id(self.run_dir)  # made at the first write (run) for a new run
        self.device = self.dist.device(runtime.resolve_device(cfg.device))  # cuda: this rank's GPU
        runtime.setup(cfg.threads)
        torch.manual_seed(cfg.seed)
        # A resume without a checkpoint (killed before the first) still counts: new env seeds.
        self.resumes = int(state.counters["resumes"]) + 1 if state is not None else int(resume)
        seed = cfg.seed + 7919 * self.resumes  # a resumed run meets new episodes, not the same ones again
        self.env_seed = seed if self.dist.rank == 0 else self.dist.seed(seed) % ENV_SEEDS  # each rank its own
        self.pool = None
        self.eval_env = None  # made at the first evaluation (learner-only: now, for the spaces), kept for the run
        try:
            if cfg.learner_only:
                self.eval_env = make_env(cfg.env, seed=None)
            else:
                self.pool = make_env_pool(cfg.env, num_envs=cfg.num_envs, seed=self.env_seed, backend=cfg.backend)
            self._build(state, resume)
        except BaseException:
            self.close()
            raise

    def _build(self, state: checkpoint.TrainState | None, resume: bool) -> None:
        cfg = self.cfg
        spaces = self.pool if self.pool is not None else self.eval_env
        obs_space, act_space = spaces.observation_space, spaces.action_space
        self.observation_space, self.action_space = obs_space, act_space
        self.row_bytes = row_bytes(obs_space, act_space)
        if state is not None:
            state.check_spaces(obs_space, act_space, "The environment", self.run_dir / LATEST)
        self.world_model = WorldModel(cfg.model, obs_space, act_space).to(self.device)
        self.wm_optim = make_optimizer(self.world_model.parameters(), cfg.optim)
        self.agent = ActorCritic.for_world_model(cfg.behavior, self.world_model).to(self.device)
        groups = self.agent.parameter_groups()
        self.actor_optim = make_optimizer(groups["actor"], cfg.behavior.actor_optim)
        self.critic_optim = make_optimizer(groups["critic"], cfg.behavior.critic_optim)
        self.dist.broadcast_module(self.world_model)  # every rank starts from rank 0's weights
        self.dist.broadcast_module(self.agent)
        if self.dist.rank > 0:  # its own sampling noise; rank 0 keeps a one-process run's
            torch.manual_seed(self.dist.seed(cfg.seed))
        self.replay = SequenceSampler(ColumnStore(obs_space, act_space), cfg.batch_size, cfg.seq_len, seed=cfg.seed,
                                      rank=self.dist.rank, world_size=self.dist.world_size,
                                      online_queue=cfg.online_queue)  # each rank its own windows of the same rows
        self.context = ReplayContext(self.world_model) if cfg.replay_context else None
        self.random_policy = RandomPolicy(act_space, cfg.num_envs, seed=self.env_seed)
        self.policy = AgentPolicy(self.world_model, self.agent, cfg.num_envs, mode="sample", seed=self.env_seed,
                                  device=self.device)
        self.eval_policy = AgentPolicy(self.world_model, self.agent, 1, mode="mode", seed=cfg.seed, device=self.device)
        self.env_steps = self.updates = self.episodes = self.evals = 0
        self.picked_steps = self.picked_episodes = 0  # from other writers' shards (pickup)
        self.clock = Clock()
        self.last_eval: float | None = None
        self.best_eval: float | None = None
        self.known_shards: set[str] = set()  # rank 0: shards loaded, written by a rank, or refused
        self.loaded_steps = 0  # env steps of the shards the replay was rebuilt from
        replay_dir = self.run_dir / REPLAY
        rng = self._restore(state) if state is not None else None
        if resume:
            # The replay is the truth: what was flushed to shards, including episodes flushed
            # after the checkpoint; steps of episodes in progress at a kill are gone and not counted.
            self.env_steps, self.episodes = self._reload_replay(replay_dir)
            self.loaded_steps = self.env_steps
            if rng is not None:
                self.replay.load_state_dict(rng["replay_sampler"])  # continues the stream over the rebuilt rows
            if self.dist.is_main:
                truncate_metrics(self.run_dir, self.env_steps)
        writer = f"online:{self.run_dir}" + (f" rank {self.dist.rank} of {self.dist.world_size}"
                                             if self.dist.active else "")
        self.writer = DatasetWriter(
            replay_dir, env_id=cfg.env.id, env_config=cfg.env.to_dict(), observation_space=obs_space,
            action_space=act_space, policy=writer, seed=cfg.seed, shard_episodes=100_000,
            shard_seconds=cfg.shard_seconds,
        )
        self.own_from = len(self.writer.shards)  # the writer's shards from here on are this rank's own
        self.exchange = distributed.ArrayExchange(self.dist)  # DDP: each env step's rows to every rank
        self.pickup_due = EverySeconds(cfg.pickup_seconds) if cfg.pickup_seconds > 0 else None
        self.publish_due = EverySeconds(cfg.publish_seconds) if cfg.publish_seconds > 0 else None
        self.published = self.updates  # the update of the weights in world_model.pt / behavior.pt

    def _reload_replay(self, replay_dir: Path) -> tuple[int, int]:
        """Fill the replay with every episode of the run's shards (rank 0's listing, so every rank
        loads the same shards in the same order); returns (env steps, episodes)."""
        shards: list[store.ShardInfo] | str = []
        if self.dist.is_main and is_dataset_dir(replay_dir):
            try:
                shards = store.scan(replay_dir)[0]
            except DatasetError as exc:
                shards = str(exc)
        shards = self.dist.broadcast_object(shards)
        if isinstance(shards, str):  # a corrupt shard: every rank stops with rank 0's message
            raise DatasetError(shards)
        for info in shards:
            path = replay_dir / info.name
            for start, episode in shard_episodes(path, info, self.row_bytes):
                try:
                    self.replay.add_episode(episode)
                except DatasetError as exc:  # NaN or inf, or rows that break the contract: name the shard
                    bad = schema.first_nonfinite(episode)
                    what = (f"its column steps/{bad[0]} holds {bad[2]} at row {start + bad[1]} of the shard"
                            if bad is not None else f"the episode at its rows {start}:{start + episode.rows} "
                            f"does not fit the replay ({exc})")
                    raise DatasetError(
                        f"The run's replay shard {path} cannot be loaded to resume the run: {what}. No "
                        "writer of dreamer-core stores that, so the shard was changed after it was written. "
                        f"Move the shard out of {replay_dir} (or restore it from a copy), then run `dreamer "
                        f"train --resume --out {self.run_dir}` again: the run continues from the other shards "
                        "and no longer counts the moved shard's env steps."
                    ) from None
            self.known_shards.add(info.name)
        return sum(s.num_steps for s in shards), sum(s.num_episodes for s in shards)

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.run_id = self.run_id or run_id(self.run_dir, create=True)
            extra: dict[str, Any] = {}
            if self.dist.active:
                extra["distributed"] = {"world_size": self.dist.world_size, "backend": self.dist.backend,
                                        "global_batch": self.dist.world_size * cfg.batch_size}
                print(f"data-parallel: {self.dist.world_size} ranks ({self.dist.backend}) x batch {cfg.batch_size} "
                      f"= global batch {self.dist.world_size * cfg.batch_size}", file=sys.stderr)
            write_config(self.run_dir / CONFIG, "train", cfg, **extra)
        if not cfg.learner_only:
            self.obs = self.pool.reset(seed=self.env_seed)
            self.recorder = EpisodeRecorder(self.observation_space, self.action_space, self.obs, keep_rows=True)
            self.policy.reset()
        self.recent: deque[float] = deque(maxlen=20)
        self.start_updates = self.updates
        if cfg.learner_only and not (self.run_dir / BEHAVIOR).exists():
            self.publish()  # collectors following the run can start acting now (they are its only data)
        title = f"learn {cfg.env.id} from shards" if cfg.learner_only else f"train {cfg.env.id}"
        with self.writer, TrainLoop(self.run_dir, cfg.steps, self.env_steps, title, self.progress,
                                    log_every=cfg.log_every, checkpoint_seconds=cfg.checkpoint_seconds,
                                    handle_signals=True, callbacks=self.callbacks, dist=self.dist) as loop:
            self.loop = loop
            loop.sink.track(cfg.loggers, "train", config_lib.to_dict(cfg), cfg.project, HEADLINE)
            guard = NonFiniteGuard(MAX_NONFINITE, self._nonfinite_message, on_limit=self.writer.close_shard)
            evaluation = Every(cfg.eval_every, self.env_steps, due_now=self.evals == 0)
            while loop.running(self._loop_count()):
                if cfg.learner_only:
                    self._learn_from_shards(guard, evaluation)
                else:
                    if cfg.eval_every and cfg.eval_episodes and self.env_steps >= cfg.prefill and \
                            evaluation(self.env_steps):
                        self.evaluate()
                    self.act()
                    self.learn(guard)
                if loop.log_due(self.env_steps):
                    self._log()
                if loop.checkpoint_due(self.env_steps):
                    self.save()
                elif self.updates != self.published and _due(self.publish_due):  # new weights to publish
                    self.clock.switch("publish")
                    self.publish()
                    self.clock.switch(None)
                loop.show(self.env_steps, self._status)
            interrupted = loop.stopped
            self._finish(interrupted)
        elapsed = loop.elapsed()
        return {
            "env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes,
            "eval_return": self.last_eval, "best_eval_return": self.best_eval, "seconds": elapsed,
            "time": dict(self.clock.totals), "interrupted": interrupted, "run": str(self.run_dir),
            "picked_steps": self.picked_steps, "picked_episodes": self.picked_episodes,
            "learner_only": cfg.learner_only, "world_size": self.dist.world_size,
            "global_batch": self.dist.world_size * cfg.batch_size, **self._rates(),
        }

    def _loop_count(self) -> int:
        """The count the loop runs on: the env steps, held just below ``steps`` in learner-only
        mode while updates are still owed (one pickup may bring many env steps at once, and the
        run ends only when it has trained on them)."""
        if self.cfg.learner_only and self.env_steps >= self.cfg.steps and self.updates < self.updates_owed():
            return self.cfg.steps - 1
        return self.env_steps

    def act(self) -> None:
        """One step of the K envs: every new row enters the replay at once (env i's rows form
        its stream; under DDP rank r's env i is stream r * K + i, the rows of every rank added
        in rank order), this rank's finished episodes go to its shards."""
        cfg = self.cfg
        self.clock.switch("collect")
        acting = self.random_policy if self.env_steps < cfg.prefill else self.policy
        actions = acting.act(self.obs, self.recorder.is_first)
        self.obs, reward, terminated, truncated = self.pool.step(actions)
        added, finished = self.recorder.record(actions, self.obs, reward, terminated, truncated)
        self.clock.switch("data")
        if self.dist.active:
            pickup = self._exchange(added, finished)
        else:
            self.env_steps += added
            self.replay.add_rows(*self.recorder.take_rows())
            for episode in finished:
                self._episode_done(float(episode.reward.sum()), episode.steps)
            pickup = _due(self.pickup_due)
        for episode in finished:
            self.writer.add_episode(episode)
        self.writer.maybe_close_shard()
        if pickup:
            self.pickup()

    def _exchange(self, added: int, finished: list[schema.Episode]) -> bool:
        """DDP: this env step's new rows of every rank, to every rank (one all-gather, carrying
        the env steps, the finished episodes' returns and rank 0's pickup decision too), added
        in rank order. Returns whether to pick up other writers' shards now (rank 0's clock)."""
        envs, obs, columns = self.recorder.take_rows()
        mine = {
            "stream": envs + self.dist.rank * self.cfg.num_envs, **{f"obs/{k}": v for k, v in obs.items()}, **columns,
            "steps": np.array([added], np.int64),
            "returns": np.array([float(e.reward.sum()) for e in finished], np.float64),
            "lengths": np.array([e.steps for e in finished], np.int64),
            "pickup": np.array([self.dist.is_main and _due(self.pickup_due)], bool),
        }
        parts = self.exchange(mine)
        for part in parts:
            self.replay.add_rows(part["stream"], {k: part[f"obs/{k}"] for k in obs}, {c: part[c] for c in columns})
            self.env_steps += int(part["steps"][0])
        for part in parts:
            for ret, length in zip(part["returns"].tolist(), part["lengths"].tolist()):
                self._episode_done(ret, length)
        return bool(parts[0]["pickup"][0])

    def _episode_done(self, ret: float, length: int) -> None:
        self.episodes += 1
        self.recent.append(ret)
        self.loop.log(self.env_steps, {"train/return": ret, "train/length": float(length)})

    def _learn_from_shards(self, guard: NonFiniteGuard, evaluation: Every) -> None:
        """Learner-only: pick up collectors' shards when due, evaluate when due, run up to
        ``LEARN_CHUNK`` of the updates owed (so logs, checkpoints, publishing and stop requests
        keep their pace through a backlog); sleep when none is owed."""
        cfg = self.cfg
        # Past --steps nothing more is picked up: the run trains on what it has and ends, however
        # fast the collectors write (the same decision on every rank: env_steps is global).
        if self.env_steps < cfg.steps and self.dist.any(_due(self.pickup_due)):
            self.pickup()
        if cfg.eval_every and cfg.eval_episodes and self.env_steps >= cfg.prefill and evaluation(self.env_steps):
            self.evaluate()
        if not self.learn(guard, limit=LEARN_CHUNK):  # the same on every rank
            self.clock.switch("wait")
            time.sleep(min(IDLE_SECONDS, cfg.pickup_seconds))
            self.clock.switch(None)

    def learn(self, guard: NonFiniteGuard, limit: int | None = None) -> int:
        """The updates the train ratio owes after this env step (at most ``limit``); returns how many ran."""
        done = 0
        while (limit is None or done < limit) and self.updates < self.updates_owed() and self.replay.num_windows > 0:
            metrics = self.train_step()
            self.loop.mean.add(metrics)
            guard.check("wm/nonfinite" not in metrics)  # raises after MAX_NONFINITE in a row
            self.loop.updated(self.env_steps, metrics)
            done += 1
        self.clock.switch(None)
        return done

    def pickup(self) -> None:
        """Add the episodes of closed shards in RUN/replay that no rank of this run wrote and
        that the replay does not hold yet (other writers', e.g. collectors following the run);
        their env steps count toward the run's, and a ``pickup/*`` record says how many.

        Cheap when nothing is new: one directory listing on rank 0; a shard is looked at once.
        Rank 0 reads a new shard's header and episodes and checks them (spaces, row contract,
        finite values); one that does not fit is left out with a warning. It then names the
        accepted shards to every rank, which load them in that order (equal replays)."""
        replay_dir = self.run_dir / REPLAY
        # A rank waits in the broadcast below while rank 0 lists the directory, so no rank closes a
        # shard between telling its names and that listing: no rank's own shard passes for another's.
        written = self.dist.gather_object([s.name for s in self.writer.shards[self.own_from:]])
        found: list[tuple[store.ShardInfo, list[schema.Episode]]] = []
        if self.dist.is_main:
            for names in written:
                self.known_shards.update(names)
            for path in store.shard_paths(replay_dir):
                if path.name not in self.known_shards:
                    self.known_shards.add(path.name)
                    accepted = self._check_shard(path)
                    if accepted is not None:
                        found.append(accepted)
        infos = self.dist.broadcast_object([info for info, _ in found])
        if not infos:
            return
        episodes = [e for _, es in found for e in es] if self.dist.is_main else \
            [e for info in infos for _, e in shard_episodes(replay_dir / info.name, info, self.row_bytes)]
        for episode in episodes:
            self.replay.add_episode(episode)
        steps, count = sum(i.num_steps for i in infos), sum(i.num_episodes for i in infos)
        self.env_steps += steps
        self.episodes += count
        self.picked_steps += steps
        self.picked_episodes += count
        if self.cfg.learner_only:
            self.recent.extend(r for i in infos for r in i.returns)
        self.loop.log(self.env_steps, {
            "pickup/shards": float(len(infos)), "pickup/episodes": float(count), "pickup/steps": float(steps),
            "pickup/return": float(np.mean([r for i in infos for r in i.returns])),
            "pickup/total_episodes": float(self.picked_episodes), "pickup/total_steps": float(self.picked_steps)})

    def _check_shard(self, path: Path) -> tuple[store.ShardInfo, list[schema.Episode]] | None:
        """A new shard of another writer, read and checked: (header, episodes), or None after a
        warning when it does not fit the run (it is not looked at again)."""
        try:
            info = store.read_shard_info(path)
            problems = schema.space_mismatches(schema.space_from_json(info.observation_space),
                                               schema.space_from_json(info.action_space),
                                               self.observation_space, self.action_space)
            if problems:
                raise DatasetError(f"this run's env has {' and '.join(problems)}")
            episodes = [episode for _, episode in shard_episodes(path, info, self.row_bytes)]
            for start, episode in zip(info.starts, episodes):
                episode.validate(self.observation_space, self.action_space)
                bad = schema.first_nonfinite(episode)
                if bad is not None:
                    raise DatasetError(f"its column steps/{bad[0]} holds {bad[2]} at row {start + bad[1]}")
        except (DatasetError, ValueError, OSError) as exc:
            print(f"left out the shard {path} (written by another process): {' '.join(str(exc).split())}. The run "
                  "continues without it.", file=sys.stderr)
            return None
        return info, episodes

    def _finish(self, interrupted: bool) -> None:
        """Keep the episodes in progress (real data, cut by the loop: a truncation) so the dataset
        holds every env step counted (the replay has their rows already); log, evaluate and
        checkpoint a last time."""
        if not self.cfg.learner_only:
            cut = self.recorder.in_progress()
            for episode in cut:
                self.writer.add_episode(episode)
            self.episodes += sum(self.dist.all_gather_object(len(cut)))  # the counter is what the dataset holds
        if self.loop.mean.count:
            self._log()
        if not interrupted and self.cfg.eval_episodes:
            self.evaluate()
        self.save()
        self.loop.show(self.env_steps, self._status, force=True)

    def _nonfinite_message(self, count: int) -> str:
        return (f"Stopped after {count} non-finite world-model losses in a row at update {self.updates} "
                f"(env step {self.env_steps}); those updates changed nothing, and the last checkpoint "
                f"({self.run_dir / LATEST}) is kept. Lower the learning rate (--set optim.lr=...) or check "
                "the env for extreme observations or rewards; then continue with --resume.")

    def updates_owed(self) -> int:
        """Updates the train ratio asks for after ``env_steps`` (none before the prefill ends).
        Under DDP each update trains on every rank's batch: the global batch of N * B windows."""
        cfg = self.cfg
        if self.env_steps < cfg.prefill:
            return 0
        replayed = self.dist.world_size * cfg.batch_size * cfg.seq_len  # steps replayed per update
        return 1 + int((self.env_steps - cfg.prefill) * cfg.train_ratio / replayed)

    def train_step(self) -> dict[str, float]:
        """One world-model update, then one behavior update from its posterior states (under
        DDP each rank's own windows, the gradients averaged over the ranks)."""
        cfg = self.cfg
        self.clock.switch("data")
        rows = self.replay.draw_windows()
        batch = self.replay.gather_windows(rows).to(self.device)
        state = None if self.context is None else \
            self.context.initial_state(self.replay.previous_rows(rows[:, 0]), batch.is_first)
        self.clock.switch("world_model")
        ok, metrics, post = world_model_update(self.world_model, self.wm_optim, cfg.optim, self.updates, batch,
                                               cfg.precision, state, dist=self.dist)
        out = {f"wm/{k}": v for k, v in metrics.items()}
        self.updates += 1
        if not ok:
            return {"wm/nonfinite": 1.0}
        if self.context is not None:
            self.context.store(rows, post)
        self.clock.switch("behavior")
        self.world_model.requires_grad_(False)  # behavior learning never changes the world model
        try:
            with autocast(self.device, cfg.precision):
                out.update(behavior_update(self.world_model, self.agent, self.actor_optim, self.critic_optim,
                                           cfg.behavior, batch, post=post, update=self.updates - 1, dist=self.dist))
        finally:
            self.world_model.requires_grad_(True)
        return out

    def evaluate(self) -> float:
        """Episodes in a separate env with greedy or sampled actions (``eval_mode``); logs eval/* at
        the current env step, under the same keys for both modes (the run's config says which).
        Under DDP rank 0 plays them; the other ranks only count the evaluation (they wait for
        rank 0 at the next collective) and return NaN."""
        cfg = self.cfg
        if not self.dist.is_main:
            self.evals += 1
            return float("nan")
        self.clock.switch("eval")
        if self.eval_env is None:
            self.eval_env = make_env(cfg.env, seed=None)
        self.eval_policy.mode = config_lib.ACTION_MODES[cfg.eval_mode]  # AgentPolicy's name: mode | sample
        returns, lengths, episodes = [], [], []
        for i in range(cfg.eval_episodes):
            played = play_episode(self.eval_env, self.eval_policy,
                                  seed=cfg.seed + 1_000_000 + self.evals * cfg.eval_episodes + i)
            returns.append(played.ret)
            lengths.append(played.episode.steps)
            episodes.append(played.episode)
        self.evals += 1
        mean = float(np.mean(returns))
        self.last_eval = mean
        self.best_eval = mean if self.best_eval is None else max(self.best_eval, mean)
        record = {
            "eval/return": mean, "eval/return_std": float(np.std(returns)), "eval/return_min": float(np.min(returns)),
            "eval/return_max": float(np.max(returns)), "eval/length": float(np.mean(lengths)),
            "eval/updates": float(self.updates), "eval/wall_seconds": self.wall_seconds(),
        }
        self.loop.log(self.env_steps, record)
        if self.loop.sink.media and episodes:
            self._log_dream(episodes[0])
        self.clock.switch(None)
        self.loop.evaluated(self.env_steps, record)
        return mean

    def _log_dream(self, episode: schema.Episode) -> None:
        """The open-loop dream of an evaluation episode, for the trackers that show media
        (TensorBoard's ``dream/openloop``): the model observes the first ``DREAM_CONTEXT`` rows,
        then imagines up to ``DREAM_HORIZON`` more under the actions taken.

        Pixel observations: a GIF of real | reconstruction | dream at 64 pixels high (a few
        KB). Vector observations: one image, each dimension's real, reconstructed and dreamed
        values over the window beside the reward and continue (the last frame of the
        ``dreamer dream`` video); a video of bars would show less and cost more. The dream is
        seeded on a forked RNG, so training draws the same numbers with or without it."""
        from dreamer_core import analysis, viz

        rows = min(episode.rows, DREAM_CONTEXT + DREAM_HORIZON)
        if rows <= DREAM_CONTEXT:
            return  # nothing left to imagine
        batch = analysis.episode_to_batch(episode, 0, rows, self.device)  # [1, rows]
        result = analysis.dream_episode(self.world_model, batch, DREAM_CONTEXT, seed=self.cfg.seed)
        if result.image_keys:
            views = analysis.EpisodeViews(context=result.context, real=result.real, recon=result.recon,
                                          dream=result.dream)
            self.loop.sink.video("dream/openloop", viz.episode_frames(views, height=64), self.env_steps,
                                 fps=DREAM_FPS)
        else:
            result.title = f"env step {self.env_steps}"
            self.loop.sink.image("dream/openloop", viz.dream_frames(result, height=64)[-1], self.env_steps)

    def wall_seconds(self) -> float:
        """Seconds spent in the loop over all sessions of this run (resumes included)."""
        return float(sum(self.clock.totals.values()))

    def _log(self) -> None:
        """Log the update metrics averaged since the last record, plus speed and time shares."""
        self.loop.log_mean(self.env_steps, **self._rates())

    def _rates(self) -> dict[str, float]:
        elapsed = self.loop.elapsed()
        out = {
            "speed/env_steps_per_second": self.loop.rate(self.env_steps),
            "speed/updates_per_second": (self.updates - self.start_updates) / max(elapsed, 1e-9),
            "speed/updates": float(self.updates), "speed/episodes": float(self.episodes),
        }
        total = self.wall_seconds()
        out.update({f"time/{k}": v for k, v in self.clock.totals.items()})
        out.update({f"time_share/{k}": v / max(total, 1e-9) for k, v in self.clock.totals.items()})
        return out

    def _status(self) -> str:
        cfg = self.cfg
        elapsed = max(self.loop.elapsed(), 1e-9)
        if self.env_steps >= cfg.prefill:
            phase = ""
        elif cfg.learner_only:
            phase = (f" waiting for collectors' data: {self.env_steps}/{cfg.prefill} prefill steps in "
                     f"{self.run_dir / REPLAY} |")
        else:
            phase = " prefill |"
        ret = f"{np.mean(self.recent):.1f}" if self.recent else "-"
        ev = "-" if self.last_eval is None else f"{self.last_eval:.1f}"
        picked = f" | {self.picked_steps} steps from other writers" if self.picked_steps else ""
        return (f"{phase} {self.loop.rate(self.env_steps):.1f} steps/s | {self.updates} updates "
                f"({(self.updates - self.start_updates) / elapsed:.2f}/s) | return {ret} | eval {ev}{picked}")

    # --- checkpoints --------------------------------------------------------------------------

    def save(self) -> None:
        """Flush finished episodes to a shard, then write the resume checkpoint and the stage
        artifacts (each file atomically). Under DDP every rank calls it: each flushes its own
        shard and sends rank 0 its RNG states, what it wrote and a digest of its weights; rank 0
        alone writes (and warns if the ranks' weights differ)."""
        self.clock.switch("checkpoint")
        self.writer.close_shard()
        mine: dict[str, Any] = {"rng": self._rng_state(), "episodes": self.writer.episodes_written,
                                "steps": self.writer.steps_written,
                                "shards": [s.name for s in self.writer.shards[self.own_from:]]}
        ranks: list[dict[str, Any]] = []
        if self.dist.active:
            mine["digest"] = parameter_digest(self.world_model, self.agent)
            ranks = self.dist.gather_object(mine)
        if not self.dist.is_main:
            self.clock.switch(None)
            return
        cfg_dict = config_lib.to_dict(self.cfg)
        written = sum(r["steps"] for r in ranks) if ranks else self.writer.steps_written
        counters = {"env_steps": self.env_steps, "updates": self.updates, "episodes": self.episodes,
                    "evals": self.evals, "resumes": self.resumes, "clock": dict(self.clock.totals),
                    "dataset_steps": self.loaded_steps + written + self.picked_steps,
                    "last_eval": self.last_eval, "best_eval": self.best_eval,
                    "picked_steps": self.picked_steps, "picked_episodes": self.picked_episodes}
        rng = mine["rng"]
        if ranks:
            rng = {**rng, "ranks": [r["rng"] for r in ranks]}  # rank r resumes from ranks[r]
            counters["ranks"] = [{k: r[k] for k in ("episodes", "steps", "shards", "digest")} for r in ranks]
            if len({r["digest"] for r in ranks}) > 1:
                print(f"warning: the ranks' weights differ at update {self.updates} (digests "
                      f"{', '.join(r['digest'] for r in ranks)}); the checkpoint keeps rank 0's.", file=sys.stderr)
        checkpoint.save(self.run_dir / LATEST, checkpoint.TrainState(
            **checkpoint.spaces_json(self.observation_space, self.action_space), stage_config=cfg_dict, stage="train",
            run_id=self.run_id,
            modules={"world_model": self.world_model.state_dict(), "agent": self.agent.state_dict()},
            optimizers={"world_model": self.wm_optim.state_dict(), "actor": self.actor_optim.state_dict(),
                        "critic": self.critic_optim.state_dict()},
            counters=counters, rng=rng))
        self.publish()
        self.clock.switch(None)
        self.loop.checkpointed(self.env_steps, self.run_dir / LATEST)

    def publish(self) -> None:
        """Write ``world_model.pt``, then ``behavior.pt`` (each atomically; rank 0): the formats
        stages 03/04 load, and what collectors following the run (``dreamer collect --policy RUN
        --follow``) reload; a behavior.pt is never older than the world_model.pt beside it."""
        if self.publish_due is not None:
            self.publish_due.last = time.monotonic()  # the next one publish_seconds from now
        self.published = self.updates
        if not self.dist.is_main:
            return
        cfg, cfg_dict = self.cfg, config_lib.to_dict(self.cfg)
        self.world_model.save(self.run_dir / WORLD_MODEL, cfg_dict, update=self.updates, datasets=[replay_path(cfg)],
                              batch_size=cfg.batch_size, seq_len=cfg.seq_len)
        self.agent.save(self.run_dir / BEHAVIOR, self.world_model, cfg_dict, update=self.updates,
                        world_model_update=self.updates, env_config=cfg.env.to_dict(), env_steps=self.env_steps)

    def _rng_state(self) -> dict[str, Any]:
        return {"torch": torch.get_rng_state(), "replay_sampler": self.replay.state_dict(),
                "random_policy": self.random_policy.rng.bit_generator.state,
                "policy": self.policy.generator.get_state()}

    def _restore(self, state: checkpoint.TrainState) -> dict[str, Any] | None:
        """Weights, optimizers, counters and this rank's RNG states; returns those states (None:
        a rank the saved run did not have, which keeps its fresh streams)."""
        self.world_model.load_state_dict(state.modules["world_model"])
        self.agent.load_state_dict(state.modules["agent"])
        self.wm_optim.load_state_dict(state.optimizers["world_model"])
        self.actor_optim.load_state_dict(state.optimizers["actor"])
        self.critic_optim.load_state_dict(state.optimizers["critic"])
        ranks = state.rng.get("ranks") or [state.rng]
        rng = ranks[self.dist.rank] if self.dist.rank < len(ranks) else None
        if rng is not None:
            self.random_policy.rng.bit_generator.state = rng["random_policy"]
            self.policy.generator.set_state(rng["policy"])
            torch.set_rng_state(rng["torch"])
        c = state.counters  # env steps and episodes come from the replay (_build)
        self.updates, self.evals = c["updates"], c["evals"]
        self.clock = Clock(c["clock"])
        self.last_eval, self.best_eval = c["last_eval"], c["best_eval"]
        self.picked_steps, self.picked_episodes = int(c.get("picked_steps", 0)), int(c.get("picked_episodes", 0))
        return rng

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.eval_env is not None:
            self.eval_env.close()
            self.eval_env = None


def _due(timer: EverySeconds | None) -> bool:
    """A wall-clock cadence that is on and due now."""
    return timer is not None and timer()


def run(cfg: TrainConfig, resume: bool = False, progress: bool = True, steps: int | None = None,
        threads: int | None = None, loggers: str | None = None, callbacks: Sequence[Callback] = (),
        learner_only: bool | None = None) -> dict[str, Any]:
    """Train online (or resume) and return a summary; one writer per run directory (rank 0 of
    a ``torchrun`` launch, which alone checks and locks it; a refusal there stops every rank).
    ``steps``, ``threads``, ``loggers`` and ``learner_only``: new values for a resumed run (None:
    keep the stored ones); ``callbacks``: hooks called after each update, evaluation and
    checkpoint, with the env steps as ``step`` (``stages.common.Callback``)."""
    dist = distributed.init(runtime.resolve_device(cfg.device))  # a torchrun launch: join its ranks
    try:
        loggers_used = cfg.loggers if loggers is None else loggers
        with claim_run_dir(dist, cfg.out, "--out", loggers_used, FLAGS["loggers"]):
            trainer = OnlineTrainer(cfg, resume=resume, progress=progress, steps=steps, threads=threads,
                                    loggers=loggers, callbacks=callbacks, learner_only=learner_only)
            try:
                return trainer.run()
            finally:
                trainer.close()
    finally:
        dist.close()


def summary_line(result: dict[str, Any]) -> str:
    """One line for the CLI: final evaluation, counts, speed and where the artifacts are."""
    run = Path(result["run"])
    ev = "-" if result["eval_return"] is None else f"{result['eval_return']:.1f}"
    best = "-" if result["best_eval_return"] is None else f"{result['best_eval_return']:.1f}"
    stop = " [interrupted; continue with --resume]" if result["interrupted"] else ""
    extra = ""
    if result.get("world_size", 1) > 1:
        extra += (f"\n  data-parallel {result['world_size']} ranks, global batch {result['global_batch']} "
                  "(env steps, episodes and updates count over all ranks)")
    if result.get("picked_steps"):
        extra += (f"\n  other writers {result['picked_steps']} env steps ({result['picked_episodes']} episodes) "
                  "picked up from their shards")
    return (
        f"{'learned from' if result.get('learner_only') else 'trained'} {result['env_steps']} env steps, "
        f"{result['updates']} updates, {result['episodes']} episodes in "
        f"{result['seconds'] / 60:.1f} min: eval return {ev} (best {best}){stop}{extra}\n"
        f"  dataset     {run / REPLAY}\n"
        f"  checkpoints {run / LATEST}, {run / WORLD_MODEL}, {run / BEHAVIOR}\n"
        f"  metrics     {run / 'metrics.jsonl'} (curve: dreamer plot {run})"
    )
