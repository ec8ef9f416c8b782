"""Stage 01 and the data tools through the real CLI (typer CliRunner and subprocesses)."""

import errno
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from dreamer_core.cli import app
from dreamer_core.data import store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.envs import EnvConfig, make_env

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def dreamer(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(path).iterdir()) if p.is_file()}


def assert_user_error(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in result.output, (needle, result.output)


def test_collect_then_info(tmp_path):
    out = tmp_path / "ds"
    result = dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", out, "--steps", 300, "-q")
    assert result.exit_code == 0, result.output
    assert "collected 300 steps" in result.output
    ds = Dataset(out)
    assert ds.num_steps == 300 and ds.env_ids == ["dreamer/DummyDiscrete-v0"]
    info = dreamer("data", "info", out)
    assert info.exit_code == 0 and "steps        300" in info.output
    as_json = json.loads(dreamer("data", "info", out, "--json").output)
    assert as_json["steps"] == 300 and as_json["episodes"] == ds.num_episodes


@pytest.mark.parametrize("num_envs,backend", [(1, "serial"), (3, "serial"), (2, "async")])
def test_collected_rows_replay_exactly_in_a_fresh_env(tmp_path, num_envs, backend):
    """Every stored episode is reproduced by resetting the env and replaying its actions:
    row t holds o_t, the action that led to it and the reward on arriving (schema.py)."""
    out = tmp_path / "ds"
    result = dreamer("collect", "--env", "CartPole-v1", "--out", out, "--episodes", 6, "--num-envs", num_envs,
                     "--backend", backend, "--seed", 3, "-q")
    assert result.exit_code == 0, result.output
    ds = Dataset(out)
    assert ds.num_episodes == 6
    env = make_env(EnvConfig(id="CartPole-v1"))
    for episode in ds.iter_episodes():
        env.reset()
        env.unwrapped.state = episode.obs["vector"][0].astype(np.float64)  # start where the data starts
        for t in range(1, episode.rows):
            obs, reward, terminated, truncated, _ = env.step(int(episode.action[t]))
            np.testing.assert_allclose(obs["vector"], episode.obs["vector"][t], rtol=1e-4, atol=1e-4)
            assert reward == episode.reward[t]
            assert (terminated or truncated) == bool(episode.is_last[t])
            assert terminated == bool(episode.is_terminal[t])
        assert episode.is_first[0] and not episode.is_first[1:].any()


def test_episodes_budget_is_exact_and_pixels_are_uint8(tmp_path):
    out = tmp_path / "px"
    result = dreamer("collect", "--env", "CartPole-v1", "--pixels", "--out", out, "--episodes", 2, "-q")
    assert result.exit_code == 0, result.output
    ds = Dataset(out)
    assert ds.num_episodes == 2
    assert list(ds.observation_space.spaces) == ["image"]
    episode = ds.load_episode(0)
    assert episode.obs["image"].dtype == np.uint8 and episode.obs["image"].shape[1:] == (64, 64, 3)


def test_append_and_spaces_mismatch(tmp_path):
    out = tmp_path / "ds"
    assert dreamer("collect", "--env", "CartPole-v1", "--out", out, "--steps", 100, "-q").exit_code == 0
    assert dreamer("collect", "--env", "CartPole-v1", "--out", out, "--steps", 100, "--seed", 1, "-q").exit_code == 0
    assert Dataset(out).num_steps == 200 and len(Dataset(out).shards) == 2
    before = digest(out)
    result = dreamer("collect", "--env", "Pendulum-v1", "--out", out, "--steps", 100, "-q")
    assert_user_error(result, "observation space", "new --out directory")
    assert digest(out) == before


def test_unknown_env_suggests_close_ids(tmp_path):
    result = dreamer("collect", "--env", "CartPol-v1", "--out", tmp_path / "ds", "--steps", 10)
    assert_user_error(result, "CartPole-v1")
    assert not (tmp_path / "ds").exists()


def test_out_path_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    result = dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "notes.txt", "--steps", 10)
    assert_user_error(result, "is a file")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "thesis.tex").write_text("precious")
    result = dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "dir", "--steps", 10)
    assert_user_error(result, "not a dreamer-core dataset")
    assert (tmp_path / "notes.txt").read_text() == "precious"
    assert [p.name for p in (tmp_path / "dir").iterdir()] == ["thesis.tex"]


