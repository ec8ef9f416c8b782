"""C, the controller of the original World Models, and its CMA-ES search (stage 03 of the family).

The controller (Ha & Schmidhuber 2018) is a linear map (optionally with one tanh hidden layer)
from the world model's features ``[z_t, h_t]`` to an action: the argmax for Discrete actions,
``tanh`` for Box actions (values in [-1, 1], the model's encoding, which ``ActionSpace.to_env``
scales to the bounds: the paper's steering in [-1, 1] and gas and brake in [0, 1]), ``> 0`` per
bit for MultiBinary. Its parameters travel as one flat vector (``get_params`` / ``set_params``).

``ControllerSearch`` trains it with CMA-ES from the ``cma`` package: each generation asks for
``population`` candidate vectors, scores each one as its mean return over k rollouts in worker
processes, and tells CMA-ES the negated scores (it minimises). The search state (the pickled
``cma.CMAEvolutionStrategy``, the NumPy random state CMA-ES draws from, the generation counter,
the best candidate and the history) is a plain dict (``state_dict``), saved every generation
as a ``checkpoint.TrainState``, so a resumed search continues exactly where it stopped.

Two scorers, both picklable specs that workers turn into evaluators (each worker rebuilds the
frozen V + M from the ``world_model.pt`` path once):

- ``RealEnvScorer``: k episodes in the real env (``envs.make_env``), the world model filtering
  the observations (``step``) exactly as when acting;
- ``DreamScorer``: k rollouts inside the dream (``DreamEnv``): M rolled out from real start
  states (posterior states of stored rows) at temperature ``tau``, rewards and dones from M's
  heads.

Within a generation every candidate meets the same env seeds and dream noise (common random
numbers), so candidates are ranked on equal terms; the seeds change every generation.

Imports: worldmodels, interfaces (annotations), nets.actions, envs, checkpoint, config, errors,
types.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from dreamer_core import checkpoint
from dreamer_core import config as config_lib
from dreamer_core.envs import EnvConfig, make_env
from dreamer_core.errors import DreamerError
from dreamer_core.interfaces import WorldModelInterface
from dreamer_core.nets.actions import ActionSpace
from dreamer_core.types import Batch
from dreamer_core.worldmodels import VaeMdnState, VaeMdnWorldModel

Tensor = torch.Tensor

FAMILY = "controller"
FAMILY_FORMAT = 1
STAGE = "train-controller"
START_METHODS = ("spawn", "fork", "forkserver")
DONES = ("mode", "sample")
NOISE_STREAM = 1 << 30  # rollout_seed index of the model's sampling noise (env seeds use 0..k-1)


# --- the controller -------------------------------------------------------------------------


@dataclass(frozen=True)
class ControllerConfig:
    hidden: int = 0  # 0: linear (the paper's CarRacing controller); > 0: one tanh hidden layer
    # zh: [z_t, h_t] (the paper's full agent) | z: z_t alone (its "V model only" ablation, which
    # scored 632 +- 251 on CarRacing with a linear controller: no M in the controller's input).
    inputs: str = "zh"


CONTROLLER_INPUTS = ("zh", "z")


class PointPolicy:
    """A deterministic "distribution" over actions, so a controller acts wherever an actor's
    policy distribution is expected (``policies.AgentPolicy`` calls ``.mode`` or ``.sample``)."""

    def __init__(self, action: Tensor):
        self.mode = action

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        return self.mode

    def log_prob(self, action: Tensor) -> Tensor:
        return torch.zeros(action.shape[:-1], device=action.device)

    def entropy(self) -> Tensor:
        return torch.zeros(self.mode.shape[:-1], device=self.mode.device)


class Controller(nn.Module):
    """``action = g(W [z, h] + b)`` (or with one tanh hidden layer); see the module docstring.
    With ``cfg.inputs == "z"`` it reads only the first ``latent_dim`` features, ``z``.

    Shapes:
        feat: ``[..., F]``      act(feat), policy(feat).mode: ``[..., A]`` in the model encoding
    """

    def __init__(self, cfg: ControllerConfig, feat_dim: int, action_space: gym.Space, latent_dim: int | None = None):
        super().__init__()
        if cfg.inputs not in CONTROLLER_INPUTS:
            raise DreamerError(f"Unknown controller inputs {cfg.inputs!r}; use one of {', '.join(CONTROLLER_INPUTS)}.")
        if cfg.inputs == "z" and latent_dim is None:
            raise DreamerError("A controller on z alone (controller.inputs=z) needs the world model's latent size.")
        self.cfg = cfg
        self.feat_dim = feat_dim
        self.in_dim = latent_dim if cfg.inputs == "z" else feat_dim  # [z, h] starts with z
        self.action_space = action_space
        self.actions = ActionSpace(action_space)
        self.actions.check_policy_support()
        out = self.actions.dim
        if cfg.hidden > 0:
            self.net: nn.Module = nn.Sequential(nn.Linear(self.in_dim, cfg.hidden), nn.Tanh(),
                                                nn.Linear(cfg.hidden, out))
        else:
            self.net = nn.Linear(self.in_dim, out)
        for p in self.parameters():  # CMA-ES starts from the zero vector (the search's x0)
            nn.init.zeros_(p)
        self.requires_grad_(False)

    @classmethod
    def for_world_model(cls, cfg: ControllerConfig, world_model: WorldModelInterface) -> Controller:
        return cls(cfg, world_model.feat_dim, world_model.action_space, getattr(world_model, "latent_dim", None))

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def get_params(self) -> np.ndarray:
        """All parameters as one float64 vector ``[P]`` (what CMA-ES searches over)."""
        return nn.utils.parameters_to_vector(self.parameters()).double().cpu().numpy()

    def set_params(self, params: np.ndarray) -> None:
        params = np.asarray(params, dtype=np.float64).ravel()
        if params.size != self.num_params:
            raise DreamerError(f"The controller has {self.num_params} parameters, got a vector of {params.size}.")
        vector = torch.as_tensor(params, dtype=torch.float32, device=next(self.parameters()).device)
        nn.utils.vector_to_parameters(vector, self.parameters())

    @torch.no_grad()
    def act(self, feat: Tensor) -> Tensor:
        """Actions ``[..., A]`` in the model (= actor) encoding: one-hot argmax, tanh in [-1, 1],
        or bits."""
        out = self.net(feat[..., : self.in_dim].float())
        kind = self.actions.kind
        if kind == "discrete":
            return nn.functional.one_hot(out.argmax(-1), self.actions.dim).float()
        if kind == "box":
            return torch.tanh(out)
        return (out > 0).float()  # multibinary

    def policy(self, feat: Tensor) -> PointPolicy:
        return PointPolicy(self.act(feat))

    # --- artifacts ---------------------------------------------------------------------------

    def save(self, path: Path | str, world_model: WorldModelInterface, stage_config: dict[str, Any] | None = None,
             **meta: Any) -> None:
        """Write ``behavior.pt`` as a ``checkpoint.BehaviorArtifact`` whose ``behavior_config``
        carries ``family: "controller"`` (``meta``: update = generations, world_model_update,
        env_config, ...)."""
        behavior_config = {"family": FAMILY, "family_format": FAMILY_FORMAT, **config_lib.to_dict(self.cfg)}
        checkpoint.save(path, checkpoint.BehaviorArtifact(
            **checkpoint.spaces_json(world_model.observation_space, self.action_space),
            stage_config=stage_config or {}, behavior_config=behavior_config, weights=self.state_dict(), **meta))

    @classmethod
    def load(cls, path: Path | str, world_model: WorldModelInterface, device: str | torch.device = "cpu",
             ) -> tuple[Controller, checkpoint.BehaviorArtifact]:
        """Rebuild the controller of ``behavior.pt`` for ``world_model`` (whose spaces must fit)."""
        artifact = checkpoint.load(path, checkpoint.BehaviorArtifact, map_location=device)
        if not is_controller(artifact.behavior_config):
            raise DreamerError(f"{path} holds an actor-critic, not a controller; load it as an actor-critic.")
        artifact.check_spaces(world_model.observation_space, world_model.action_space,
                              "The world model it was loaded for", path)
        cfg = config_lib.from_dict(ControllerConfig, artifact.behavior_config)
        controller = cls.for_world_model(cfg, world_model).to(device)
        controller.load_state_dict(artifact.weights)
        return controller, artifact


def is_controller(behavior_config: dict[str, Any]) -> bool:
    """True when a ``BehaviorArtifact.behavior_config`` holds a controller."""
    return behavior_config.get("family") == FAMILY


# --- the dream --------------------------------------------------------------------------------


@torch.no_grad()
def start_states(world_model: VaeMdnWorldModel, batch: Batch, episode_starts: bool = True) -> VaeMdnState:
    """Real start states for dreams: the posterior states ``[M]`` of a batch's rows (only the
    rows that start an episode with ``episode_starts``, as the paper's dreams began from
    encoded first frames)."""
    post = world_model.observe(batch).flatten(0, 1)  # [B*T]
    if episode_starts:
        post = post[batch.is_first.flatten().to(post.z.device)]
    if post.z.shape[0] == 0:
        raise DreamerError("No start states: the batch has no episode start. Use more data, or any row as a start.")
    return post


def state_arrays(state: VaeMdnState) -> dict[str, np.ndarray]:
    """A state as NumPy arrays (what a scorer spec carries to worker processes)."""
    return {"z": state.z.cpu().numpy(), "h": state.h.cpu().numpy(), "c": state.c.cpu().numpy()}


def state_from_arrays(arrays: dict[str, np.ndarray], device: str | torch.device = "cpu") -> VaeMdnState:
    return VaeMdnState(*(torch.as_tensor(arrays[k], device=device) for k in ("z", "h", "c")))


class DreamEnv:
    """K rollouts at once inside the world model: M rolled out from real start states.

    ``reset`` draws K start states from the bank; ``step(action)`` moves each rollout one step
    with ``world_model.dream_step`` at temperature ``tau``; the reward is the mean of M's reward
    head and the rollout ends where M's continue head says terminal (``done="mode"``: where
    its probability is below 0.5; ``"sample"``: a Bernoulli draw), or after ``max_steps``.

    Shapes:
        reset(K) -> states [K]      step(action [K, A]) -> states [K], reward [K], done [K] bool
    """

    def __init__(self, world_model: VaeMdnWorldModel, start: VaeMdnState, tau: float = 1.0, done: str = "mode",
                 max_steps: int = 1000):
        if done not in DONES:
            raise DreamerError(f"Unknown dream done rule {done!r}; use one of {', '.join(DONES)}.")
        if max_steps < 1:
            raise DreamerError(f"A dream needs a step limit of at least 1 (got {max_steps}): M may never predict an end.")
        self.world_model, self.start = world_model, start
        self.tau, self.done_rule, self.max_steps = tau, done, max_steps
        self.generator: torch.Generator | None = None
        self.state: VaeMdnState | None = None
        self.steps = 0

    @torch.no_grad()
    def reset(self, num: int, generator: torch.Generator | None = None) -> VaeMdnState:
        self.generator = generator
        index = torch.randint(self.start.z.shape[0], (num,), generator=generator)
        self.state = self.start[index.to(self.start.z.device)]
        self.steps = 0
        return self.state

    def features(self) -> Tensor:
        return self.world_model.features(self.state)

    @torch.no_grad()
    def step(self, action: Tensor) -> tuple[VaeMdnState, Tensor, Tensor]:
        assert self.state is not None, "reset the dream first"
        wm = self.world_model
        self.state = wm.dream_step(self.state, action, self.tau, self.generator)
        self.steps += 1
        feat = wm.features(self.state)
        reward = wm.reward_dist(feat).mean  # [K]: the reward of arriving at the new state
        cont = wm.cont_dist(feat)
        alive = cont.mode if self.done_rule == "mode" else cont.sample(self.generator)
        done = alive < 0.5
        if self.max_steps and self.steps >= self.max_steps:
            done = torch.ones_like(done)
        return self.state, reward, done

    @torch.no_grad()
    def rollout(self, controller: Controller, num: int, generator: torch.Generator | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths ``[num]`` of ``num`` dreamed episodes under ``controller``
        (rewards count up to and including the step that ends each episode)."""
        self.reset(num, generator)
        returns = torch.zeros(num, dtype=torch.float64)
        lengths = torch.zeros(num, dtype=torch.long)
        alive = torch.ones(num, dtype=torch.bool)
        while alive.any():
            _, reward, done = self.step(controller.act(self.features()))
            returns += torch.where(alive, reward.double().cpu(), 0.0)
            lengths += alive.long()
            alive &= ~done.cpu()
        return returns.numpy(), lengths.numpy()


