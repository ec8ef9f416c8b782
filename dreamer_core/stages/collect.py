"""Stage 01: run a policy in K environments and write the rollouts as a dataset.

    dreamer collect --env CartPole-v1 --out data/cartpole --steps 20000 --num-envs 2

The loop steps an EnvPool (autoreset on the step after an episode ends), asks the policy for
K actions at once, and records each env's rows with an EpisodeRecorder. Finished episodes go
to the DatasetWriter, which closes a shard every few episodes or seconds, so a killed
collector loses little. Ctrl-C or SIGTERM ends collection early but keeps everything
collected, including the episodes in progress (written as truncated); the command then exits
with code 130.

Decoupled collectors (``--follow``) keep collecting with the newest agent of a run that is
still training, into a dataset that others write into too (usually the run's own replay)::

    dreamer collect --env CartPole-v1 --policy runs/x --follow --out runs/x/replay

- The run replaces ``world_model.pt`` and then ``behavior.pt`` (each atomically) as it trains.
  Whenever an episode ends and ``poll_seconds`` have passed, the collector compares the two
  files' stat (``runs.agent_stamp``); when they changed it loads the new agent, and each env
  takes it at its next episode start (``policies.PolicySwitch``: no episode mixes two agents).
  A ``behavior.pt`` that does not match the ``world_model.pt`` beside it (a write in
  progress, or a world model trained further whose behavior is not yet) keeps the current
  agent; the collector tries again once the files change. No reload problem stops it.
- Before the run has an agent, the collector waits, printing what it waits for; nothing is
  written until the first agent is loaded (so it never creates the run's directory).
- Every episode is stored with the checkpoint that played it (``schema.PolicyVersion``:
  ``behavior.pt``'s update counter, the world model's, and a digest of the file), read back
  as ``Dataset.refs[i].policy``; the progress line shows the newest, the summary counts the
  episodes of each.
- A dataset that exists must have the same spaces, env id and env options; shard names never
  collide (data/writer.py), so any number of collectors and the run's writer can share it.
- No budget (``--steps 0``, the default with ``--follow``): until SIGINT or SIGTERM, which keep
  everything collected as without ``--follow``. ``kill -9`` loses the open shard and the
  episodes in progress, nothing else.
- Seeds: env i of a collector is seeded ``seed + i``, so collectors given ``--seed`` need seeds
  at least ``--num-envs`` apart (and apart from the learner's own envs). Without ``--seed``, a
  ``--follow`` collector draws its seed from the OS (printed, and stored in its shards), so
  collectors started with the same command never play the same episodes.

Imports: envs, data, policies, config, logging, runs, and the stage kit (stages.common: stop
requests; stages.outputs: the --out check).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dreamer_core import config as config_lib
from dreamer_core.data.schema import PolicyVersion
from dreamer_core.data.writer import (
    COMPRESSIONS,
    DatasetWriter,
    EpisodeRecorder,
    prepare_output_dir,
)
from dreamer_core.envs import EnvConfig, make_env_pool
from dreamer_core.envs.pool import BACKENDS
from dreamer_core.errors import DreamerError
from dreamer_core.logging import ProgressDisplay
from dreamer_core.policies import PolicySwitch
from dreamer_core.runs import (
    AgentChangedError,
    AgentMismatchError,
    AgentNotReady,
    AgentStamp,
    RunPolicy,
    agent_stamp,
    load_policy,
    load_run_policy,
)
from dreamer_core.stages.common import StopRequest
from dreamer_core.stages.outputs import check_writable


@dataclass(frozen=True)
class CollectConfig:
    """Everything `dreamer collect` needs.

    ``steps`` counts env steps (transitions) over all envs; ``episodes`` counts finished
    episodes. Exactly one of them is positive, or (``follow``) none: until stopped.
    ``follow``: keep collecting with the newest agent of the run ``policy``, checking its
    files every ``poll_seconds`` (see the module docstring).
    """

    out: str
    env: EnvConfig = field(default_factory=lambda: EnvConfig(id="CartPole-v1"))
    steps: int = 10_000
    episodes: int = 0
    num_envs: int = 1
    seed: int | None = 0
    policy: str = "random"
    backend: str = "auto"
    shard_episodes: int = 1000
    shard_seconds: float = 60.0
    compression: str = "lzf"
    device: str = "auto"
    follow: bool = False
    poll_seconds: float = 5.0


@dataclass
class CollectResult:
    steps: int
    episodes: int
    returns: list[float]
    seconds: float
    shards: int
    out: str
    interrupted: bool = False
    # episodes stored per agent checkpoint (None: the random policy), in the order first used
    policies: dict[PolicyVersion | None, int] = field(default_factory=dict)
    reloads: int = 0  # agents loaded after the first (--follow)
    cut: int = 0  # episodes in progress at the end, stored as truncated (not in ``episodes``)

    @property
    def steps_per_second(self) -> float:
        return self.steps / max(self.seconds, 1e-9)

    def summary_line(self) -> str:
        if self.returns:
            r = np.asarray(self.returns)
            ret = f"return mean {r.mean():.2f} (min {r.min():.2f}, max {r.max():.2f})"
        else:
            ret = "no finished episode"
        stop = " [interrupted]" if self.interrupted else ""
        agents = [v for v in self.policies if v is not None]
        agent = ""
        if agents:
            updates = sorted({v.update for v in agents})
            span = f"update {updates[0]}" if len(updates) == 1 else f"updates {updates[0]}..{updates[-1]}"
            agent = f", agent {span} ({len(agents)} checkpoint{'s' if len(agents) > 1 else ''})"
        cut = f" + {self.cut} cut at the end (stored, truncated)" if self.cut else ""
        return (
            f"collected {self.steps} steps, {self.episodes} episodes{cut}, {ret}, "
            f"{self.steps_per_second:,.0f} env steps/s{agent} -> {self.out} ({self.shards} shards){stop}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "episodes": self.episodes, "cut_episodes": self.cut, "seconds": self.seconds,
            "steps_per_second": self.steps_per_second, "shards": self.shards, "out": self.out,
            "return_mean": float(np.mean(self.returns)) if self.returns else None,
            "interrupted": self.interrupted, "reloads": self.reloads,
            "policies": [{**(dataclasses.asdict(v) if v is not None else {"random": True}), "episodes": n}
                         for v, n in self.policies.items()],
        }


FLAGS = {"steps": "--steps", "episodes": "--episodes", "num_envs": "--num-envs", "backend": "--backend",
         "shard_episodes": "--shard-episodes", "shard_seconds": "--shard-seconds", "compression": "--compression",
         "device": "--device", "policy": "--policy", "follow": "--follow", "poll_seconds": "poll_seconds"}


def validate(cfg: CollectConfig) -> None:
    """Every problem of a resolved config in one DreamerError (see ``config_lib.Problems``)."""
    p = config_lib.Problems("collect", FLAGS)
    if cfg.steps < 0 or cfg.episodes < 0:
        p.add(f"--steps and --episodes cannot be negative (got steps={cfg.steps}, episodes={cfg.episodes})")
    elif cfg.follow and cfg.steps > 0 and cfg.episodes > 0:
        p.add(f"give at most one budget with --follow: --steps N or --episodes N, or none to collect until "
              f"stopped (got steps={cfg.steps}, episodes={cfg.episodes})")
    elif not cfg.follow and (cfg.steps > 0) == (cfg.episodes > 0):
        p.add(f"give exactly one budget: --steps N or --episodes N (got steps={cfg.steps}, episodes={cfg.episodes}; "
              "0 for both, until stopped, needs --follow)")
    if cfg.follow and cfg.policy.strip() in ("random", "smooth-random"):
        p.add("--follow keeps collecting with the newest agent of a run that is training: give --policy RUN "
              "(the run directory of `dreamer train --out RUN` or of stages 02 and 03), not a random policy")
    p.positive("poll_seconds", cfg.poll_seconds)
    p.at_least("num_envs", cfg.num_envs, 1)
    p.at_least("shard_episodes", cfg.shard_episodes, 1)
    p.positive("shard_seconds", cfg.shard_seconds)
    p.one_of("compression", cfg.compression, COMPRESSIONS)
    p.one_of("backend", cfg.backend, BACKENDS)
    p.device("device", cfg.device)
    p.require(bool(cfg.policy.strip()), "--policy is empty: give 'random', 'smooth-random' or a run directory")
    p.raise_any()


def run(cfg: CollectConfig, progress: bool = True) -> CollectResult:
    """Collect until the step or episode budget is reached (or, with ``follow`` and no budget,
    until stopped); return what was written."""
    validate(cfg)
    out_exists = Path(cfg.out).exists()
    if out_exists or not cfg.follow:  # a follower probes a missing --out once the run has an agent
        check_writable(cfg.out, f"--out {cfg.out}")
    pool = make_env_pool(cfg.env, num_envs=cfg.num_envs, seed=cfg.seed, backend=cfg.backend)
    try:
        with StopRequest() as stop:
            if cfg.follow:
                if out_exists:
                    check_follow_dataset(cfg, pool.observation_space, pool.action_space)
                follower = Follower(cfg, pool.observation_space, pool.action_space)
                first = follower.wait(stop)
                if first is None:  # stopped while waiting: nothing was written
                    return CollectResult(0, 0, [], 0.0, 0, str(cfg.out), interrupted=True)
                if not out_exists:
                    check_writable(cfg.out, f"--out {cfg.out}")
                policy: Any = PolicySwitch(first.policy, cfg.num_envs)
                policy.name = f"follow:{cfg.policy}"
            else:
                follower = None
                policy = load_policy(
                    cfg.policy, pool.observation_space, pool.action_space, cfg.num_envs, seed=cfg.seed,
                    device=cfg.device
                )
            writer = DatasetWriter(
                cfg.out,
                env_id=cfg.env.id,
                env_config=cfg.env.to_dict(),
                observation_space=pool.observation_space,
                action_space=pool.action_space,
                policy=policy.name,
                seed=cfg.seed,
                shard_episodes=cfg.shard_episodes,
                shard_seconds=cfg.shard_seconds,
                compression=cfg.compression,
            )
            with writer:
                return _loop(cfg, pool, policy, writer, progress, stop, follower)
    finally:
        pool.close()


def check_follow_dataset(cfg: CollectConfig, observation_space, action_space) -> None:
    """An existing --out that a follower adds to must hold data of the same env, spaces and env
    options (usually the run's own replay); raise a DreamerError saying what differs."""
    shards = prepare_output_dir(Path(cfg.out), observation_space, action_space)  # spaces; changes nothing
    if not shards:
        return
    same_id = [s for s in shards if s.env_id == cfg.env.id]
    fix = ("Nothing was written. Collect with the env options the run trains with (the same --env, --pixels, "
           "--size, --action-repeat, --time-limit ... as `dreamer train`), or write to another --out.")
    if not same_id:
        raise DreamerError(
            f"The dataset {cfg.out} holds data of env {', '.join(sorted({s.env_id for s in shards}))}, but this "
            f"collector plays {cfg.env.id}; a follower adds to a run's replay, which holds one env. {fix}"
        )
    ours = json.loads(json.dumps(cfg.env.to_dict()))  # as a shard stores it
    theirs = same_id[-1].env_config
    differ = sorted(k for k in set(ours) | set(theirs) if k != "env_module" and ours.get(k) != theirs.get(k))
    if differ:
        pairs = ", ".join(f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in differ)
        raise DreamerError(f"The dataset {cfg.out} was collected with other options of env {cfg.env.id}: {pairs}. {fix}")


class Follower:
    """Loads the newest agent of the run a --follow collector follows (see the module docstring).

    ``wait`` blocks until the run has an agent; ``poll`` (called when an episode ended) loads a
    new one when the run's files changed and offers it to the policy switch."""

    WAIT_LINE_SECONDS = 60.0  # repeat the waiting status this often

    def __init__(self, cfg: CollectConfig, observation_space, action_space, clock=time.monotonic):
        self.cfg, self.run = cfg, Path(cfg.policy)
        self.spaces = (observation_space, action_space)
        self.clock = clock
        self.current: RunPolicy | None = None
        self.loaded = 0  # agents loaded so far
        self._failed: AgentStamp | None = None  # files that could not be loaded (retried when they change)
        self._failure = ""
        self._next_poll = -float("inf")

    def _load(self) -> RunPolicy:
        seed = self.cfg.seed
        if seed is not None and self.loaded:  # each agent samples from its own stream
            seed = int(np.random.SeedSequence([seed, self.loaded]).generate_state(1)[0])
        return load_run_policy(self.run, *self.spaces, self.cfg.num_envs, seed=seed, device=self.cfg.device)

    def wait(self, stop: StopRequest) -> RunPolicy | None:
        """The run's agent, once it has one; None if a stop was requested first. Refusals that
        waiting cannot fix (spaces that do not fit the env) raise."""
        said, said_at = "", -float("inf")
        failed: AgentStamp | None = None  # files that did not load: loaded again only once they change
        while not stop.requested:
            stamp = agent_stamp(self.run)
            try:
                if stamp is not None and stamp == failed:
                    raise AgentNotReady(said)
                self.current = self._load()
            except AgentNotReady as exc:
                if stamp is not None and not isinstance(exc, AgentChangedError):
                    failed = stamp
                now, reason = self.clock(), _reason(exc)
                if reason != said or now - said_at >= self.WAIT_LINE_SECONDS:
                    notice(f"collect --follow: waiting for an agent in {self.run}: {reason} Checking every "
                           f"{self.cfg.poll_seconds:g} s; Ctrl-C to give up.")
                    said, said_at = reason, now
                _sleep(self.cfg.poll_seconds, stop)
                continue
            self.loaded += 1
            notice(f"collect --follow: acting with the agent of {self.run} at {self.current.version}.")
            self._next_poll = self.clock() + self.cfg.poll_seconds
            return self.current
        return None

    def poll(self, switch: PolicySwitch) -> bool:
        """When due and the run's agent files changed: load the new agent and offer it to
        ``switch``. Returns whether a new agent was offered; never raises (a failure keeps the
        current agent and is tried again when the files change)."""
        now = self.clock()
        if now < self._next_poll:
            return False
        self._next_poll = now + self.cfg.poll_seconds
        stamp = agent_stamp(self.run)
        assert self.current is not None
        if stamp is None or stamp == self.current.stamp or stamp == self._failed:
            return False
        try:
            loaded = self._load()
        except Exception as exc:  # a write in progress, or anything else: keep acting
            self._failed = stamp
            reason = _reason(exc)
            if isinstance(exc, AgentChangedError):
                self._failed = None  # caught mid-write: the next poll sees settled files
            elif reason != self._failure:
                notice(f"collect --follow: keeping the agent at update {self.current.version.update}: {reason}")
            self._failure = reason
            return False
        self._failed, self._failure = None, ""
        if loaded.version == self.current.version:  # rewritten, unchanged
            self.current = loaded
            return False
        self.current = loaded
        self.loaded += 1
        switch.offer(loaded.policy)
        notice(f"collect --follow: new agent at {loaded.version}; each env takes it at its next episode.")
        return True


def _reason(exc: BaseException) -> str:
    """Why a run's agent could not be loaded, in one line (for a follower's status)."""
    if isinstance(exc, AgentMismatchError):
        return (f"its behavior.pt was trained against world model update {exc.trained_against}, but its "
                f"world_model.pt is at update {exc.world_model_update} (a write in progress, or a world model "
                "trained further whose behavior is not trained yet).")
    return " ".join(str(exc).split())


def notice(text: str) -> None:
    """A status line on stderr (above the progress bar in a terminal)."""
    print(text, file=sys.stderr, flush=True)


def _sleep(seconds: float, stop: StopRequest) -> None:
    deadline = time.monotonic() + seconds
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))


