"""Stage 01 and the data tools through the real CLI (typer CliRunner and subprocesses)."""

import errno
import hashlib
import json
import os
import shutil
import socket
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
from tests.common import mounted_tmpfs

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


# --- invalid values, unwritable outputs and full disks (issue 17) -----------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A dataset and a run with a world model only (tiny, 2 updates)."""
    root = tmp_path_factory.mktemp("cli")
    assert dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", root / "ds", "--steps", 300,
                   "-q").exit_code == 0
    result = dreamer("train-world-model", root / "ds", "--out", root / "run", "--preset", "tiny", "--updates", 2, "-q")
    assert result.exit_code == 0, result.output
    return root / "ds", root / "run"


def tree_digest(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args,needles", [
    (["--updates", 0], ["--updates (updates) must be at least 1 (got 0)"]),
    (["--precision", "fp8"], ["--precision (precision) must be one of float32, bf16 (got 'fp8')"]),
    (["--set", "threads=-3"], ["threads must be at least 0"]),
    (["--device", "tpu"], ["--device (device) must be one of auto, cpu, cuda"]),
    (["--updates", 0, "--batch-size", 0, "--seq-len", -1],  # every problem in one message
     ["--updates (updates)", "--batch-size (batch_size)", "--seq-len (seq_len)"]),
    (["--set", "model.act=swish", "--set", "checkpoint_every=-1"], ["model.act must be one of", "checkpoint_every"]),
])
def test_stage_02_refuses_invalid_values_and_writes_nothing(small_run, tmp_path, args, needles):
    ds, _ = small_run
    result = dreamer("train-world-model", ds, "--out", tmp_path / "run", "--preset", "tiny", *args, "-q")
    assert_user_error(result, "Invalid settings for `dreamer train-world-model`", *needles, "nothing was written")
    assert not (tmp_path / "run").exists()  # `--updates 0` used to print "-> world_model.pt" and write nothing


@pytest.mark.parametrize("args,needle", [
    (["--horizon", 0], "--horizon (behavior.horizon) must be at least 1"),
    (["--set", "behavior.horizon=0"], "--horizon (behavior.horizon) must be at least 1"),  # used to crash in torch.stack
    (["--updates", 0], "--updates (updates) must be at least 1"),
    (["--set", "behavior.critic.head=huber"], "behavior.critic.head must be one of twohot, mse"),  # was silently ignored
    (["--set", "behavior.critic.slow_every=0"], "behavior.critic.slow_every must be at least 1"),
])
def test_stage_03_refuses_invalid_values(small_run, args, needle):
    _, run = small_run
    before = tree_digest(run)
    assert_user_error(dreamer("train-behavior", "--run", run, *args, "-q"), needle)
    assert tree_digest(run) == before


@pytest.mark.parametrize("command,args,needle", [
    ("train", ["--env", "CartPole-v1", "--threads", -3], "--threads (threads) must be at least 0"),
    ("train", ["--env", "CartPole-v1", "--set", "precision=fp8"], "precision must be one of float32, bf16"),
    ("train", ["--env", "CartPole-v1", "--eval-episodes", -1], "--eval-episodes (eval_episodes) must be at least 0"),
    ("train", ["--env", "CartPole-v1", "--eval-mode", "argmax"], "--eval-mode (eval_mode) must be one of greedy, mode, sample"),
    ("evaluate", ["--mode", "argmax"], "--mode (mode) must be one of greedy, mode, sample"),
    ("collect", ["--env", "CartPole-v1", "--steps", -5], "cannot be negative"),
    ("collect", ["--env", "CartPole-v1", "--steps", 5, "--device", "tpu"], "--device (device) must be one of"),
    ("evaluate", ["--episodes", 0], "--episodes (episodes) must be at least 1"),
    ("dream", ["--fps", 0], "--fps (fps) must be at least 1"),
])
def test_every_command_refuses_invalid_values(tmp_path, command, args, needle):
    target = {"train": ["--out", tmp_path / "run"], "collect": ["--out", tmp_path / "ds"],
              "evaluate": ["--run", tmp_path / "run"], "dream": ["--run", tmp_path / "run", "--out", tmp_path / "d.gif"]}
    assert_user_error(dreamer(command, *target[command], *args), needle)
    assert list(tmp_path.iterdir()) == []


