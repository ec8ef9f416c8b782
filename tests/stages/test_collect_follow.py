"""`dreamer collect --follow`: decoupled collectors feeding a run's replay while the run trains.

Two collectors write into one dataset at once through the real CLI, the run's weights are
rewritten under them (world model first, a pause, then the behavior, as a training run does),
and each episode records the checkpoint that played it. Also: kill -9, waiting for a run's first
agent, the refusals, and the parts (policy switch, per-episode columns, shard names, manifest)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from dreamer_core import checkpoint
from dreamer_core.cli import app
from dreamer_core.data import schema, store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.envs.dummy import DummyDiscrete
from dreamer_core.policies import PolicySwitch
from dreamer_core.stages import collect
from tests.common import make_episode

TOY = "dreamer/DummyDiscrete-v0"
TWIN = "dreamer/DummyDiscreteTwin-v0"  # the same spaces under another id
runner = CliRunner()


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A tiny run with an agent (stages 02 and 03) whose replay already holds the run's own data."""
    root = tmp_path_factory.mktemp("follow")
    assert dreamer("collect", "--env", TOY, "--out", root / "ds", "--steps", 300, "-q").exit_code == 0
    for args in (["train-world-model", root / "ds", "--out", root / "run", "--updates", 2],
                 ["train-behavior", "--run", root / "run", "--updates", 2]):
        result = dreamer(*args, "--preset", "tiny", "-q")
        assert result.exit_code == 0, result.output
    assert dreamer("collect", "--env", TOY, "--out", root / "run" / "replay", "--steps", 60, "--seed", 9,
                   "-q").exit_code == 0
    return root / "run"


def publish(run: Path, pause: float = 0.0, bump: int = 10) -> int:
    """Rewrite the run's agent as a training run does: world_model.pt, then (``pause`` later)
    behavior.pt trained against it. Returns the new behavior update."""
    world_model = checkpoint.load(run / "world_model.pt", checkpoint.WorldModelArtifact)
    world_model.update += bump
    checkpoint.save(run / "world_model.pt", world_model)
    time.sleep(pause)  # a follower polling now sees a behavior that does not match: it keeps its agent
    behavior = checkpoint.load(run / "behavior.pt", checkpoint.BehaviorArtifact)
    behavior.update += bump
    behavior.world_model_update = world_model.update
    checkpoint.save(run / "behavior.pt", behavior)
    return behavior.update


