"""Every user-fixable problem is a DreamerError subclass whose message names the fix."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from dreamer_core.envs import EnvConfig, env_ids_like, make_env, make_env_pool
from dreamer_core.errors import DreamerError, MissingDependencyError, UnknownEnvError


def forget_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Drop ``name`` and its submodules from sys.modules (restored after the test)."""
    for module in list(sys.modules):
        if module == name or module.startswith(name + "."):
            monkeypatch.delitem(sys.modules, module)


def hide_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``import name`` (and its submodules) fail as if it were not installed."""
    forget_module(monkeypatch, name)
    monkeypatch.setitem(sys.modules, name, None)


def test_unknown_id_lists_close_ids() -> None:
    with pytest.raises(UnknownEnvError) as info:
        make_env(EnvConfig("CartPol-v1"))
    message = str(info.value)
    assert "CartPole-v1" in message and "--env-module" in message
    assert "\n" not in message
    assert "CartPole-v1" in env_ids_like("cartpol-v1")
    assert "dmc:walker-walk" in env_ids_like("dmc:walker-wlak") or "dm_control" not in sys.modules


@pytest.mark.parametrize(
    "env_id, hidden, package, extra",
    [
        ("ALE/Pong-v5", "ale_py", "ale-py", "atari"),
        ("ALE/Pong-v5", "cv2", "opencv-python-headless", "atari"),
        ("retro:Airstriker-Genesis-v0", "stable_retro", "stable-retro", "retro"),
        ("dmc:cartpole-balance", "dm_control", "dm-control", "dmc"),
    ],
)
def test_missing_optional_package(
    monkeypatch: pytest.MonkeyPatch, env_id: str, hidden: str, package: str, extra: str
) -> None:
    if hidden == "cv2":
        pytest.importorskip("ale_py")
    hide_module(monkeypatch, hidden)
    with pytest.raises(MissingDependencyError) as info:
        make_env(EnvConfig(env_id))
    assert info.value.package == package and info.value.extra == extra
    assert f"pip install 'dreamer-core[{extra}]'" in str(info.value)


@pytest.mark.parametrize("obs", ["default", "pixels"])
def test_missing_box2d(monkeypatch: pytest.MonkeyPatch, obs: str) -> None:
    hide_module(monkeypatch, "Box2D")
    forget_module(monkeypatch, "gymnasium.envs.box2d")  # re-import it without Box2D
    with pytest.raises(MissingDependencyError) as info:
        make_env(EnvConfig("LunarLander-v3", obs=obs))
    assert info.value.package == "box2d" and "dreamer-core[box2d]" in str(info.value)


@pytest.mark.retro
def test_retro_rom_not_installed() -> None:
    pytest.importorskip("stable_retro")
    with pytest.raises(DreamerError) as info:
        make_env(EnvConfig("retro:SonicTheHedgehog-Genesis-v0"))
    assert "python -m stable_retro.import" in str(info.value)


@pytest.mark.retro
def test_retro_unknown_game() -> None:
    pytest.importorskip("stable_retro")
    with pytest.raises(UnknownEnvError, match="retro:Airstriker-Genesis-v0"):
        make_env(EnvConfig("retro:Airstrikr-Genesis"))


@pytest.mark.dmc
def test_dmc_bad_task_lists_tasks() -> None:
    pytest.importorskip("dm_control")
    with pytest.raises(UnknownEnvError) as info:
        make_env(EnvConfig("dmc:walker-fly"))
    assert "dmc:walker-walk" in str(info.value) and "dmc:walker-run" in str(info.value)
    with pytest.raises(UnknownEnvError, match="Domains:"):
        make_env(EnvConfig("dmc:spaceship-fly"))


@pytest.mark.atari
def test_atari_unknown_game() -> None:
    pytest.importorskip("ale_py")
    with pytest.raises(UnknownEnvError, match="ALE/Pong-v5"):
        make_env(EnvConfig("ALE/Pongg-v5"))


def test_env_module_that_does_not_exist() -> None:
    with pytest.raises(DreamerError) as info:
        make_env(EnvConfig("Whatever-v0", env_module="no_such_module_for_dreamer"))
    assert "no_such_module_for_dreamer" in str(info.value) and "--env-module" in str(info.value)


USER_MODULE = """
import gymnasium as gym
import numpy as np


class CounterEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = gym.spaces.Box(0, 100, (2, 2), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full((2, 2), self.t, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.full((2, 2), self.t, np.float32), float(action), self.t >= 3, False, {}

    def render(self):
        return np.full((10, 10, 3), 7, np.uint8)


gym.register("ENV_ID", entry_point="MODULE:CounterEnv")
"""


def test_env_module_registers_user_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = f"user_envs_{uuid.uuid4().hex[:8]}"
    env_id = f"UserCounter{module[-8:]}-v0"
    (tmp_path / f"{module}.py").write_text(
        USER_MODULE.replace("ENV_ID", env_id).replace("MODULE", module)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownEnvError, match="--env-module"):
        make_env(EnvConfig(env_id))
    cfg = EnvConfig(env_id, obs="both", size=(8, 8), env_module=module)
    env = make_env(cfg, seed=0)
    obs, _ = env.reset()
    assert obs["vector"].shape == (4,) and obs["image"].shape == (8, 8, 3)
    obs, reward, *_ = env.step(1)
    assert np.all(obs["vector"] == 1.0) and reward == 1.0
    env.close()
    with make_env_pool(cfg, 2, seed=0, backend="async") as pool:
        obs = pool.reset()
        assert obs["image"].shape == (2, 8, 8, 3)
    gym.registry.pop(env_id, None)


def test_env_module_as_file_path(tmp_path: Path) -> None:
    module = f"user_file_envs_{uuid.uuid4().hex[:8]}"
    env_id = f"UserFile{module[-8:]}-v0"
    path = tmp_path / f"{module}.py"
    path.write_text(USER_MODULE.replace("ENV_ID", env_id).replace("MODULE", module))
    cfg = EnvConfig(env_id, env_module=str(path))
    for _ in range(2):  # the second import is a no-op
        env = make_env(cfg, seed=0)
        assert env.observation_space["vector"].shape == (4,)
        env.close()
    with pytest.raises(DreamerError, match="PYTHONPATH"):
        make_env(EnvConfig(env_id, env_module=str(tmp_path / "missing.py")))
    gym.registry.pop(env_id, None)


def test_messages_are_one_paragraph() -> None:
    problems = [
        lambda: make_env(EnvConfig("NoSuchEnv-v3")),
        lambda: make_env(EnvConfig("CartPole-v1", kwargs={"no_such_arg": 1})),
        lambda: EnvConfig("CartPole-v1", size=(0, 64)),
    ]
    for problem in problems:
        with pytest.raises(DreamerError) as info:
            problem()
        assert "\n" not in str(info.value)
