"""Config files through the real CLI (typer's CliRunner): ``--config FILE`` applied over the
defaults and before ``--preset``, the flags and ``--set``; ``--print-config`` (prints the resolved
config, writes nothing); one ``RUN/config.yaml`` per run with a section per command, which
``--config`` reads back into the identical config; runs of 0.3.0 and earlier (one file per
command) still read; bad files refused in one paragraph with nothing written. Mostly
``--print-config``: two 2-update trainings in all."""

from __future__ import annotations

import dataclasses
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dreamer_core import cli, runs
from dreamer_core import config as config_lib
from dreamer_core.cli import app
from dreamer_core.stages import common

runner = CliRunner()
DUMMY = "dreamer/DummyDiscrete-v0"


def dreamer(*args):
    return runner.invoke(app, [str(a) for a in args])


def printed(*args) -> str:
    """What ``--print-config`` prints (it must succeed and print nothing on stderr)."""
    result = dreamer(*args, "--print-config")
    assert result.exit_code == 0, result.output
    assert result.stderr == "", result.stderr
    return result.stdout


def resolved(command: str, *args) -> dict:
    """The resolved config of `dreamer {command} ARGS` as plain data."""
    return yaml.safe_load(printed(command, *args))[command]["config"]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its bytes and modification time (directories: their time)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns)
            for p in sorted(Path(root).rglob("*"))} | {".": (None, Path(root).stat().st_mtime_ns)}


def assert_refused(result, *needles) -> None:
    """Exit code 2, one paragraph (one line after ``error:``), no traceback, each needle in it."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


WM_ARGS = ["--preset", "tiny", "--updates", 2, "--seed", 1, "--set", "eval_every=0", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset and a run with a world model and a behavior (tiny, 2 updates each)."""
    root = tmp_path_factory.mktemp("config_file")
    ds, run = root / "ds", root / "run"
    assert dreamer("collect", "--env", DUMMY, "--out", ds, "--steps", 300, "-q").exit_code == 0
    result = dreamer("train-world-model", ds, "--out", run, *WM_ARGS)
    assert result.exit_code == 0, result.output
    result = dreamer("train-behavior", "--run", run, "--updates", 2, "--threads", 1, "-q")
    assert result.exit_code == 0, result.output
    return ds, run


# --- one file per run, and the round trip -----------------------------------------------------------


def test_a_run_keeps_one_config_file_with_a_section_per_command(trained):
    _, run = trained
    data = yaml.safe_load((run / runs.CONFIG).read_text())
    assert list(data) == ["train-world-model", "train-behavior"]
    assert not (run / "behavior_config.yaml").exists() and not (run / "train_config.yaml").exists()
    for command in data:
        assert runs.read_config(run, command) == data[command]["config"]
        assert runs.config_file(run, command) == run / runs.CONFIG
    assert data["train-behavior"]["config"]["threads"] == 1 and data["train-world-model"]["config"]["seed"] == 1


def test_a_runs_config_file_gives_back_the_identical_config(trained, tmp_path):
    """`--config RUN/config.yaml` and nothing else resolves to the config the run saved, and to
    what the original command line resolves to; the printed config is itself a --config file.
    Per-run settings (out, run, datasets) come from the file unless their flag is given."""
    ds, run = trained
    saved = yaml.safe_load((run / runs.CONFIG).read_text())
    for command, original in (("train-world-model", [ds, "--out", run, *WM_ARGS[:-1]]),
                              ("train-behavior", ["--run", run, "--updates", 2, "--threads", 1])):
        text = printed(command, "--config", run / runs.CONFIG)
        assert yaml.safe_load(text)[command]["config"] == saved[command]["config"]
        assert printed(command, *original) == text
        again = tmp_path / f"{command}.yaml"
        again.write_text(text)
        assert printed(command, "--config", again) == text
    moved = resolved("train-world-model", "--config", run / runs.CONFIG, "--out", tmp_path / "elsewhere")
    assert moved == {**saved["train-world-model"]["config"], "out": str(tmp_path / "elsewhere")}
    other = resolved("train-world-model", "--config", run / runs.CONFIG, "--dataset", tmp_path / "other")
    assert other["datasets"] == [str(tmp_path / "other")]


@pytest.mark.parametrize("command,args", [
    ("collect", ["--env", DUMMY, "--out", "data/x", "--episodes", 7, "--preset", "atari100k", "--set",
                 "env.size=[32,32]", "--set", "env.kwargs=[[\"render_mode\",\"rgb_array\"]]"]),
    ("train", ["--env", DUMMY, "--out", "runs/x", "--preset", "dreamerv3-2025", "--preset", "tiny", "--seed", 3,
               "--pixels", "--threads", 1, "--set", "model.encoder.cnn_mults=[1,2]"]),
    ("evaluate", ["--run", "runs/x", "--episodes", 3, "--mode", "sample", "--threads", 2]),
    ("dream", ["--run", "runs/x", "--out", "d.mp4", "--context", 3, "--device", "cpu"]),
])
def test_a_printed_config_is_a_config_file_of_the_same_config(tmp_path, command, args):
    text = printed(command, *args)
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    assert printed(command, "--config", path) == text