# --- scorers (picklable specs; each worker builds one evaluator) --------------------------------


def rollout_seed(seed: int, generation: int, index: int) -> int:
    """The seed of rollout ``index`` of a generation: the same for every candidate."""
    return int(np.random.SeedSequence([seed, generation, index]).generate_state(1)[0])


def _load_frozen(path: str, device: str = "cpu") -> VaeMdnWorldModel:
    model, _ = VaeMdnWorldModel.load(path, device)
    model.eval()
    model.requires_grad_(False)
    return model


@dataclass(frozen=True)
class RealEnvScorer:
    """Score a candidate by k episodes in the real env (see the module docstring).

    Attributes:
        world_model: path of the ``world_model.pt`` whose V and M filter the observations.
        env: the env to play (``envs.make_env``).
        rollouts: k, episodes per candidate (played side by side).
        max_steps: cap per episode (0: the env's own limit).
        seed: base of the per-generation env seeds.
        stall_steps: end an episode once its return has not risen for this many steps (0:
            never). It saves most of the time spent on bad candidates (a CarRacing car that left
            the track loses 0.1 per step until the time limit) and costs a candidate only the
            penalties it would have kept collecting; stage 04 always plays whole episodes.
    """

    world_model: str
    env: EnvConfig
    rollouts: int = 4
    max_steps: int = 0
    seed: int = 0
    stall_steps: int = 0

    def build(self, controller: ControllerConfig) -> _RealEvaluator:
        return _RealEvaluator(self, controller)