class _UntilStopped(ProgressDisplay):
    """The progress display of a collector without a budget: no target, no share, no ETA."""

    def line(self) -> str:
        minutes, seconds = divmod(int(time.monotonic() - self._start), 60)
        parts = [f"{self.description} {self.count} steps", self.status, f"{minutes}m{seconds:02d}s"]
        return " | ".join(part for part in parts if part)


def _loop(
    cfg: CollectConfig, pool, policy, writer: DatasetWriter, progress: bool, stop: StopRequest,
    follower: Follower | None = None,
) -> CollectResult:
    obs = pool.reset(seed=cfg.seed)
    recorder = EpisodeRecorder(pool.observation_space, pool.action_space, obs)
    steps = episodes = 0
    returns: list[float] = []
    recent: deque[float] = deque(maxlen=100)
    played: Counter[PolicyVersion | None] = Counter()

    def version_of(env: int) -> PolicyVersion | None:
        """The agent checkpoint playing env ``env``'s episode (None: the random policy)."""
        source = policy.policy_of(env) if isinstance(policy, PolicySwitch) else policy
        return getattr(source, "version", None)

    def store_episode(env: int, episode) -> None:
        version = version_of(env)
        writer.add_episode(episode, version)
        played[version] += 1

    until_stopped = cfg.steps == 0 and cfg.episodes == 0
    by_steps = cfg.steps > 0 or until_stopped
    target = cfg.steps if cfg.steps > 0 else cfg.episodes
    start = time.perf_counter()
    if until_stopped:
        bar: ProgressDisplay = _UntilStopped(None, f"collect {cfg.env.id}", enabled=progress)  # type: ignore[arg-type]
    else:
        bar = ProgressDisplay(target, f"collect {cfg.env.id}", enabled=progress)
    with bar:
        while (until_stopped or (steps if by_steps else episodes) < target) and not stop.requested:
            actions = policy.act(obs, recorder.is_first)
            obs, reward, terminated, truncated = pool.step(actions)
            # A step budget reached mid-batch drops the batch's extra steps; an episode budget
            # keeps the first episodes to finish (in env order).
            added, finished = recorder.record(actions, obs, reward, terminated, truncated,
                                              limit=cfg.steps - steps if cfg.steps > 0 else None)
            steps += added
            if cfg.episodes > 0:
                finished = finished[: cfg.episodes - episodes]
            for env, episode in zip(recorder.finished_envs, finished):
                store_episode(env, episode)
                returns.append(episode.ret)
                recent.append(episode.ret)
                episodes += 1
            if finished and follower is not None:
                follower.poll(policy)  # between episodes: the envs that just ended take a new agent
            writer.maybe_close_shard()
            if bar.due():
                rate = steps / max(time.perf_counter() - start, 1e-9)
                mean = f"{np.mean(recent):.1f}" if recent else "-"
                agent = f" | agent update {follower.current.version.update}" if follower and follower.current else ""
                bar.update(
                    steps if by_steps else episodes,
                    f"{rate:,.0f} steps/s | episodes {episodes} | return {mean}{agent}",
                )
        bar.update(steps if by_steps else episodes, f"episodes {episodes}", force=True)
    interrupted = stop.requested
    cut = 0
    if by_steps or interrupted:
        # Keep the episodes in progress: they are real data, cut by the collector (a truncation).
        for env, episode in recorder.in_progress_items():
            store_episode(env, episode)
            cut += 1
    seconds = time.perf_counter() - start
    writer.close()
    return CollectResult(steps, episodes, returns, seconds, len(writer.shards), str(cfg.out), interrupted,
                         dict(played), max(follower.loaded - 1, 0) if follower else 0, cut)


