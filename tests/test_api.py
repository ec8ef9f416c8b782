"""The Python API (dreamer_core.api and its lazy re-export by the package): the guide's example
runs as written, each stage function runs on a tiny budget, callbacks see the right steps, a
user's encoder registered by name survives stages 02 -> 03 -> 04 (the last in a fresh process
through the CLI), and bad names are clear errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import dreamer_core
from dreamer_core import api, checkpoint
from dreamer_core.errors import DreamerError
from dreamer_core.logging import read_metrics
from dreamer_core.nets import encoders
from tests.common import OBS_SPACES, tiny_world_model_config
from tests.nets import single_thread  # noqa: F401  (autouse fixture: tiny models, one thread)

ROOT = Path(__file__).resolve().parents[1]
TOY = "dreamer/DummyDiscrete-v0"
QUIET = dict(progress=False, threads=1, device="cpu", loggers="none")  # the training stages' common settings


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A dataset of the toy env written by ``api.collect`` (about 30 episodes)."""
    out = tmp_path_factory.mktemp("api") / "data"
    result = api.collect(TOY, out, steps=600, progress=False)
    assert result.steps == 600 and result.episodes > 10 and Path(result.out) == out
    return out


# --- the package face --------------------------------------------------------------------------


def test_the_package_reexports_the_api_lazily():
    assert sorted(dreamer_core._API) == sorted(api.__all__)
    for name in api.__all__:
        assert getattr(dreamer_core, name) is getattr(api, name), name
    assert set(api.__all__) <= set(dir(dreamer_core))
    with pytest.raises(AttributeError):
        dreamer_core.no_such_name  # noqa: B018
    code = "import sys, dreamer_core; print(sorted(m for m in ('torch', 'dreamer_core.api') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"  # `import dreamer_core` imports neither torch nor the API


# --- the guide's example --------------------------------------------------------------------------


def guide_example() -> str:
    text = (ROOT / "docs" / "api" / "index.md").read_text()
    match = re.search(r"<!-- example: tensors -->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/api/index.md lost its example block"
    return match.group(1)


def test_the_guides_example_trains_a_world_model_on_tensors(tmp_path, monkeypatch, capsys):
    code = guide_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 20
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    exec(compile(code, "docs/api/index.md", "exec"), {"__name__": "guide_example"})
    losses = [float(x) for x in re.findall(r"loss ([-\d.]+)", capsys.readouterr().out)]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]


# --- the stages as functions and callbacks -----------------------------------------------------


class Recorder(api.Callback):
    def __init__(self):
        self.updates: list[int] = []
        self.evals: list[tuple[int, dict]] = []
        self.checkpoints: list[tuple[int, Path]] = []

    def on_update(self, step, metrics):
        assert all(isinstance(v, float) for v in metrics.values())
        self.updates.append(step)

    def on_eval(self, step, result):
        self.evals.append((step, result))

    def on_checkpoint(self, step, path):
        assert Path(path).exists()
        self.checkpoints.append((step, Path(path)))


class OnlyCheckpoints:
    """Any object with some of the hooks will do."""

    def __init__(self):
        self.steps: list[int] = []

    def on_checkpoint(self, step, path):
        self.steps.append(step)


def test_stage_functions_call_the_callbacks_at_their_steps(data, tmp_path):
    run = tmp_path / "run"
    wm, duck = Recorder(), OnlyCheckpoints()
    result = api.train_world_model(data, run, presets=["tiny"], updates=6, log_every=2, eval_every=3,
                                   checkpoint_every=3, callbacks=[wm, duck], **QUIET)
    assert result["updates"] == 6 and math.isfinite(result["wm/loss"])
    assert wm.updates == [1, 2, 3, 4, 5, 6]
    assert [step for step, _ in wm.evals] == [3, 6] and "val/wm/loss" in wm.evals[-1][1]
    assert wm.checkpoints == [(3, run / "checkpoints" / "latest.pt"), (6, run / "checkpoints" / "latest.pt")]
    assert duck.steps == [3, 6]

    behavior = Recorder()
    result = api.train_behavior(run, presets=["tiny"], updates=4, checkpoint_every=2, callbacks=[behavior], **QUIET)
    assert result["updates"] == 4 and "imag/return" in result
    assert behavior.updates == [1, 2, 3, 4] and behavior.evals == []
    assert [step for step, _ in behavior.checkpoints] == [2, 4]

    report = api.evaluate(run, episodes=1, threads=1, device="cpu", progress=False)
    assert report.report["episodes"] == 1 and (report.folder / "report.json").exists()