class _RealEvaluator:
    def __init__(self, spec: RealEnvScorer, controller: ControllerConfig):
        self.spec = spec
        self.world_model = _load_frozen(spec.world_model)
        self.controller = Controller.for_world_model(controller, self.world_model)
        self.envs = [make_env(spec.env) for _ in range(spec.rollouts)]
        self.keys = list(self.world_model.observation_space.spaces)

    def close(self) -> None:
        for env in self.envs:
            env.close()

    @torch.no_grad()
    def evaluate(self, params: np.ndarray, generation: int) -> list[float]:
        spec, wm, K = self.spec, self.world_model, len(self.envs)
        self.controller.set_params(params)
        seeds = [rollout_seed(spec.seed, generation, i) for i in range(K)]
        obs = [env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)]
        generator = torch.Generator().manual_seed(rollout_seed(spec.seed, generation, NOISE_STREAM))
        state = wm.initial_state(K)
        last = torch.zeros(K, wm.actions.dim)
        first = torch.ones(K, dtype=torch.bool)
        alive = np.ones(K, bool)
        returns = np.zeros(K)
        best, since_best = np.full(K, -np.inf), np.zeros(K, int)  # the stall rule's record per episode
        steps = 0
        while alive.any() and not (spec.max_steps and steps >= spec.max_steps):
            current = {k: torch.as_tensor(np.stack([np.asarray(o[k]) for o in obs])) for k in self.keys}
            current = {k: v if v.dtype == torch.uint8 else v.float() for k, v in current.items()}
            state = wm.step(state, last, current, first, generator)
            action = self.controller.act(wm.features(state))  # [K, A]
            env_actions = wm.actions.to_env(action)
            for i in np.flatnonzero(alive):
                obs[i], reward, terminated, truncated, _ = self.envs[i].step(env_actions[i])
                returns[i] += float(reward)
                alive[i] = not (terminated or truncated)
                if returns[i] > best[i]:
                    best[i], since_best[i] = returns[i], 0
                else:
                    since_best[i] += 1
                if spec.stall_steps and since_best[i] >= spec.stall_steps:
                    alive[i] = False
            last, first = action, torch.zeros(K, dtype=torch.bool)
            steps += 1
        return returns.tolist()