def test_precedence_is_file_then_preset_then_flag_then_set(trained, tmp_path):
    ds, _ = trained
    path = tmp_path / "settings.yaml"  # plain settings, nested and dotted keys
    path.write_text("seq_len: 7\nupdates: 11\nmodel:\n  rssm:\n    deter: 100\nmodel.heads.units: 5\n")
    base = ["train-world-model", ds, "--out", tmp_path / "run", "--config", path]
    cfg = resolved(*base)
    assert (cfg["seq_len"], cfg["updates"], cfg["model"]["rssm"]["deter"], cfg["model"]["heads"]["units"]) == (7, 11, 100, 5)
    cfg = resolved(*base, "--preset", "tiny")  # tiny: seq_len 16, deter 64, units 64
    assert (cfg["seq_len"], cfg["updates"], cfg["model"]["rssm"]["deter"], cfg["model"]["heads"]["units"]) == (16, 11, 64, 64)
    cfg = resolved(*base, "--preset", "tiny", "--seq-len", 9, "--updates", 12)
    assert (cfg["seq_len"], cfg["updates"], cfg["model"]["rssm"]["deter"]) == (9, 12, 64)
    cfg = resolved(*base, "--preset", "tiny", "--seq-len", 9, "--set", "seq_len=10", "--set", "model.rssm.deter=32")
    assert (cfg["seq_len"], cfg["updates"], cfg["model"]["rssm"]["deter"]) == (10, 11, 32)
    assert resolved(*base)["device"] == "auto" and resolved(*base, "--device", "cpu")["device"] == "cpu"
    path.write_text("device: cpu\n")  # an option left out is not given: the file's value stays
    assert resolved(*base)["device"] == "cpu"


def test_print_config_writes_nothing(trained, tmp_path):
    ds, run = trained
    before, run_before = snapshot(tmp_path), snapshot(run)
    printed("collect", "--env", DUMMY, "--out", tmp_path / "new" / "ds")
    printed("train-world-model", ds, "--out", tmp_path / "new" / "run")
    printed("train-behavior", "--run", run)
    printed("train-behavior", "--run", run, "--resume", "--updates", 9)
    printed("train-world-model", "--out", run, "--resume", "--updates", 9)
    printed("evaluate", "--run", run)
    printed("train", "--env", DUMMY, "--out", tmp_path / "new" / "online")
    printed("dream", "--run", run, "--out", tmp_path / "new" / "d.gif")
    assert snapshot(tmp_path) == before and snapshot(run) == run_before


def test_resume_prints_its_stored_config_and_refuses_a_file_that_would_change_it(trained, tmp_path):
    _, run = trained
    stored = runs.read_config(run, "train-world-model")
    assert resolved("train-world-model", "--out", run, "--resume", "--updates", 9) == {**stored, "updates": 9}
    assert resolved("train-world-model", "--out", run, "--resume", "--config", run / runs.CONFIG) == stored
    changed = tmp_path / "changed.yaml"
    changed.write_text("seq_len: 9\nupdates: 20\n")
    before = snapshot(run)
    assert_refused(dreamer("train-world-model", "--out", run, "--resume", "--config", changed, "-q"),
                   f"seq_len (set in --config {changed})", "cannot change now")
    assert "updates (set in --config" in dreamer("train-world-model", "--out", run, "--resume", "--config",
                                                 changed, "-q").output
    result = dreamer("train-world-model", "--out", run, "--resume", "--config", changed, "--updates", 20, "-q")
    assert_refused(result, "seq_len (set in --config")
    assert "updates (set in --config" not in result.output  # the flag wins over the file
    assert snapshot(run) == before


# --- the same options on every command ------------------------------------------------------------


def test_shared_options_are_spelled_the_same_on_every_command(trained, tmp_path):
    ds, run = trained
    out = tmp_path / "x"
    commands = {
        "collect": ["--env", DUMMY, "--out", out], "train-world-model": ["--out", out, "--dataset", ds],
        "train-behavior": ["--run", run], "evaluate": ["--run", run], "train": ["--env", DUMMY, "--out", out],
        "dream": ["--run", run, "--out", out / "d.gif"],
    }
    for command, args in commands.items():
        cfg = resolved(command, *args, "--seed", 5, "--device", "cpu")
        assert (cfg["seed"], cfg["device"]) == (5, "cpu"), command
        if "threads" in cfg:
            assert resolved(command, *args, "--threads", 1)["threads"] == 1, command
    assert resolved("train-world-model", "--out", out, "--dataset", ds)["datasets"] == [str(ds)]
    assert resolved("train-world-model", ds, "--out", out, "--dataset", tmp_path / "b")["datasets"] == [
        str(ds), str(tmp_path / "b")]
    assert resolved("train-behavior", "--run", run, "--dataset", ds, "--dataset", tmp_path / "b")["datasets"] == [
        str(ds), str(tmp_path / "b")]