def start_follower(run: Path, out: Path, seed: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dreamer_core", "collect", "--env", TOY, "--policy", str(run), "--follow",
         "--out", str(out), "--seed", str(seed), "--shard-episodes", "5", "--shard-seconds", "0.5",
         "--set", "poll_seconds=0.2", "--device", "cpu", "-q", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def episodes_by_seed(out: Path) -> dict[int, list]:
    """The policy version of every stored episode, per collector (its seed), in shard order."""
    found: dict[int, list] = {}
    for shard in store.scan(out)[0]:
        found.setdefault(shard.seed, []).extend(shard.policies())
    return found


def wait_until(condition, procs, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(f"collector exited {proc.returncode}: {proc.stderr.read()}")
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[str, str]:
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=60)
    return out, err


def episode_key(episode) -> str:
    digest = hashlib.sha256(episode.action.tobytes())
    for key in sorted(episode.obs):
        digest.update(episode.obs[key].tobytes())
    return digest.hexdigest()


# --- through the CLI, several processes -----------------------------------------------------------


def test_two_followers_share_the_replay_reload_new_weights_and_lose_nothing(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    replay = run / "replay"
    before = {p.name: p.stat().st_mtime_ns for p in store.shard_paths(replay)}  # the run's own shards
    first = checkpoint.load(run / "behavior.pt", checkpoint.BehaviorArtifact).update
    a = start_follower(run, replay, 1000, "--num-envs", "2")
    b = start_follower(run, replay, 2000)
    try:
        wait_until(lambda: all(len(episodes_by_seed(replay).get(s, [])) >= 5 for s in (1000, 2000)), (a, b))
        new = publish(run, pause=1.5)

        def both_reloaded() -> bool:
            found = episodes_by_seed(replay)
            return all(any(v is not None and v.update == new for v in found.get(s, [])) for s in (1000, 2000))

        wait_until(both_reloaded, (a, b))
    finally:
        outputs = [stop(proc) for proc in (a, b)]
    for proc, (_, err) in zip((a, b), outputs):
        assert proc.returncode == 130, err  # stopped by SIGTERM, everything kept
        assert "Traceback" not in err
        assert "new agent at update" in err
    assert any("keeping the agent at update" in err and "a write in progress" in err for _, err in outputs)

    ds = Dataset(replay)
    assert not store.partial_paths(replay)  # both closed their open shards
    for name, mtime in before.items():  # the run's own shards are untouched
        assert (replay / name).stat().st_mtime_ns == mtime
    names = [p.name for p in store.shard_paths(replay)]
    assert len(names) == len(set(names)) and all(re.fullmatch(r"shard-\d{8}T\d{12}-[0-9a-f]{8}\.h5", n) for n in names)

    # Every episode exactly once: each collector's reported steps are all stored, and no episode twice.
    by_seed = {s.seed: 0 for s in ds.shards}
    for shard in ds.shards:
        by_seed[shard.seed] += shard.num_steps
    for seed, (out, _) in zip((1000, 2000), outputs):
        reported = int(re.search(r"collected (\d+) steps", out).group(1))
        assert by_seed[seed] == reported, (seed, out)
    keys = [episode_key(e) for e in ds.iter_episodes()]
    assert len(keys) == len(set(keys)) == ds.num_episodes

    # Each episode names its checkpoint: the first agent, then the new one; the run's own data none.
    versions = episodes_by_seed(replay)
    assert set(versions[9]) == {None}
    for seed in (1000, 2000):
        updates = [v.update for v in versions[seed]]
        assert updates[0] == first and set(updates) == {first, new}
        assert len({v.digest for v in versions[seed]}) == 2
    refs = [r for r in ds.refs if r.policy is not None]
    assert {r.policy.update for r in refs} == {first, new}
    assert ds.summary()["agent_updates"] == [first, new]
    assert set(ds.summary()["policies"]) == {"random", f"follow:{run}"}
    assert f"agent updates {first}..{new} (2 checkpoints)" in outputs[0][0]


def test_kill_9_of_a_follower_loses_at_most_its_open_shard(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    replay = run / "replay"
    proc = start_follower(run, replay, 3000, "--set", "shard_seconds=30")
    try:
        wait_until(lambda: len(episodes_by_seed(replay).get(3000, [])) >= 10, (proc,))
        time.sleep(0.3)  # somewhere in the middle of the next shard
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    ds = Dataset(replay)  # readable: the closed shards are whole, the open one is .partial
    assert len(store.partial_paths(replay)) <= 1
    assert len(episodes_by_seed(replay)[3000]) >= 10 and all(v is not None for v in episodes_by_seed(replay)[3000])
    for episode in ds.iter_episodes():
        assert episode.is_first[0] and episode.is_last[-1]


# --- in-process: waiting, refusals ---------------------------------------------------------------


def copy_atomically(source: Path, target: Path) -> None:
    """As a training run writes its artifacts (checkpoint.save): a temporary file, then a rename."""
    shutil.copy(source, target.with_name(f".{target.name}.tmp"))
    os.replace(target.with_name(f".{target.name}.tmp"), target)


def test_a_follower_waits_for_the_runs_first_agent_and_writes_nothing_before(trained_run, tmp_path, capsys):
    run = tmp_path / "later"  # the learner has not even created its run yet
    cfg = collect.make_config(str(run / "replay"), [], [], {
        "env.id": TOY, "policy": str(run), "follow": True, "episodes": 3, "seed": 5, "poll_seconds": 0.1,
        "device": "cpu"})
    results = []
    thread = threading.Thread(target=lambda: results.append(collect.run(cfg, progress=False)))
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while "waiting for an agent" not in capsys.readouterr().err:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.05)
        assert not run.exists()  # a waiting follower creates nothing (the learner makes the run)
        run.mkdir()
        copy_atomically(trained_run / "world_model.pt", run / "world_model.pt")
        time.sleep(0.3)  # world model alone: still no agent
        assert thread.is_alive() and not (run / "replay").exists()
        copy_atomically(trained_run / "behavior.pt", run / "behavior.pt")
    finally:
        thread.join(timeout=60)
    assert results and results[0].episodes == 3 and not results[0].interrupted
    ds = Dataset(run / "replay")
    assert ds.num_episodes == 3 and all(r.policy is not None and r.policy.update == 2 for r in ds.refs)
    [(version, episodes)] = results[0].policies.items()
    assert episodes == 3 and version == ds.refs[0].policy
    assert results[0].to_dict()["policies"][0]["update"] == 2


@pytest.mark.parametrize("args,needles", [
    (["--follow"], ["--follow keeps collecting with the newest agent", "give --policy RUN"]),
    (["--follow", "--policy", "random"], ["give --policy RUN"]),
    (["--follow", "--policy", "RUN", "--steps", 10, "--episodes", 2], ["at most one budget"]),
    (["--steps", 0], ["exactly one budget", "needs --follow"]),
])
def test_bad_follow_flags_are_refused(tmp_path, args, needles):
    args = [tmp_path / "run" if a == "RUN" else a for a in args]
    result = dreamer("collect", "--env", TOY, "--out", tmp_path / "ds", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (tmp_path / "ds").exists()
    for needle in needles:
        assert needle in " ".join(result.output.split()), result.output


def test_a_dataset_of_other_spaces_env_or_env_options_is_refused(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    replay = run / "replay"
    listing = {p.name: p.stat().st_mtime_ns for p in replay.iterdir()}
    if TWIN not in gym.registry:
        gym.register(TWIN, entry_point=DummyDiscrete, max_episode_steps=25)
    cases = [
        (["--env", TOY, "--pixels"], ["observation space", "nothing was written"]),
        (["--env", TWIN], ["holds data of env dreamer/DummyDiscrete-v0", "plays dreamer/DummyDiscreteTwin-v0"]),
        (["--env", TOY, "--time-limit", 10], ["other options of env", "time_limit 0 there, 10 here"]),
    ]
    for args, needles in cases:
        result = dreamer("collect", *args, "--policy", run, "--follow", "--out", replay, "--episodes", 1)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "Traceback" not in text and all(n in text for n in needles), (needles, text)
    assert {p.name: p.stat().st_mtime_ns for p in replay.iterdir()} == listing
    # An agent whose spaces do not fit the env is refused too (no waiting), before --out is made.
    result = dreamer("collect", "--env", TOY, "--pixels", "--policy", run, "--follow", "--out", tmp_path / "new",
                     "--episodes", 1)
    assert result.exit_code == 2 and "does not fit the checkpoint" in " ".join(result.output.split())
    assert not (tmp_path / "new").exists()


def test_follow_defaults_collect_until_stopped_with_a_seed_of_its_own(tmp_path):
    flags = {"env.id": TOY, "policy": str(tmp_path), "follow": True}
    a, b = (collect.make_config(str(tmp_path / "ds"), [], [], flags) for _ in range(2))
    assert a.steps == a.episodes == 0 and a.seed != b.seed
    given = collect.make_config(str(tmp_path / "ds"), [], ["seed=0"], {**flags, "steps": 50})
    assert given.seed == 0 and given.steps == 50
    plain = collect.make_config(str(tmp_path / "ds"), [], [], {"env.id": TOY})
    assert plain.seed == 0 and plain.steps == 10_000  # without --follow nothing changes


# --- the parts ------------------------------------------------------------------------------------


class Constant:
    def __init__(self, value: int):
        self.value, self.name, self.calls = value, f"c{value}", []

    def act(self, obs, is_first):
        self.calls.append(np.asarray(is_first).copy())
        return np.full(len(is_first), self.value, np.int64)


def test_the_policy_switch_changes_each_env_at_its_next_episode():
    old, new = Constant(1), Constant(2)
    switch = PolicySwitch(old, num_envs=3)
    obs = {"vector": np.zeros((3, 4), np.float32)}
    assert list(switch.act(obs, np.ones(3, bool))) == [1, 1, 1]
    switch.offer(new)
    assert list(switch.act(obs, np.zeros(3, bool))) == [1, 1, 1] and not new.calls  # no env switched yet
    assert list(switch.act(obs, np.array([False, True, False]))) == [1, 2, 1]
    assert switch.policy_of(1) is new and switch.policy_of(0) is old
    assert list(new.calls[-1]) == [False, True, False]  # the new agent resets env 1's latent state there
    assert list(switch.act(obs, np.array([True, False, True]))) == [2, 2, 2]
    assert len(old.calls) == 3  # dropped once no env uses it
    switch.act(obs, np.zeros(3, bool))
    assert len(old.calls) == 3 and old not in switch._policies.values()


def test_policy_columns_round_trip_and_older_shards_read_as_none(tmp_path):
    obs_space = gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)})
    act = gym.spaces.Discrete(2)
    v1 = schema.PolicyVersion(3, 7, "0123456789abcdef")
    v2 = schema.PolicyVersion(4, 8, "fedcba9876543210")
    with DatasetWriter(tmp_path / "ds", "X-v0", {}, obs_space, act, shard_episodes=4, flush_bytes=1) as writer:
        for i, version in enumerate([None, v1, None, v2, None, None]):  # the first flush has no version
            writer.add_episode(make_episode(obs_space, act, 3 + i, True, episode_id=i), version)
    ds = Dataset(tmp_path / "ds")
    assert [r.policy for r in ds.refs] == [None, v1, None, v2, None, None]
    first, second = store.shard_paths(tmp_path / "ds")
    with h5py.File(second) as f:  # a shard without an agent's episode has no policy columns
        assert schema.POLICY_UPDATE not in f["episodes"]
    # A manifest written before entries held the policies is not trusted for them: rescanned.
    data = store.read_manifest(tmp_path / "ds")
    for entry in data["shards"].values():
        for key in ("policy_updates", "policy_world_model_updates", "policy_digests"):
            entry.pop(key)
        entry["digest"] = store.entry_digest(entry)
    (tmp_path / "ds" / schema.MANIFEST_NAME).write_text(json.dumps(data))
    assert [r.policy for r in Dataset(tmp_path / "ds").refs] == [None, v1, None, v2, None, None]
    assert "policy_updates" in store.read_manifest(tmp_path / "ds")["shards"][first.name]  # refreshed
    with h5py.File(first, "a") as f:  # as a shard written before the columns existed
        for name in schema.POLICY_COLUMNS:
            del f["episodes"][name]
    assert [r.policy for r in Dataset(tmp_path / "ds").refs] == [None] * 6


def test_writers_sharing_a_dataset_never_reuse_a_name_and_keep_each_others_manifest_entries(tmp_path, monkeypatch):
    obs_space = gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)})
    act = gym.spaces.Discrete(2)
    out = tmp_path / "ds"
    a, b = (DatasetWriter(out, "X-v0", {}, obs_space, act, shard_episodes=2, flush_bytes=1) for _ in range(2))
    frozen = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)

    class Clock:  # the same microsecond for a's name, a's header and b's first name; then time moves on
        calls = 0

        @staticmethod
        def now(tz=None):
            Clock.calls += 1
            return frozen if Clock.calls <= 3 else frozen.replace(microsecond=Clock.calls)

    class Fixed:  # and the same "random" part for every name
        hex = "0" * 32

    monkeypatch.setattr("dreamer_core.data.writer._dt.datetime", Clock)
    monkeypatch.setattr("dreamer_core.data.writer.uuid.uuid4", lambda: Fixed)
    a.add_episode(make_episode(obs_space, act, 3, True, episode_id=1))  # opens a's .partial
    b.add_episode(make_episode(obs_space, act, 4, True, episode_id=2))  # that name is taken: another one
    assert len(store.partial_paths(out)) == 2
    monkeypatch.undo()
    a.close()
    b.close()
    names = [p.name for p in store.shard_paths(out)]
    assert len(names) == 2 and names[0] == "shard-20300101T000000000000-00000000.h5"
    assert sorted(store.read_manifest(out)["shards"]) == names  # b's rewrite kept a's entry
    assert sorted(r.rows for r in Dataset(out).refs) == [4, 5]