def test_train_online_calls_the_callbacks_with_env_steps(tmp_path):
    run = tmp_path / "online"
    seen = Recorder()
    result = api.train(TOY, run, presets=["tiny"], steps=150, prefill=100, train_ratio=16.0, eval_every=40,
                       eval_episodes=1, checkpoint_seconds=0, callbacks=[seen], **QUIET)
    assert result["env_steps"] == 150 and not result["interrupted"]
    assert len(seen.updates) == result["updates"] > 0
    assert seen.updates == sorted(seen.updates) and 100 <= seen.updates[0] and seen.updates[-1] <= 150
    logged = [r["step"] for r in read_metrics(run) if "eval/return" in r]
    assert [step for step, _ in seen.evals] == logged == [100, 120, 150]
    assert seen.evals[-1][1]["eval/return"] == result["eval_return"]
    assert seen.checkpoints == [(150, run / "checkpoints" / "online_latest.pt")]


def test_an_exception_in_a_callback_ends_the_run(data, tmp_path):
    class Boom(api.Callback):
        def on_update(self, step, metrics):
            if step == 2:
                raise RuntimeError("stop here")

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stop here"):
        api.train_world_model(data, run, presets=["tiny"], updates=5, checkpoint_every=1, callbacks=[Boom()],
                              **QUIET)
    assert not (run / ".lock").exists()  # the run is released, and resumable from its checkpoint
    assert checkpoint.load(run / "checkpoints" / "latest.pt", checkpoint.TrainState).counters["update"] == 1
    result = api.train_world_model(None, run, resume=True, progress=False)
    assert result["updates"] == 5


# --- encoders and decoders by name ---------------------------------------------------------------

USER_NETS = '''
"""A user's own encoder, registered by name (written by tests/test_api.py)."""
import os

import numpy as np
import torch
from torch import nn

import dreamer_core as dc


@dc.register_encoder("{name}")
class FlatEncoder(nn.Module):
    def __init__(self, observation_space, **options):
        super().__init__()
        self.keys = sorted(observation_space.spaces)
        self.embed_dim = 7
        self.linear = nn.Linear(sum(int(np.prod(observation_space[k].shape)) for k in self.keys), 7)
        if os.environ.get("API_TEST_LOG"):
            with open(os.environ["API_TEST_LOG"], "a") as log:
                log.write("built\\n")

    def forward(self, obs):
        return torch.tanh(self.linear(torch.cat([obs[k].float() for k in self.keys], -1)))
'''


def write_user_module(folder: Path, stem: str, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}.py"
    path.write_text(USER_NETS.replace("{name}", name))
    return path