def test_a_files_episode_budget_alone_replaces_the_default_step_budget(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("env: {id: CartPole-v1}\nout: data/x\nepisodes: 4\n")
    cfg = resolved("collect", "--config", path)
    assert (cfg["steps"], cfg["episodes"], cfg["env"]["id"], cfg["out"]) == (0, 4, "CartPole-v1", "data/x")
    assert resolved("collect", "--config", path, "--steps", 50, "--episodes", 0)["steps"] == 50


def test_no_config_has_a_field_named_like_a_section_or_a_section_part():
    """A file's top-level keys tell sections (command names) from settings; a section's keys
    tell {config:, records:} from settings. No config may use those names."""
    reserved = {*config_lib.COMMAND_NAMES, *config_lib.SECTION_PARTS, "stage"}
    assert set(cli.COMMAND_CONFIGS) == set(config_lib.COMMAND_NAMES)
    for command, where in cli.COMMAND_CONFIGS.items():
        cls = cli._config_class(*where)
        assert not {f.name for f in dataclasses.fields(cls)} & reserved, command
        assert all(typing.get_type_hints(cls)[f.name] is not None for f in dataclasses.fields(cls))


# --- bad input: one paragraph, exit 2, nothing written ------------------------------------------------


BAD = [
    ("missing", None, ["The config file", "missing.yaml does not exist"]),
    ("not-yaml", "updates: [1, 2\n", ["is not YAML", "line 2"]),
    ("binary", b"\x80\x81\xfe\x00", ["is not YAML"]),
    ("a-list", "- updates\n- 5\n", ["holds a list, not a mapping of settings"]),
    ("unknown-key", "eval_episodes: 3\n", [
        "sets 'eval_episodes', which `dreamer train-world-model` does not have", "Close matches: 'eval_every'",
        "'eval_episodes' is a setting of `dreamer train`"]),
    ("unknown-nested", "model:\n  rssm:\n    detr: 3\n", ["'model.rssm.detr'", "Close matches: 'model.rssm.deter'",
                                                           "No dreamer command has a setting 'model.rssm.detr'"]),
    ("unused-here", "env: {id: CartPole-v1}\n", ["sets 'env', which `dreamer train-world-model` does not have",
                                                "'env' is a setting of `dreamer collect`, `dreamer evaluate`, "
                                                "`dreamer train`"]),
    ("wrong-type", "updates: many\n", ["Config key 'updates' expects int, got 'many'"]),
    ("wrong-type-list", "updates: [1, 2]\n", ["Config key 'updates' expects int, got [1, 2]"]),
    ("wrong-type-tuple", "datasets: data/x\n", ["Config key 'datasets' expects tuple[str, ...], got 'data/x'"]),
    ("wrong-type-bool", "seq_len: true\n", ["Config key 'seq_len' expects int, got True"]),
    ("group-as-value", "model: 5\n", ["'model' is a group of settings"]),
    ("other-commands-section", "train:\n  config: {steps: 5}\n",
     ["has sections for `dreamer train` but none for `dreamer train-world-model`"]),
    ("stray-in-section", "train-world-model:\n  config: {updates: 5}\n  updates: 6\n", ["holds 'updates' beside `config:`"]),
    ("section-typo", "train-world-modl:\n  updates: 5\n", ["Did you mean the section `train-world-model:`?"]),
]


@pytest.mark.parametrize("name,content,needles", BAD, ids=[b[0] for b in BAD])
def test_a_bad_config_file_is_refused_in_one_paragraph_and_nothing_is_written(trained, tmp_path, name, content,
                                                                              needles):
    ds, _ = trained
    path = tmp_path / f"{name}.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    before = snapshot(tmp_path)
    for extra in ([], ["--print-config"]):
        result = dreamer("train-world-model", ds, "--out", tmp_path / "run", "--config", path, "--updates", 1, "-q",
                         *extra)  # (--updates 1: a file that is not refused would train only briefly)
        assert_refused(result, *needles)
    assert snapshot(tmp_path) == before


def test_other_refusals_of_config_files(trained, tmp_path):
    ds, run = trained
    before = snapshot(tmp_path)
    assert_refused(dreamer("train-world-model", ds, "--config", tmp_path), "is a directory, not a YAML file")
    assert_refused(dreamer("train-world-model", ds, "-q"), "Missing option '--out'", "--config file that sets `out`")
    assert_refused(dreamer("train", "--out", tmp_path / "o", "-q"), "Give the environment with --env ID")
    assert_refused(dreamer("evaluate", "--config", run / runs.CONFIG),
                   "has sections for `dreamer train-world-model`, `dreamer train-behavior` but none for "
                   "`dreamer evaluate`")
    path = tmp_path / "collect.yaml"
    path.write_text("threads: 1\n")
    assert_refused(dreamer("collect", "--env", DUMMY, "--out", tmp_path / "ds", "--config", path),
                   "sets 'threads', which `dreamer collect` does not have",
                   "`dreamer train-world-model`, `dreamer train-behavior`, `dreamer evaluate`, `dreamer train`")
    assert snapshot(tmp_path) == {**before, "collect.yaml": snapshot(tmp_path)["collect.yaml"],
                                  ".": snapshot(tmp_path)["."]}
    assert not (tmp_path / "ds").exists() and not (tmp_path / "o").exists()


# --- runs of dreamer-core 0.3.0 and earlier: one file per command --------------------------------------


def old_layout(run: Path) -> dict[str, dict]:
    """Turn ``run`` into the layout of 0.3.0: config.yaml (stage 02), behavior_config.yaml (stage 03)."""
    data = yaml.safe_load((run / runs.CONFIG).read_text())
    (run / runs.CONFIG).write_text(yaml.safe_dump({"stage": "train-world-model",
                                                   "config": data["train-world-model"]["config"],
                                                   "skipped_shards": [{"path": "x.h5", "reason": "test"}]},
                                                  sort_keys=False))
    if "train-behavior" in data:
        (run / "behavior_config.yaml").write_text(yaml.safe_dump(
            {"stage": "train-behavior", "config": data["train-behavior"]["config"]}, sort_keys=False))
    return {command: part["config"] for command, part in data.items()}


def test_an_old_run_is_read_printed_and_resumed(trained, tmp_path):
    _, run = trained
    old = tmp_path / "old"
    shutil.copytree(run, old)
    configs = old_layout(old)
    for command in ("train-world-model", "train-behavior"):
        assert runs.read_config(old, command) == configs[command]
    assert runs.config_file(old, "train-behavior") == old / "behavior_config.yaml"
    assert runs.config_records(old, "train-world-model") == {"skipped_shards": [{"path": "x.h5", "reason": "test"}]}
    assert resolved("train-world-model", "--config", old / "config.yaml") == configs["train-world-model"]
    assert resolved("train-behavior", "--config", old / "behavior_config.yaml") == configs["train-behavior"]
    assert resolved("train-behavior", "--run", old, "--resume", "--updates", 3) == {
        **configs["train-behavior"], "updates": 3}
    result = dreamer("train-behavior", "--run", old, "--resume", "--updates", 3)
    assert result.exit_code == 0, result.output
    assert f"all of it: {old / 'behavior_config.yaml'}, section train-behavior" in result.output
    # The resumed stage wrote its section into config.yaml, converting the old stage-02 file.
    data = yaml.safe_load((old / runs.CONFIG).read_text())
    assert list(data) == ["train-world-model", "train-behavior"]
    assert data["train-world-model"] == {"config": configs["train-world-model"],
                                         "records": {"skipped_shards": [{"path": "x.h5", "reason": "test"}]}}
    assert data["train-behavior"]["config"] == {**configs["train-behavior"], "updates": 3}
    assert runs.read_config(old, "train-behavior")["updates"] == 3  # the new file wins over the stale old one


def test_an_old_online_run_is_read_and_resumes_with_its_stored_config(tmp_path):
    """`dreamer train` wrote train_config.yaml; a run stopped before its first checkpoint
    resumes with it (resume_or_refuse), and --resume checks flags against it."""
    from dreamer_core.stages import online

    old = tmp_path / "online"
    old.mkdir()
    stored = resolved("train", "--env", DUMMY, "--out", old, "--preset", "tiny", "--steps", 300, "--seed", 4)
    (old / "train_config.yaml").write_text(yaml.safe_dump({"stage": "train", "config": stored}, sort_keys=False))
    assert runs.read_config(old, "train") == stored and runs.config_file(old, "train") == old / "train_config.yaml"
    assert resolved("train", "--out", old, "--resume", "--steps", 400) == {**stored, "steps": 400}
    assert_refused(dreamer("train", "--out", old, "--resume", "--seed", 5, "--print-config"),
                   "so seed cannot change now")
    cfg, state = common.resume_or_refuse(online.TrainConfig(out=str(old)), old / runs.ONLINE_LATEST, [], True, "x",
                                         config_file=old / runs.ONLINE_CONFIG)
    assert state is None and config_lib.to_dict(cfg) == stored
    runs.forget_config(old, "train")
    assert runs.read_config(old, "train") is None and not (old / "train_config.yaml").exists()