def make_config(out: str, presets: list[str], sets: list[str], flags: dict[str, Any]) -> CollectConfig:
    """Resolve a CollectConfig: defaults, then presets in order, then the flags the user gave
    (dotted keys; None means not given), then ``--set`` overrides."""
    flags = dict(flags)
    if flags.get("episodes") is not None and flags.get("steps") is None:
        flags["steps"] = 0  # --episodes N alone replaces the default step budget
    cfg = config_lib.resolve(CollectConfig(out=out), "collect", presets, flags, sets)
    if cfg.follow:
        # What nobody set (no flag, file, preset or --set) comes out differently from other
        # defaults: a follower then collects until stopped, with a seed of its own.
        other = config_lib.resolve(CollectConfig(out=out, steps=cfg.steps + 1, seed=(cfg.seed or 0) + 1),
                                   "collect", presets, flags, sets)
        if other.steps != cfg.steps and cfg.episodes == 0:
            cfg = dataclasses.replace(cfg, steps=0)
        if other.seed != cfg.seed:
            cfg = dataclasses.replace(cfg, seed=secrets.randbelow(2**31 - 2**16))  # room for seed + i
            notice(f"collect --follow: no --seed given, seeding this collector's envs with {cfg.seed} (from the OS).")
    validate(cfg)
    return cfg