def test_presets_and_keys_a_command_does_not_use_are_refused(tmp_path):
    result = dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "ds", "--steps", 5, "--preset", "tiny")
    assert_user_error(result, "The preset 'tiny' is for `dreamer train-world-model`, `dreamer train-behavior`, "
                      "`dreamer train` and would change nothing here", "--preset atari")
    result = dreamer("collect", "--env", "CartPole-v1", "--out", tmp_path / "ds", "--preset", "dreamerv3-2025")
    assert_user_error(result, "The preset 'dreamerv3-2025' is for `dreamer train-world-model`", "behavior.*")
    result = dreamer("train-world-model", tmp_path / "ds", "--out", tmp_path / "run", "--preset", "atari100k")
    assert_user_error(result, "The preset 'atari100k' is for `dreamer collect`, `dreamer train` and would change "
                      "nothing here: it sets env.*", "takes --preset dreamerv3, dreamerv3-2025")
    assert_user_error(dreamer("evaluate", "--run", tmp_path / "run", "--preset", "tiny"), "takes no preset")
    result = dreamer("train", "--env", "CartPole-v1", "--out", tmp_path / "run", "--set", "replay_contxt=true")
    assert_user_error(result, "Unknown config key 'replay_contxt'", "Did you mean 'replay_context'", "model.*")
    result = dreamer("train", "--env", "CartPole-v1", "--out", tmp_path / "run", "--set", "model.rssm.detr=8")
    assert_user_error(result, "Unknown config key 'model.rssm.detr'", "Did you mean 'model.rssm.deter'")
    result = dreamer("train", "--env", "CartPole-v1", "--out", tmp_path / "run", "--preset", "dreamerv3_2025")
    assert_user_error(result, "Unknown preset 'dreamerv3_2025'. Did you mean 'dreamerv3-2025'?")
    assert list(tmp_path.iterdir()) == []


def test_a_world_model_preset_is_refused_by_stage_03(small_run):
    _, run = small_run
    result = dreamer("train-behavior", "--run", run, "--preset", "laprop", "-q")
    assert_user_error(result, "The preset 'laprop' is for `dreamer train-world-model`, `dreamer train` and would "
                      "change nothing here: it sets model.*, optim.*")


