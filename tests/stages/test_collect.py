"""Stage 01 in-process (stages/collect.py): budgets over K envs, episodes in progress, seeds,
refusals, and a stop request. The CLI side (messages, appending, corrupt shards, kill -9,
every suite) is in tests/test_cli.py and tests/test_kill.py."""

from __future__ import annotations

import errno
import os
import signal
import threading

import numpy as np
import pytest

from dreamer_core.data.dataset import Dataset
from dreamer_core.envs import EnvConfig
from dreamer_core.errors import DreamerError
from dreamer_core.policies import RandomPolicy
from dreamer_core.stages import collect

TOY = "dreamer/DummyDiscrete-v0"  # episodes of 10-30 drawn steps, truncated at 25 (envs/dummy.py)
TIME_LIMIT = 25


def run_collect(out, **flags) -> tuple[collect.CollectResult, Dataset]:
    cfg = collect.make_config(str(out), [], [], {"env.id": TOY, **flags})
    result = collect.run(cfg, progress=False)
    return result, Dataset(out)


def cut_by_the_collector(episode) -> bool:
    """Neither terminated nor cut by the env's time limit: an episode in progress at the end."""
    return not episode.is_terminal[-1] and episode.steps < TIME_LIMIT


def test_step_budget_is_exact_over_k_envs_and_keeps_the_episodes_in_progress(tmp_path):
    result, ds = run_collect(tmp_path / "ds", steps=100, num_envs=3, seed=1)  # 100 is no multiple of 3
    assert result.steps == ds.num_steps == 100 and not result.interrupted
    episodes = list(ds.iter_episodes())
    assert sum(e.steps for e in episodes) == 100
    for e in episodes:
        assert e.is_first[0] and not e.is_first[1:].any() and e.is_last[-1] and not e.is_last[:-1].any()
    # finished episodes are counted and returned; the ones in progress are stored as truncations
    in_progress = [e for e in episodes if cut_by_the_collector(e)]
    assert 1 <= len(in_progress) <= 3
    assert len(episodes) == result.episodes + len(in_progress) == ds.num_episodes
    assert len(result.returns) == result.episodes
    finished_returns = sorted(float(e.reward.sum()) for e in episodes if not cut_by_the_collector(e))
    assert finished_returns == sorted(result.returns)
    assert result.shards == len(ds.shards) == 1
    summary = result.to_dict()
    assert summary["steps"] == 100 and summary["episodes"] == result.episodes and not summary["interrupted"]
    assert summary["return_mean"] == pytest.approx(np.mean(result.returns))
    assert result.cut == len(in_progress) and summary["cut_episodes"] == len(in_progress)
    assert result.summary_line().startswith(f"collected 100 steps, {result.episodes} episodes + {result.cut} cut at "
                                            "the end (stored, truncated)")


def test_episode_budget_stores_only_finished_episodes(tmp_path):
    result, ds = run_collect(tmp_path / "ds", episodes=5, num_envs=3, seed=2)
    assert result.episodes == ds.num_episodes == len(result.returns) == 5
    episodes = list(ds.iter_episodes())
    assert not any(cut_by_the_collector(e) for e in episodes)  # episodes in progress are dropped
    assert sorted(float(e.reward.sum()) for e in episodes) == sorted(result.returns)


def test_the_seed_fixes_the_data(tmp_path):
    def arrays(ds):
        return [(e.obs["vector"], e.action, e.reward, e.is_terminal) for e in ds.iter_episodes()]

    _, a = run_collect(tmp_path / "a", steps=120, num_envs=2, seed=3)
    _, b = run_collect(tmp_path / "b", steps=120, num_envs=2, seed=3)
    _, c = run_collect(tmp_path / "c", steps=120, num_envs=2, seed=4)
    for x, y in zip(arrays(a), arrays(b), strict=True):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(arrays(a), arrays(c)))
    assert a.summary()["policies"] == ["random"]


