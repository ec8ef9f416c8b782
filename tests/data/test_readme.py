"""data/README.md: its plain-h5py example runs against a dataset written here (so it cannot drift)."""

import contextlib
import io
import re
from pathlib import Path

import gymnasium as gym
import numpy as np

from dreamer_core.data.dataset import Dataset
from dreamer_core.data.writer import DatasetWriter
from tests.common import make_episode

README = Path(__file__).resolve().parents[2] / "data" / "README.md"


def readme_example() -> str:
    """The Python block under "Reading a shard with plain h5py"."""
    text = README.read_text()
    section = text.split("## Reading a shard with plain h5py", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section should hold exactly one Python example"
    return blocks[0]


def test_readme_h5py_example_runs_on_a_written_dataset(tmp_path, monkeypatch):
    obs_space = gym.spaces.Dict({"vector": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)})
    action_space = gym.spaces.Discrete(2)
    episodes = [make_episode(obs_space, action_space, steps=3 + i, terminated=i != 1, episode_id=i)
                for i in range(3)]
    out = tmp_path / "data" / "cartpole"  # the path the example names, relative to the cwd
    with DatasetWriter(out, "CartPole-v1", {"id": "CartPole-v1"}, obs_space, action_space) as writer:
        for episode in episodes:
            writer.add_episode(episode)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(readme_example(), str(README), "exec"), {"__name__": "readme_example"})
    lines = printed.getvalue().splitlines()
    assert lines[0].startswith("CartPole-v1 {'type': 'Discrete', 'n': 2")
    assert len(lines) == 1 + len(episodes)
    for line, episode in zip(lines[1:], episodes):
        assert f"{episode.steps} steps, return {episode.ret:.1f}" in line
        assert f"terminated {episode.terminated}" in line
    assert Dataset(out).num_episodes == len(episodes)