def test_train_applies_env_presets_and_prints_its_config(tmp_path):
    """`dreamer train` takes the env presets: atari100k's sticky actions 0, dmc_vision's pixels
    (an image world model); it prints what its config changes (not with -q), also on --resume."""
    import yaml

    from dreamer_core.runs import load_agent
    from dreamer_core.stages import plot

    small = ["--env", "dreamer/DummyDiscrete-v0", "--preset", "tiny", "--steps", 40, "--prefill", 32,
             "--eval-every", 0, "--eval-episodes", 1, "--threads", 1]
    run = tmp_path / "atari"
    result = dreamer("train", "--out", run, *small, "--preset", "atari100k", "--eval-mode", "sample")
    assert result.exit_code == 0, result.output
    assert "config of `dreamer train`, what differs from the defaults" in result.output
    assert "  env: id=dreamer/DummyDiscrete-v0 action_repeat=4 sticky_actions=0.0\n" in result.output
    assert "eval_mode=sample" in result.output and "model.rssm: deter=64 hidden=64 stoch=8 classes=8" in result.output
    stored = yaml.safe_load((run / "config.yaml").read_text())["train"]["config"]
    assert stored["env"]["sticky_actions"] == 0.0 and stored["env"]["action_repeat"] == 4
    assert stored["eval_mode"] == "sample" and plot.eval_mode(run) == "sample"
    assert any("eval/return" in json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    result = dreamer("train", "--out", run, "--resume", "--steps", 48, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "resuming with the stored config of `dreamer train`" in result.output and "steps=48" in result.output
    assert dreamer("plot", run).exit_code == 0

    run = tmp_path / "dmc"
    result = dreamer("train", "--out", run, *small, "--preset", "dmc_vision", "-q")
    assert result.exit_code == 0, result.output
    assert "config of" not in result.output
    world_model, _, artifact = load_agent(run)
    image = world_model.observation_space["image"]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and list(world_model.observation_space) == ["image"]
    assert artifact.env_config["obs"] == "pixels" and artifact.env_config["action_repeat"] == 2
    assert plot.eval_mode(run) == "greedy"


def test_resume_refuses_changes_and_a_missing_run(small_run, tmp_path):
    _, run = small_run
    before = tree_digest(run)
    result = dreamer("train-world-model", "--out", run, "--resume", "--batch-size", 3, "--preset", "S", "-q")
    assert_user_error(result, "--preset, batch_size cannot change now", "--updates")
    assert tree_digest(run) == before
    assert_user_error(dreamer("train", "--out", tmp_path / "typo", "--resume", "-q"), "does not exist")
    assert_user_error(dreamer("train-world-model", "--out", tmp_path / "typo", "--resume", "-q"), "does not exist")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("make_out,needle", [
    (lambda d: d / "afile", "is a file, not a run directory"),
    (lambda d: d / "ds", "is a dataset directory, not a run directory"),
    (lambda d: d / "notes", "exists and is not a run directory (it holds thesis.tex)"),
    (lambda d: Path("/proc/dreamer-test/run"), "cannot be written (No such file or directory)"),
])
@pytest.mark.parametrize("command", ["train-world-model", "train"])
def test_run_outputs_that_are_not_runs_are_refused(small_run, tmp_path, command, make_out, needle):
    ds, _ = small_run
    (tmp_path / "afile").write_text("precious")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    shutil.copytree(ds, tmp_path / "ds")
    before = tree_digest(tmp_path)
    out = make_out(tmp_path)
    args = [ds, "--preset", "tiny"] if command == "train-world-model" else ["--env", "dreamer/DummyDiscrete-v0"]
    assert_user_error(dreamer(command, *args, "--out", out, "-q"), needle)
    assert tree_digest(tmp_path) == before


def test_output_files_and_folders_of_the_wrong_kind_are_refused(small_run, tmp_path):
    _, run = small_run
    (tmp_path / "clip.gif").mkdir()
    assert_user_error(dreamer("dream", "--run", run, "--out", tmp_path / "clip.gif"), "is an existing directory")
    assert_user_error(dreamer("plot", run, "--out", tmp_path / "a.txt"), "--out must end in .png or .pdf or .svg")
    (tmp_path / "curve.png").mkdir()
    assert_user_error(dreamer("plot", run, "--out", tmp_path / "curve.png"), "is an existing directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "curve.png"]


def test_an_eval_folder_that_is_a_file_is_refused(tmp_path, small_run):
    ds, run = small_run
    agent_run = tmp_path / "run"
    shutil.copytree(run, agent_run)
    assert dreamer("train-behavior", "--run", agent_run, "--preset", "tiny", "--updates", 1, "-q").exit_code == 0
    (agent_run / "eval").write_text("not a folder")
    before = tree_digest(agent_run)
    assert_user_error(dreamer("evaluate", "--run", agent_run, "--episodes", 1), "evaluation folder", "is a file")
    assert tree_digest(agent_run) == before


def h5py_full_disk_error(path: str) -> RuntimeError:
    """What h5py raises when the disk fills while a file closes: a RuntimeError whose cause
    carries the errno in its text."""
    try:
        try:
            raise RuntimeError(f"Unable to flush file (file write failed: time = Mon Nov 30 2026, filename = '{path}', "
                               "file descriptor = 3, errno = 28, error message = 'No space left on device')")
        except RuntimeError:
            raise RuntimeError("Slist already enabled? (slist already enabled?)")  # noqa: B904 (as h5py does)
    except RuntimeError as exc:
        return exc


DISK_ERRORS = [
    pytest.param(errno.ENOSPC, "no space left on the device (ENOSPC)", "Free some disk space", id="ENOSPC"),
    pytest.param(errno.EDQUOT, "the disk quota is exceeded (EDQUOT)", "raise the quota", id="EDQUOT"),
    pytest.param(errno.EROFS, "the file system is read-only (EROFS)", "on a writable disk", id="EROFS"),
    pytest.param(errno.EACCES, "permission is denied (EACCES)", "fix the permissions", id="EACCES"),
]


@pytest.mark.parametrize("code,what,fix", DISK_ERRORS)
def test_disk_errors_of_the_training_commands_are_one_paragraph(small_run, tmp_path, monkeypatch, code, what, fix):
    from dreamer_core.stages import online, train_world_model

    ds, _ = small_run
    path = str(tmp_path / "run" / "checkpoints" / ".latest.pt.x1.tmp")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), path)

    monkeypatch.setattr(train_world_model, "run", fail)
    monkeypatch.setattr(online, "run", fail)
    result = dreamer("train-world-model", ds, "--out", tmp_path / "run", "--preset", "tiny", "-q")
    assert_user_error(result, what, f"while writing {tmp_path / 'run'} ({path})", fix, "--out", "--resume")
    assert len(result.output.strip().splitlines()) == 1
    result = dreamer("train", "--env", "CartPole-v1", "--out", tmp_path / "run", "-q")
    assert_user_error(result, what, fix, "--out")


def test_a_full_disk_in_export_minari_is_one_paragraph(tmp_path, monkeypatch, small_run):
    import dreamer_core.data.minari as minari

    ds, _ = small_run
    partial = str(tmp_path / ".m.partial-1234" / "data" / "main_data.hdf5")

    def fail(*args, **kwargs):
        raise h5py_full_disk_error(partial)

    monkeypatch.setattr(minari, "export_minari", fail)
    result = dreamer("data", "export-minari", ds, tmp_path / "m")
    assert_user_error(result, "no space left on the device (ENOSPC)", f"while writing {tmp_path / 'm'} ({partial})",
                      "give DST a path on another disk")
    assert "Slist" not in result.output


def test_a_genuine_bug_still_shows_its_traceback(small_run, tmp_path, monkeypatch):
    from dreamer_core.stages import train_world_model

    ds, _ = small_run
    for exc in (OSError(errno.ENOENT, "No such file or directory", "x"), RuntimeError("shape mismatch"),
                ValueError("a bug")):
        def fail(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(train_world_model, "run", fail)
        result = dreamer("train-world-model", ds, "--out", tmp_path / "run", "--preset", "tiny", "-q")
        assert result.exit_code == 1 and result.exception is exc  # not turned into a user error
        assert "error:" not in result.output


def test_errors_reported_while_objects_are_freed_are_held_back(small_run, tmp_path, monkeypatch):
    """h5py prints its errors while freeing objects after a failed write (sys.unraisablehook);
    a disk-error message stands alone, and on other outcomes they are printed at the end."""
    from dreamer_core.stages import train_world_model

    ds, _ = small_run

    class Noisy:
        def __del__(self):
            raise RuntimeError("Can't decrement id ref count (errno = 28, error message = 'No space left on device')")

    def fill_up(*args, **kwargs):
        Noisy()  # freed at once: its error goes to sys.unraisablehook
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train_world_model, "run", fill_up)
    result = dreamer("train-world-model", ds, "--out", tmp_path / "run", "--preset", "tiny", "-q")
    assert_user_error(result, "no space left on the device")
    assert "decrement" not in result.output

    def noisy_success(*args, **kwargs):
        Noisy()
        return {"updates": 1}

    monkeypatch.setattr(train_world_model, "run", noisy_success)
    result = dreamer("train-world-model", ds, "--out", tmp_path / "run", "--preset", "tiny", "-q")
    assert result.exit_code == 0 and "trained 1 updates" in result.output
    assert "Can't decrement id ref count" in result.output  # shown, not swallowed


def test_disk_errors_through_a_real_process(tmp_path, small_run):
    """The same wrapper in a real `python -m dreamer_core` process: a message for a full disk,
    a traceback for a bug."""
    ds, _ = small_run
    script = (
        "import errno, sys\n"
        "from dreamer_core import cli\n"
        "from dreamer_core.stages import train_world_model\n"
        "def fail(*a, **k):\n"
        "    raise {exc}\n"
        "train_world_model.run = fail\n"
        "sys.argv = ['dreamer', 'train-world-model', {ds!r}, '--out', {out!r}, '-q']\n"
        "cli.main()\n"
    )
    for exc, code, needle in [("OSError(errno.ENOSPC, 'No space left on device')", 2, "no space left on the device"),
                              ("ValueError('a bug')", 1, "Traceback")]:
        done = subprocess.run([sys.executable, "-c", script.format(exc=exc, ds=str(ds), out=str(tmp_path / "r"))],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == code and needle in done.stderr, done.stderr
        assert (needle == "Traceback") == ("Traceback" in done.stderr)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only): room for a run's config and metrics, not for its checkpoint."""
    yield from mounted_tmpfs(tmp_path / "disk", "1m")


def test_stage_02_on_a_really_full_disk(small_run, small_disk):
    ds, _ = small_run
    before = tree_digest(ds)
    result = dreamer("train-world-model", ds, "--out", small_disk / "run", "--preset", "tiny", "--updates", 2, "-q")
    assert_user_error(result, "no space left on the device (ENOSPC)", f"while writing {small_disk / 'run'}",
                      "Free some disk space", "--resume")
    assert tree_digest(ds) == before
    assert not list((small_disk / "run").rglob("*.tmp"))  # the half-written checkpoint was removed


def test_read_only_outputs_are_refused_before_anything_runs(small_run, small_disk):
    ds, run = small_run
    shutil.copytree(run, small_disk / "run", ignore=shutil.ignore_patterns("checkpoints", "tb"))
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], capture_output=True).returncode == 0
    before = tree_digest(small_disk)
    ro = "cannot be written (Read-only file system)"
    assert_user_error(dreamer("collect", "--env", "CartPole-v1", "--out", small_disk / "ds", "--steps", 5), ro)
    assert_user_error(dreamer("train-world-model", ds, "--out", small_disk / "new", "--preset", "tiny", "-q"), ro)
    assert_user_error(dreamer("train-behavior", "--run", small_disk / "run", "--preset", "tiny", "-q"), ro)
    assert_user_error(dreamer("dream", "--run", run, "--out", small_disk / "d.gif"), ro)
    assert tree_digest(small_disk) == before