@pytest.mark.parametrize("flags,needle", [
    ({"steps": 10, "episodes": 2}, "exactly one budget"),
    ({"steps": 0, "episodes": 0}, "exactly one budget"),
    ({"steps": 10, "num_envs": 0}, "--num-envs"),
])
def test_invalid_budgets_are_refused_before_anything_is_written(tmp_path, flags, needle):
    cfg = collect.CollectConfig(out=str(tmp_path / "ds"), env=EnvConfig(id=TOY), **flags)
    with pytest.raises(DreamerError, match=needle):
        collect.run(cfg, progress=False)
    assert not (tmp_path / "ds").exists()


def test_a_stop_request_ends_collection_and_keeps_everything(tmp_path, monkeypatch):
    """SIGTERM during collection (as `kill` or Ctrl-C would send): the loop finishes the step
    under way, stops, and writes the episodes in progress too, even under an episode budget."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")

    class StoppingPolicy(RandomPolicy):
        calls = 0

        def act(self, obs, is_first):
            StoppingPolicy.calls += 1
            if StoppingPolicy.calls == 30:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().act(obs, is_first)

    def load_policy(spec, observation_space, action_space, num_envs, seed=None, device="auto"):
        return StoppingPolicy(action_space, num_envs, seed)

    monkeypatch.setattr(collect, "load_policy", load_policy)
    before = signal.getsignal(signal.SIGTERM)
    result, ds = run_collect(tmp_path / "ds", episodes=1000, num_envs=2, seed=0)
    assert signal.getsignal(signal.SIGTERM) is before  # the stage's handler is gone again
    assert StoppingPolicy.calls == 30  # no pool step after the one under way
    assert result.interrupted and result.steps == ds.num_steps  # every counted step is stored
    assert 50 <= result.steps <= 60  # 30 pool steps of 2 envs, less the autoreset steps (no env steps)
    in_progress = [e for e in ds.iter_episodes() if cut_by_the_collector(e)]
    assert len(in_progress) >= 1 and ds.num_episodes == result.episodes + len(in_progress)
    assert result.summary_line().endswith("[interrupted]") and result.to_dict()["interrupted"]


@pytest.mark.parametrize("existed", [False, True])
def test_a_full_disk_leaves_no_empty_dataset_directory(tmp_path, monkeypatch, existed):
    """The first shard of a new dataset hits a full disk: the directory the collector made
    (and its missing parents) goes again; a directory that was there before stays."""
    from dreamer_core.data.writer import DatasetWriter

    def full(self, episodes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DatasetWriter, "_write_episodes", full)
    out = tmp_path / "new" / "ds"
    if existed:
        out.mkdir(parents=True)
    with pytest.raises(DreamerError, match="No space left on device") as info:
        run_collect(out, episodes=5, shard_episodes=2)
    assert out.exists() == existed and (tmp_path / "new").exists() == existed
    assert not existed or not any(out.iterdir())
    assert ("directory was removed" in str(info.value)) != existed


def test_collect_prints_plain_progress_lines_when_not_a_terminal(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "dreamer_core", "collect", "--env", "CartPole-v1", "--out",
                             str(tmp_path / "data"), "--steps", "300"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("collect CartPole-v1")]
    assert lines[0].startswith("collect CartPole-v1 0/300 (0%)")  # at the start, then at the end
    assert lines[-1].startswith("collect CartPole-v1 300/300 (100%)") and "episodes" in lines[-1]
    assert "\x1b[" not in result.stderr  # plain text, no terminal control codes


def test_smooth_random_collection_is_recorded_as_such(tmp_path):
    result, ds = run_collect(tmp_path / "ds", steps=60, policy="smooth-random", seed=3)
    assert result.steps == ds.num_steps == 60
    assert {info.policy for info in ds.shards} == {"smooth-random"}
    actions = np.concatenate([e.action[1:] for e in ds.iter_episodes()])
    assert (np.diff(actions) != 0).mean() < 0.3  # sticky: mostly the previous action again