@dataclass(frozen=True)
class DreamScorer:
    """Score a candidate by k rollouts inside the dream (``DreamEnv``).

    Attributes:
        world_model: path of the ``world_model.pt`` (V + M) to dream in.
        start: the start states as arrays (``state_arrays(start_states(...))``).
        rollouts: k, dreams per candidate.
        max_steps: length cap of a dream.
        tau: M's temperature (the paper: above 1 makes the dream harder to exploit).
        done: ``mode`` | ``sample`` (see ``DreamEnv``).
        seed: base of the per-generation dream seeds.
    """

    world_model: str
    start: dict[str, np.ndarray] = field(repr=False)
    rollouts: int = 16
    max_steps: int = 1000
    tau: float = 1.0
    done: str = "mode"
    seed: int = 0

    def build(self, controller: ControllerConfig) -> _DreamEvaluator:
        return _DreamEvaluator(self, controller)


class _DreamEvaluator:
    def __init__(self, spec: DreamScorer, controller: ControllerConfig):
        self.spec = spec
        self.world_model = _load_frozen(spec.world_model)
        self.controller = Controller.for_world_model(controller, self.world_model)
        self.env = DreamEnv(self.world_model, state_from_arrays(spec.start), spec.tau, spec.done, spec.max_steps)

    def close(self) -> None:
        pass

    def evaluate(self, params: np.ndarray, generation: int) -> list[float]:
        self.controller.set_params(params)
        generator = torch.Generator().manual_seed(rollout_seed(self.spec.seed, generation, NOISE_STREAM))
        returns, _ = self.env.rollout(self.controller, self.spec.rollouts, generator)
        return returns.tolist()