def _dataset_with_two_shards(tmp_path):
    out = tmp_path / "ds"
    result = dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", out, "--episodes", 6,
                     "--shard-episodes", 3, "-q")
    assert result.exit_code == 0, result.output
    shards = store.shard_paths(out)
    assert len(shards) == 2
    return out, shards


def test_corrupt_shard_named_and_skippable(tmp_path):
    out, (first, second) = _dataset_with_two_shards(tmp_path)
    second.write_bytes(second.read_bytes()[:1000])
    result = dreamer("data", "info", out)
    assert_user_error(result, second.name, "--skip-corrupt")
    result = dreamer("data", "info", out, "--skip-corrupt")
    assert result.exit_code == 0 and "episodes     3" in result.output and "corrupt" in result.output


def test_schema_version_mismatch(tmp_path):
    out, (first, _) = _dataset_with_two_shards(tmp_path)
    with h5py.File(first, "r+") as f:
        f.attrs["schema_version"] = 0
    assert_user_error(dreamer("data", "info", out), "schema version 0", first.name)


def test_missing_optional_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)  # makes `import ale_py` fail
    result = dreamer("collect", "--env", "ALE/Pong-v5", "--out", tmp_path / "ds", "--steps", 10)
    assert_user_error(result, "pip install", "[atari]")


def test_no_space_left(tmp_path, monkeypatch):
    out, _ = _dataset_with_two_shards(tmp_path)
    before = digest(out)
    calls = {"n": 0}
    original = DatasetWriter._write_episodes

    def fill_up(self, episodes):
        calls["n"] += 1
        if calls["n"] > 1:  # the first shard closes fine, the second hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, episodes)

    monkeypatch.setattr(DatasetWriter, "_write_episodes", fill_up)
    result = dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", out, "--episodes", 10,
                     "--shard-episodes", 5, "-q")
    assert_user_error(result, "No space left on device", "Free disk space")
    after = digest(out)
    # the shards from before are untouched, this run's first shard closed before the disk filled
    assert all(after[name] == sha for name, sha in before.items() if name.startswith("shard-"))
    assert len(store.shard_paths(out)) == 3
    assert store.partial_paths(out) == []  # the shard that hit the full disk was removed
    assert Dataset(out).num_episodes == 6 + 5


def test_bad_flags(tmp_path):
    assert_user_error(dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "a", "--set", "env.sise=3"),
                      "env.size")
    assert_user_error(dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "a", "--steps", 5,
                              "--episodes", 5), "exactly one budget")
    assert_user_error(dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "a", "--preset", "huge"),
                      "Unknown preset")
    assert_user_error(dreamer("collect", "--env", "X-v0", "--env-module", "no_such_module_xyz",
                              "--out", tmp_path / "a"), "no_such_module_xyz")
    assert_user_error(dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "a", "--policy", "runs/none"),
                      "--policy random")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_env_module_registers_a_user_env(tmp_path, monkeypatch):
    (tmp_path / "my_envs_for_test.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('MyCartPole-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv', max_episode_steps=20)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = dreamer("collect", "--env-module", "my_envs_for_test", "--env", "MyCartPole-v0",
                     "--out", tmp_path / "ds", "--steps", 50, "-q")
    assert result.exit_code == 0, result.output
    assert Dataset(tmp_path / "ds").env_ids == ["MyCartPole-v0"]