def test_model_choices_are_those_of_the_nets():
    from dreamer_core import config
    from dreamer_core.nets import layers

    assert config.NORMS == layers.NORMS and config.ACTS == layers.ACTS


def test_resume_accepts_the_env_module_it_started_with_and_refuses_another(tmp_path, monkeypatch):
    (tmp_path / "my_envs_for_resume.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('MyResumeCartPole-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv',"
        " max_episode_steps=20)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    common = ["--env-module", "my_envs_for_resume", "--out", run, "-q"]
    small = ["--prefill", 64, "--eval-every", 0, "--preset", "tiny", "--threads", 1]
    result = dreamer("train", "--env", "MyResumeCartPole-v0", "--steps", 80, *small, *common)
    assert result.exit_code == 0, result.output
    result = dreamer("train", "--resume", "--steps", 120, *common)
    assert result.exit_code == 0, result.output
    assert "trained 120 env steps" in result.output
    assert_user_error(dreamer("train", "--resume", "--env-module", "json", "--out", run, "-q"),
                      "env.env_module", "cannot change now")


def test_a_run_in_use_is_refused_and_a_copied_checkpoint_too(tmp_path):
    """One writer per run (RUN/.lock held by a live process), and a resume checkpoint copied
    from another run is recognised by the run identity it carries."""
    small = ["--prefill", 64, "--eval-every", 0, "--preset", "tiny", "--threads", 1, "-q"]
    for name in ("a", "b"):
        result = dreamer("train", "--env", "CartPole-v1", "--steps", 70, "--out", tmp_path / name, *small)
        assert result.exit_code == 0, result.output
    lock = tmp_path / "a" / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    before = digest(tmp_path / "a" / "checkpoints")
    assert_user_error(dreamer("train", "--resume", "--out", tmp_path / "a", "-q"), "is in use by process")
    assert digest(tmp_path / "a" / "checkpoints") == before and lock.exists()  # the holder's lock stays
    lock.unlink()
    shutil.copy(tmp_path / "b" / "checkpoints" / "online_latest.pt", tmp_path / "a" / "checkpoints")
    copied = digest(tmp_path / "a" / "checkpoints")
    assert_user_error(dreamer("train", "--resume", "--steps", 90, "--out", tmp_path / "a", "-q"),
                      "belongs to another run", "nothing was changed")
    assert digest(tmp_path / "a" / "checkpoints") == copied


TINY_ENV_FILE = '''
import gymnasium as gym
import numpy as np


class TinyFileEnv(gym.Env):
    """Five steps; the reward is the action."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode=None):
        self.render_mode = render_mode

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full(2, self.t / 10, np.float32), float(action), self.t >= 5, False, {}


gym.register("TinyFileEnv-v0", entry_point=TinyFileEnv)
'''


def test_env_module_may_be_a_python_file(tmp_path, monkeypatch):
    """--env-module ./my_envs.py imports the file (no PYTHONPATH needed); the dataset records its
    absolute path, so the env can be made again from any folder. A missing file or a path that
    is not a .py file is a one-paragraph error."""
    (tmp_path / "my_file_envs.py").write_text(TINY_ENV_FILE)
    monkeypatch.chdir(tmp_path)
    result = dreamer("collect", "--env-module", "./my_file_envs.py", "--env", "TinyFileEnv-v0",
                     "--out", tmp_path / "ds", "--steps", 20, "-q")
    assert result.exit_code == 0, result.output
    ds = Dataset(tmp_path / "ds")
    assert ds.env_ids == ["TinyFileEnv-v0"] and ds.num_steps == 20
    assert ds.env_config["env_module"] == str(tmp_path / "my_file_envs.py")
    assert_user_error(dreamer("collect", "--env-module", "./no_such_envs.py", "--env", "TinyFileEnv-v0",
                              "--out", tmp_path / "a", "--steps", 5), "--env-module './no_such_envs.py'",
                      f"there is no file {tmp_path / 'no_such_envs.py'}")
    (tmp_path / "envs_folder").mkdir()
    assert_user_error(dreamer("collect", "--env-module", "./envs_folder", "--env", "TinyFileEnv-v0",
                              "--out", tmp_path / "a", "--steps", 5), "not a .py file")
    assert not (tmp_path / "a").exists()


def test_train_prints_plain_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    """nohup, SLURM, CI: stderr is a pipe, so instead of a live bar (which would print nothing
    until the end) plain lines with the count: at the start, every --progress-seconds, after
    each evaluation (here at env steps 32 and 48: prefill, then every 48) and at the end."""
    import re

    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    done = subprocess.run(
        [sys.executable, "-m", "dreamer_core", "train", "--env", "dreamer/DummyDiscrete-v0", "--preset", "tiny",
         "--steps", "96", "--prefill", "32", "--eval-every", "48", "--eval-episodes", "1", "--threads", "1",
         "--out", str(tmp_path / "run"), "--progress-seconds", "0.5"],
        capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stderr  # no terminal control codes
    lines = [line for line in done.stderr.splitlines() if line.startswith("train dreamer/DummyDiscrete-v0 ")]
    counts = [int(re.match(r"train \S+ (\d+)/96 \(\d+%\) \| ", line).group(1)) for line in lines]
    assert counts[0] == 0 and counts[-1] == 96 and counts == sorted(counts), lines
    assert all(re.search(r" \| \d+s \| ETA (-|\d+s)$", line) for line in lines), lines
    assert any(32 <= c <= 33 for c in counts) and any(48 <= c <= 49 for c in counts), lines  # evaluations
    assert len(lines) >= 5, lines  # start, 2 evaluations, the end, and lines by time between
    assert re.search(r"steps/s \| \d+ updates .* \| eval \d", lines[-1]), lines[-1]  # the stage's status
    assert "trained 96 env steps" in done.stdout


def test_progress_seconds_must_be_positive(tmp_path):
    assert_user_error(dreamer("train", "--env", "CartPole-v1", "--out", tmp_path / "r", "--progress-seconds", 0),
                      "--progress-seconds must be above 0", "--quiet")
    assert not (tmp_path / "r").exists()


# --- issue 17: skipped shards named, a damaged replay on --resume, a full disk under `dreamer train` ---


def test_skip_corrupt_names_each_skipped_shard_and_records_it(tmp_path):
    """One shard with an unreadable header (skipped when the dataset opens), one holding NaN
    (left out when the replay loads it): each gets a line on stderr as training starts and an
    entry in the run's config, for stage 02 and stage 03."""
    import yaml

    from dreamer_core import runs

    out = tmp_path / "ds"
    result = dreamer("collect", "--env", "dreamer/DummyDiscrete-v0", "--out", out, "--episodes", 9,
                     "--shard-episodes", 3, "-q")
    assert result.exit_code == 0, result.output
    _, truncated, with_nan = store.shard_paths(out)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with h5py.File(with_nan, "r+") as f:
        f["steps/reward"][2] = np.nan
    run = tmp_path / "run"
    for command, section in ((["train-world-model", out, "--out", run], "train-world-model"),
                             (["train-behavior", "--run", run], "train-behavior")):
        result = dreamer(*command, "--skip-corrupt", "--preset", "tiny", "--updates", 2, "-q")
        assert result.exit_code == 0, result.output
        lines = [line for line in result.stderr.splitlines() if line.startswith("skipped corrupt shard")]
        assert len(lines) == 2, result.stderr
        assert lines[0].startswith(f"skipped corrupt shard {truncated}: ") and "corrupt or truncated" in lines[0]
        assert lines[1].startswith(f"skipped corrupt shard {with_nan}: ") and "NaN or inf" in lines[1]
        recorded = yaml.safe_load((run / runs.CONFIG).read_text())[section]["records"]["skipped_shards"]
        assert recorded == runs.config_records(run, section)["skipped_shards"]
        assert [entry["path"] for entry in recorded] == [str(truncated), str(with_nan)]
        assert all(entry["reason"] for entry in recorded)


ONLINE_TINY = ["--prefill", 64, "--eval-every", 0, "--eval-episodes", 0, "--preset", "tiny", "--threads", 1, "-q"]


def test_resume_names_a_replay_shard_holding_nan(tmp_path):
    run = tmp_path / "run"
    result = dreamer("train", "--env", "CartPole-v1", "--steps", 80, "--out", run, *ONLINE_TINY,
                     "--set", "shard_seconds=0.001")
    assert result.exit_code == 0, result.output
    shards = store.shard_paths(run / "replay")
    assert len(shards) >= 2
    with h5py.File(shards[1], "r+") as f:
        f["steps/reward"][1] = np.inf
    result = dreamer("train", "--resume", "--steps", 100, "--out", run, "-q")
    assert_user_error(result, f"replay shard {shards[1]}", "steps/reward holds inf at row 1 of the shard",
                      f"Move the shard out of {run / 'replay'}", f"dreamer train --resume --out {run}")
    shards[1].rename(tmp_path / shards[1].name)  # as the message says
    result = dreamer("train", "--resume", "--steps", 100, "--out", run, "-q")
    assert result.exit_code == 0, result.output
    assert "trained 100 env steps" in result.output


@pytest.fixture
def pixel_disk(tmp_path):
    """A 1 MiB tmpfs (root only): room for an online run's config and a few replay shards."""
    yield from mounted_tmpfs(tmp_path / "pixels", "1m")


def test_train_on_a_really_full_disk_says_how_to_resume(pixel_disk):
    """`dreamer train` fills its disk with replay shards: a clean exit with one paragraph, every
    shard closed before intact, and once space is freed the run continues with --resume."""
    run = pixel_disk / "run"
    args = ["--pixels", "--prefill", 5000, "--eval-every", 0, "--eval-episodes", 0, "--preset", "tiny",
            "--threads", 1, "--set", "shard_seconds=0.001", "-q"]
    done = subprocess.run([sys.executable, "-m", "dreamer_core", "train", "--env", "CartPole-v1", "--steps", "5000",
                           "--out", str(run), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]  # no signal, no traceback
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    paragraph = [line for line in done.stderr.splitlines()
                 if line.startswith("error: ") and "XDG_RUNTIME_DIR" not in line]  # SDL's own notice
    assert len(paragraph) == 1, done.stderr[-2000:]
    assert "No space left on device" in paragraph[0] and "intact and readable" in paragraph[0]
    assert f"continue the run with `dreamer train --resume --out {run}`" in paragraph[0]
    assert "run the command again" not in paragraph[0]  # the same command is refused: the run exists
    replay = run / "replay"
    assert store.partial_paths(replay) == [] and store.shard_paths(replay)
    held = Dataset(replay).num_steps
    assert subprocess.run(["mount", "-o", "remount,size=64m", str(pixel_disk)], capture_output=True).returncode == 0
    result = dreamer("train", "--resume", "--steps", held + 40, "--out", run, "-q")
    assert result.exit_code == 0, result.output
    assert f"trained {held + 40} env steps" in result.output
    assert Dataset(replay).num_steps == held + 40