_WORKER: dict[str, Any] = {}


class _NormalSource:
    """CMA-ES's ``randn(*shape)``: standard normals from a generator of the search's own."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def __call__(self, *shape: int) -> np.ndarray:
        return self.rng.standard_normal(shape)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextlib.contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Start worker processes with one OpenMP / BLAS thread from their first instruction.

    Candidates already run in parallel processes. A worker whose libraries start with several
    threads keeps thread teams whose barriers wait on descheduled threads: on a busy machine
    (another process on both cores) a CartPole-from-pixels search with 2 workers, started with
    ``OMP_NUM_THREADS=2``, spent minutes per generation in OpenMP barrier waits (seen in the
    workers' stacks) instead of seconds. ``torch.set_num_threads(1)`` in the worker comes after
    the libraries read their settings, so the variables are set while the workers start.
    """
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: "1" for k in THREAD_VARIABLES})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _init_worker(scorer: RealEnvScorer | DreamScorer, controller: ControllerConfig, parent: int) -> None:
    torch.set_num_threads(1)  # candidates run in parallel processes; threads inside them only contend
    _exit_with_parent(parent)
    _WORKER["evaluator"] = scorer.build(controller)


def _exit_with_parent(parent: int, seconds: float = 1.0) -> None:
    """End this worker when the search process ``parent`` is gone (``kill -9`` of it alone would
    otherwise leave the workers waiting on their task queue for ever): a daemon thread polls the
    parent pid. ``parent`` comes from the search process itself, so a worker that starts after
    its parent died (spawning takes seconds on a loaded machine) ends at once."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _evaluate_in_worker(params: np.ndarray, generation: int) -> list[float]:
    return _WORKER["evaluator"].evaluate(params, generation)


# --- the search -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchConfig:
    """CMA-ES settings (the paper, CarRacing: population 64, 16 rollouts per candidate, initial
    step size 0.1, starting from zero parameters).

    ``workers``: processes scoring candidates (0: one per CPU; 1: in this process, no pool).
    ``start_method``: how worker processes start (``spawn`` is safe everywhere; ``fork`` starts
    faster but must not follow threads or CUDA in the parent).
    """

    population: int = 16
    sigma: float = 0.1
    workers: int = 0
    start_method: str = "spawn"
    diagonal: bool = False  # separable CMA-ES (diagonal covariance) for large controllers
    seed: int = 0
    # What behavior.pt holds: best (the best-scoring candidate so far) | mean (CMA-ES's
    # distribution mean, which noisy scores of a few rollouts overrate less). Not part of the
    # search: a resume may change it.
    keep: str = "best"


KEEP = ("best", "mean")


@dataclass
class GenerationRecord:
    """One generation's scores (mean returns of the candidates)."""

    generation: int
    best: float
    mean: float
    worst: float
    std: float
    best_ever: float
    seconds: float

    def metrics(self, prefix: str = "cma/") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in self.__dict__.items() if k != "generation"}