@pytest.mark.parametrize("entry", [["-m", "dreamer_core"], [str(ROOT / "01_collect.py")]])
def test_entry_points(tmp_path, entry):
    args = [sys.executable, *entry]
    if entry[0] == "-m":
        args.append("collect")
    done = subprocess.run([*args, "--env", "CartPole-v1", "--out", str(tmp_path / "ds"), "--steps", "50", "-q"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "collected 50 steps" in done.stdout
    bad = subprocess.run([*args, "--env", "CartPol-v1", "--out", str(tmp_path / "x"), "--steps", "5"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "CartPole-v1" in bad.stderr


@pytest.mark.parametrize("command", ["collect", "train-world-model", "train-behavior", "evaluate", "train"])
def test_every_stage_has_help_with_the_shared_options(command):
    result = dreamer(command, "--help")
    assert result.exit_code == 0, result.output
    for option in ("--preset", "--set", "--device"):
        assert option in result.output, (command, option)


def test_train_refuses_an_unknown_env_and_a_bad_preset(tmp_path):
    result = dreamer("train", "--env", "CartPol-v1", "--out", tmp_path / "run", "-q")
    assert result.exit_code == 2 and "CartPole-v1" in result.output and not (tmp_path / "run").exists()
    result = dreamer("train", "--env", "CartPole-v1", "--out", tmp_path / "run", "--preset", "huge", "-q")
    assert result.exit_code == 2 and "Unknown preset" in result.output


def test_console_script_help():
    done = subprocess.run(["dreamer", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "collect" in done.stdout and "data" in done.stdout


def test_minari_export_and_import_through_the_cli(tmp_path):
    minari = pytest.importorskip("minari")
    out = tmp_path / "ds"
    assert dreamer("collect", "--env", "CartPole-v1", "--out", out, "--episodes", 4, "-q").exit_code == 0
    result = dreamer("data", "export-minari", out, tmp_path / "m" / "cartpole-v0")
    assert result.exit_code == 0, result.output
    loaded = minari.MinariDataset(tmp_path / "m" / "cartpole-v0" / "data")
    assert loaded.total_episodes == 4
    result = dreamer("data", "import-minari", tmp_path / "m" / "cartpole-v0", tmp_path / "back")
    assert result.exit_code == 0, result.output
    for a, b in zip(Dataset(out).iter_episodes(), Dataset(tmp_path / "back").iter_episodes()):
        np.testing.assert_array_equal(a.obs["vector"], b.obs["vector"])
        np.testing.assert_array_equal(a.action, b.action)
        np.testing.assert_array_equal(a.is_terminal, b.is_terminal)
    # exporting over an existing directory is refused and leaves it alone
    result = dreamer("data", "export-minari", out, tmp_path / "m" / "cartpole-v0")
    assert_user_error(result)
    assert minari.MinariDataset(tmp_path / "m" / "cartpole-v0" / "data").total_episodes == 4


SUITES = [
    pytest.param("ALE/Pong-v5", [], {"image": (64, 64, 3)}, "ale_py", marks=pytest.mark.atari, id="atari"),
    pytest.param("ALE/Pong-v5", ["--grayscale"], {"image": (64, 64, 1)}, "ale_py", marks=pytest.mark.atari, id="atari-gray"),
    pytest.param("retro:Airstriker-Genesis-v0", [], {"image": (64, 64, 3)}, "stable_retro", marks=pytest.mark.retro, id="retro"),
    pytest.param("dmc:cartpole-balance", [], {"vector": (5,)}, "dm_control", marks=pytest.mark.dmc, id="dmc"),
    pytest.param("dmc:cartpole-balance", ["--pixels"], {"image": (64, 64, 3)}, "dm_control", marks=pytest.mark.dmc, id="dmc-pixels"),
    pytest.param("LunarLander-v3", [], {"vector": (8,)}, "Box2D", id="box2d"),
    pytest.param("dreamer/DummyDict-v0", [], {"image": (64, 64, 3), "state": (4,)}, None, id="dict"),
]


@pytest.mark.parametrize("env_id,flags,keys,module", SUITES)
def test_collect_every_suite(tmp_path, env_id, flags, keys, module):
    if module:
        pytest.importorskip(module)
    result = dreamer("collect", "--env", env_id, *flags, "--out", tmp_path / "ds", "--steps", 40, "-q")
    assert result.exit_code == 0, result.output
    ds = Dataset(tmp_path / "ds")
    assert ds.num_steps == 40
    assert {k: s.shape for k, s in ds.observation_space.spaces.items()} == keys
    episode = ds.load_episode(0)
    for key, shape in keys.items():
        assert episode.obs[key].shape[1:] == shape
        assert episode.obs[key].dtype == (np.uint8 if len(shape) == 3 else np.float32)
    if env_id.startswith("retro:"):
        assert episode.action.shape[1:] == (12,) and episode.action.dtype == np.int8  # MultiBinary(12) kept