def import_file(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def forget(monkeypatch, stem: str, name: str) -> None:
    """As a fresh process would be: the module not imported, the name not registered."""
    monkeypatch.delitem(sys.modules, stem, raising=False)
    monkeypatch.delitem(encoders._REGISTRY["encoder"], name, raising=False)


def test_a_registered_encoder_survives_stages_02_03_04(data, tmp_path, monkeypatch):
    log = tmp_path / "built.log"
    monkeypatch.setenv("API_TEST_LOG", str(log))
    path = write_user_module(tmp_path / "user", "api_test_user_nets", "api_test_flat")
    import_file(path)  # the user's script imports its module, which registers the encoder
    assert "api_test_flat" in api.encoder_names()
    run = tmp_path / "run"
    api.train_world_model(data, run, presets=["tiny"], updates=4, model__encoder__name="api_test_flat", **QUIET)
    artifact = checkpoint.load(run / "world_model.pt", checkpoint.WorldModelArtifact)
    # the module is not importable by name from here, so the file is stored with the name
    assert artifact.model_config["encoder"]["name"] == f"{path.resolve()}:api_test_flat"
    assert artifact.stage_config["model"]["encoder"]["name"] == f"{path.resolve()}:api_test_flat"  # resume too
    assert artifact.weights["encoder.linear.weight"].shape == (7, 4)
    assert log.read_text().count("built") == 1

    forget(monkeypatch, path.stem, "api_test_flat")  # stage 03 imports the module from the checkpoint
    api.train_behavior(run, presets=["tiny"], updates=2, **QUIET)
    assert log.read_text().count("built") == 2

    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # stage 04 in a fresh process, through the CLI
    result = subprocess.run([sys.executable, "-m", "dreamer_core", "evaluate", "--run", str(run), "--episodes", "1",
                             "--threads", "1", "--device", "cpu", "-q"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert log.read_text().count("built") == 3
    report = json.loads(next((run / "eval").glob("*/report.json")).read_text())
    assert report["episodes"] == 1

    path.rename(path.with_suffix(".moved"))  # the module is gone: a clear error, not a traceback
    forget(monkeypatch, path.stem, "api_test_flat")
    with pytest.raises(DreamerError, match="cannot be imported") as error:
        api.load_world_model(run)
    assert str(path.resolve()) in str(error.value)


def test_names_are_stored_with_their_importable_module(tmp_path, monkeypatch):
    write_user_module(tmp_path, "api_test_dotted_nets", "api_test_dotted")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("api_test_dotted_nets")
    assert encoders.qualified_name("encoder", "api_test_dotted") == "api_test_dotted_nets:api_test_dotted"
    assert encoders.qualified_name("encoder", "default") == "default"
    assert encoders.qualified_name("encoder", "pkg.mod:x") == "pkg.mod:x"
    monkeypatch.chdir(tmp_path)
    assert encoders.qualified_name("decoder", "./nets.py:x") == f"{(tmp_path / 'nets.py').resolve()}:x"
    # a module:name spec imports the module itself
    forget(monkeypatch, "api_test_dotted_nets", "api_test_dotted")
    cfg = api.world_model_config("tiny", encoder__name="api_test_dotted_nets:api_test_dotted")
    model = api.WorldModel(cfg, OBS_SPACES["vector"], gym.spaces.Discrete(3))
    assert model.state_dict()["encoder.linear.weight"].shape == (7, 3)


def test_unknown_names_and_bad_factories_are_clear_errors(data, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(DreamerError, match="Unknown encoder 'nope'.*register_encoder") as error:
        api.train_world_model(data, out, presets=["tiny"], model__encoder__name="nope", **QUIET)
    assert re.search(r"\(registered: [^)]*\bdefault\b", str(error.value)) and ".." not in str(error.value)
    assert not out.exists()  # refused before anything was written
    with pytest.raises(DreamerError, match="module 'no_such_pkg_xyz', which cannot be imported"):
        api.world_model_config(encoder__decoder="no_such_pkg_xyz:dec")
    with pytest.raises(DreamerError, match="Unknown encoder 'nope'"):
        api.WorldModel(dataclasses.replace(tiny_world_model_config(), encoder=api.EncoderConfig(name="nope")),
                       OBS_SPACES["vector"], gym.spaces.Discrete(3))
    with pytest.raises(DreamerError, match="Unknown config key 'model.encoder.nam'"):
        api.train_world_model(data, out, model__encoder__nam="default", **QUIET)
    with pytest.raises(DreamerError, match="without ':'"):
        api.register_encoder("a:b", torch.nn.Identity)
    api.register_encoder("api_test_no_dim", lambda space, **options: torch.nn.Identity())
    with pytest.raises(DreamerError, match="embed_dim"):
        api.WorldModel(api.world_model_config("tiny", encoder__name="api_test_no_dim"), OBS_SPACES["vector"],
                       gym.spaces.Discrete(3))
    other = textwrap.dedent("""
        import torch
        from dreamer_core.nets.encoders import register_encoder
        register_encoder("api_test_no_dim", torch.nn.Identity)
    """)
    with pytest.raises(DreamerError, match="name 'api_test_no_dim' is taken"):
        exec(other, {"__name__": "another_module"})


def test_world_models_saved_without_names_load_with_the_default_networks(tmp_path):
    cfg = tiny_world_model_config()
    model = api.WorldModel(cfg, OBS_SPACES["vector"], gym.spaces.Discrete(3))
    path = tmp_path / "world_model.pt"
    model.save(path)
    blob = torch.load(path, weights_only=False)
    del blob["model_config"]["encoder"]["name"], blob["model_config"]["encoder"]["decoder"]  # as before 0.3.0
    torch.save(blob, path)
    loaded, _ = api.WorldModel.load(path)
    assert loaded.cfg.encoder.name == loaded.cfg.encoder.decoder == "default"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_configs_from_presets_and_settings():
    cfg = api.world_model_config("tiny", rssm__deter=32, **{"heads.units": 8})
    assert (cfg.rssm.deter, cfg.heads.units, cfg.rssm.stoch) == (32, 8, 8)
    assert api.behavior_config("tiny", horizon=7).horizon == 7
    with pytest.raises(DreamerError, match="rssm.deter"):
        api.world_model_config(rssm__deter=0)
    with pytest.raises(DreamerError, match="only updates, datasets, loggers may change"):
        api.train_world_model(None, "runs/x", resume=True, batch_size=3)
    assert np.isfinite(api.OptimConfig().lr)