class ControllerSearch:
    """CMA-ES over a controller's parameters; see the module docstring.

    Use as a context manager (the worker pool lives until ``close``)::

        with ControllerSearch(cfg, controller, scorer) as search:
            search.run(generations, on_generation=lambda s, rec: s.save_checkpoint(...))
    """

    def __init__(self, cfg: SearchConfig, controller: Controller, scorer: RealEnvScorer | DreamScorer,
                 state: dict[str, Any] | None = None):
        if cfg.population < 2:
            raise DreamerError(f"The CMA-ES population must be at least 2 (got {cfg.population}).")
        if cfg.start_method not in START_METHODS:
            raise DreamerError(f"Unknown start method {cfg.start_method!r}; use one of {', '.join(START_METHODS)}.")
        self.cfg, self.controller, self.scorer = cfg, controller, scorer
        self._pool: Executor | None = None
        self._local: Any = None
        if state is not None:
            self.load_state_dict(state)
            return
        self.generation = 0
        self.best_score = -float("inf")
        self.best_params = controller.get_params()
        self.history: list[dict[str, float]] = []
        self._np_state = np.random.RandomState(cfg.seed).get_state()
        options = {"popsize": cfg.population, "seed": float("nan"), "verbose": -9, "verb_log": 0,
                   "verb_disp": 0, "CMA_diagonal": bool(cfg.diagonal), "randn": _NormalSource(cfg.seed)}
        import cma  # here, not at the top: cma imports scipy (about 1 s), which no other command needs

        with self._cma_random():
            self.es = cma.CMAEvolutionStrategy(controller.get_params(), cfg.sigma, options)

    # --- randomness ------------------------------------------------------------------------------
    # CMA-ES samples its candidates from the ``randn`` option: a generator of its own
    # (_NormalSource), pickled with it. Its other draws use NumPy's global generator, which runs
    # on a stream of the search's own inside every CMA-ES call (and its pickling: a pickled
    # reference to a global NumPy function carries a copy of the global state).

    @contextlib.contextmanager
    def _cma_random(self) -> Iterator[None]:
        outside = np.random.get_state()
        np.random.set_state(self._np_state)
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            np.random.set_state(outside)

    # --- evaluation ----------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        return self.cfg.workers or os.cpu_count() or 1

    def _evaluator(self) -> Callable[[list[np.ndarray], int], list[list[float]]]:
        if self.workers <= 1:
            if self._local is None:
                self._local = self.scorer.build(self.controller.cfg)
            return lambda candidates, gen: [self._local.evaluate(x, gen) for x in candidates]
        if self._pool is None:
            context = multiprocessing.get_context(self.cfg.start_method)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker,
                                             initargs=(self.scorer, self.controller.cfg, os.getpid()))
        pool = self._pool

        def evaluate(candidates: list[np.ndarray], generation: int) -> list[list[float]]:
            with _single_threaded_children():  # the pool starts its workers while tasks are submitted
                futures = [pool.submit(_evaluate_in_worker, x, generation) for x in candidates]
            return [f.result() for f in futures]

        return evaluate

    def evaluate(self, candidates: list[np.ndarray], generation: int | None = None) -> list[list[float]]:
        """Returns of every rollout of every candidate ``[P][k]`` (``generation`` picks the seeds;
        default: the current generation's)."""
        generation = self.generation if generation is None else generation
        return self._evaluator()(candidates, generation)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        if self._local is not None:
            self._local.close()
            self._local = None

    def __enter__(self) -> ControllerSearch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the loop ------------------------------------------------------------------------------

    def step(self) -> GenerationRecord:
        """One generation: ask, score (mean over the k rollouts), tell; the best ever is kept."""
        start = time.monotonic()
        with self._cma_random():
            candidates = self.es.ask()
        scores = np.array([np.mean(r) for r in self.evaluate(candidates)])
        with self._cma_random():
            self.es.tell(candidates, (-scores).tolist())  # CMA-ES minimises
        top = int(np.argmax(scores))
        if scores[top] > self.best_score:
            self.best_score, self.best_params = float(scores[top]), np.array(candidates[top])
        self.generation += 1
        record = GenerationRecord(self.generation, float(scores.max()), float(scores.mean()), float(scores.min()),
                                  float(scores.std()), self.best_score, time.monotonic() - start)
        self.history.append(record.__dict__.copy())
        return record

    def run(self, generations: int, on_generation: Callable[[ControllerSearch, GenerationRecord], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[GenerationRecord]:
        """Run until ``generations`` generations in total (counting those before a resume).
        ``on_generation`` runs after each one (checkpoint, log); ``should_stop`` ends the run
        early between generations (a stop request)."""
        records = []
        while self.generation < generations and not (should_stop and should_stop()):
            record = self.step()
            records.append(record)
            if on_generation is not None:
                on_generation(self, record)
        return records

    @property
    def mean_params(self) -> np.ndarray:
        """The search distribution's mean (CMA-ES's estimate of the optimum)."""
        return np.array(self.es.mean)

    @property
    def kept_params(self) -> np.ndarray:
        """The parameters the search hands out (``cfg.keep``): the best candidate or the mean."""
        return self.mean_params if self.cfg.keep == "mean" else np.array(self.best_params)

    # --- state -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed search needs (plain Python / NumPy objects)."""
        with self._cma_random():
            blob = pickle.dumps(self.es)
        return {"cma": blob, "numpy_random": self._np_state, "generation": self.generation,
                "best_score": self.best_score, "best_params": np.array(self.best_params),
                "history": [dict(h) for h in self.history], "num_params": self.controller.num_params}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_params"] != self.controller.num_params:
            raise DreamerError(
                f"The saved search is over {state['num_params']} controller parameters, but this controller has "
                f"{self.controller.num_params}: resume with the controller settings the search started with.")
        self._np_state = state["numpy_random"]
        with self._cma_random():
            self.es = pickle.loads(state["cma"])
        self.generation = int(state["generation"])
        self.best_score = float(state["best_score"])
        self.best_params = np.array(state["best_params"])
        self.history = [dict(h) for h in state["history"]]

    def save_checkpoint(self, path: Path | str, observation_space: gym.spaces.Dict,
                        stage_config: dict[str, Any] | None = None, run_id: str = "", **counters: Any) -> None:
        """Write the search state as a ``checkpoint.TrainState`` (atomically): the search in
        ``optimizers["cma"]``, the controller set to the best candidate in ``modules``, and
        ``counters`` (generation, best score, and e.g. the world model's update) beside it."""
        self.controller.set_params(self.best_params)
        checkpoint.save(path, checkpoint.TrainState(
            **checkpoint.spaces_json(observation_space, self.controller.action_space),
            stage_config=stage_config or {}, stage=STAGE, run_id=run_id,
            modules={"controller": self.controller.state_dict()}, optimizers={"cma": self.state_dict()},
            counters={"generation": self.generation, "best_score": self.best_score, **counters}))

    @staticmethod
    def load_checkpoint(path: Path | str) -> tuple[dict[str, Any], checkpoint.TrainState]:
        """The search state (for ``ControllerSearch(..., state=)``) and the TrainState around it."""
        train_state = checkpoint.load(path, checkpoint.TrainState)
        if train_state.stage != STAGE or "cma" not in train_state.optimizers:
            raise DreamerError(f"{path} is a {train_state.stage or 'unknown'} resume state, not a controller search.")
        return train_state.optimizers["cma"], train_state
