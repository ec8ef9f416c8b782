"""The stage kit (stages/common.py): cadences, metric means, the non-finite guard, the training
loop helper and its progress display, stop requests, resume-or-refuse, metrics truncation and
config files."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from dreamer_core import checkpoint
from dreamer_core import config as config_lib
from dreamer_core import logging as logging_lib
from dreamer_core.errors import DreamerError
from dreamer_core.logging import ProgressDisplay, fit_bar_line, read_metrics
from dreamer_core.stages import common
from dreamer_core.stages.common import (
    Every,
    EverySeconds,
    MetricMean,
    NonFiniteGuard,
    StopRequest,
    TrainLoop,
    resume_or_refuse,
    truncate_metrics,
    write_config,
)


class FakeClock:
    """Stands in for the ``time`` module of stages/common.py and logging.py: both clocks read ``now``."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(common, "time", SimpleNamespace(monotonic=fake, perf_counter=fake))
    monkeypatch.setattr(logging_lib, "time", SimpleNamespace(monotonic=fake, perf_counter=fake))
    return fake


@pytest.fixture
def own_signals():
    """Signals sent to this process reach the handlers only from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")


def due_counts(every, counts) -> list[int]:
    return [c for c in counts if every(c)]


# --- Every ------------------------------------------------------------------------------------


def test_every_is_due_at_each_multiple():
    assert due_counts(Every(5), range(1, 21)) == [5, 10, 15, 20]
    assert due_counts(Every(1), range(1, 5)) == [1, 2, 3, 4]
    every = Every(5)
    assert every(5) and not every(5)  # asking again at the same count is not due again


def test_every_continues_from_a_resumed_count():
    assert due_counts(Every(5, count=7), range(8, 21)) == [10, 15, 20]
    assert due_counts(Every(5, count=10), range(11, 21)) == [15, 20]  # 10 was done before the resume


def test_every_with_counters_that_jump():
    # Env steps summed over 3 envs: the check sees 0, 3, 6, ... and is due at the first count
    # that reaches each multiple of 10, never twice for one multiple, never skipping one.
    assert due_counts(Every(10), range(0, 61, 3)) == [12, 21, 30, 42, 51, 60]
    # A jump over several multiples is due once, then waits for the next multiple after it.
    every = Every(10)
    assert every(35) and not every(39) and every(40)


def test_every_due_now_is_due_at_the_first_check():
    every = Every(100, count=250, due_now=True)
    assert every(250)
    assert due_counts(every, range(251, 420)) == [300, 400]
    assert due_counts(Every(100, due_now=True), [0, 50, 100]) == [0, 100]


def test_every_zero_is_never_due():
    assert due_counts(Every(0), range(0, 1000, 7)) == []
    assert due_counts(Every(0, count=5), [5, 10**9]) == []
    assert due_counts(Every(0, due_now=True), [0, 1, 10**9]) == []


def test_every_seconds(clock):
    every = EverySeconds(10.0)
    due = []
    for _ in range(10):
        clock.now += 4
        due.append(every())
    # 4, 8, 12 (due: counts from 12 on), 16, 20, 24 (due), 28, 32, 36 (due), 40
    assert due == [False, False, True, False, False, True, False, False, True, False]


# --- MetricMean -------------------------------------------------------------------------------


def test_metric_mean_exact_means_prefix_and_reset():
    mean = MetricMean()
    assert mean.pop() == {} and mean.count == 0  # nothing added: an empty record
    mean.add({"loss": 1.0, "grad": 0.5})
    mean.add({"loss": 2.0, "grad": 1.5})
    mean.add({"loss": 6.0, "grad": 1.0})
    assert mean.count == 3
    assert mean.pop("wm/") == {"wm/loss": 3.0, "wm/grad": 1.0}
    assert mean.pop() == {} and mean.count == 0 and mean.sums == {}  # popping starts afresh
    mean.add({"loss": 5.0})
    assert mean.pop() == {"loss": 5.0}


def test_metric_mean_of_a_key_missing_from_some_updates_is_over_all_updates():
    # How `wm/nonfinite: 1.0` on failed updates becomes the share of failed updates.
    mean = MetricMean()
    for metrics in ({"loss": 2.0}, {"nonfinite": 1.0}, {"loss": 4.0}, {"loss": 6.0}):
        mean.add(metrics)
    assert mean.pop() == {"loss": 3.0, "nonfinite": 0.25}


# --- NonFiniteGuard ---------------------------------------------------------------------------


def test_non_finite_guard_resets_on_a_finite_update_and_raises_at_the_limit():
    calls = []

    def message(count: int) -> str:
        calls.append(("message", count))
        return f"stopped after {count} non-finite updates"

    guard = NonFiniteGuard(3, message, on_limit=lambda: calls.append(("on_limit",)))
    assert guard.check(True) is True
    assert guard.check(False) is False and guard.check(False) is False and guard.in_row == 2
    assert guard.check(True) is True and guard.in_row == 0  # one finite update resets the count
    assert guard.check(False) is False and guard.check(False) is False
    assert calls == []
    with pytest.raises(DreamerError, match="^stopped after 3 non-finite updates$"):
        guard.check(False)
    assert calls == [("on_limit",), ("message", 3)]  # the data is kept before the error is raised


def test_non_finite_guard_without_on_limit():
    guard = NonFiniteGuard(1, lambda n: f"{n} in a row")
    with pytest.raises(DreamerError, match="1 in a row"):
        guard.check(False)


# --- TrainLoop --------------------------------------------------------------------------------


def test_train_loop_cadences_by_count(tmp_path):
    logged, checkpoints = [], []
    with TrainLoop(tmp_path, total=10, count=0, description="t", progress=False, log_every=3,
                   checkpoint_every=4) as loop:
        count = 0
        while loop.running(count):
            count += 1
            final = count == 10
            if loop.log_due(count, final):
                logged.append(count)
            if loop.checkpoint_due(count, final):
                checkpoints.append(count)
    assert count == 10
    assert logged == [3, 6, 9, 10] and checkpoints == [4, 8, 10]


def test_train_loop_resumed_count_and_no_cadence(tmp_path):
    with TrainLoop(tmp_path, total=12, count=5, description="t", progress=False, log_every=3) as loop:
        assert loop.start_count == 5
        due = [c for c in range(6, 13) if loop.log_due(c)]
        assert due == [6, 9, 12]
        assert not any(loop.checkpoint_due(c) for c in range(6, 13))  # checkpoint_every=0: only when final
        assert loop.checkpoint_due(12, final=True)


def test_train_loop_checkpoints_by_seconds(tmp_path, clock):
    due = []
    with TrainLoop(tmp_path, total=100, count=0, description="t", progress=False,
                   checkpoint_seconds=10.0) as loop:
        for count in range(1, 11):
            clock.now += 4
            if loop.checkpoint_due(count):
                due.append(count)
    assert due == [3, 6, 9]


def test_train_loop_checkpoints_by_count_or_seconds(tmp_path, clock):
    due = []
    with TrainLoop(tmp_path, total=100, count=0, description="t", progress=False, checkpoint_every=5,
                   checkpoint_seconds=10.0) as loop:
        for count in range(1, 11):
            clock.now += 3
            if loop.checkpoint_due(count):
                due.append(count)
    # seconds 3..30: the timer is due at 12 s (count 4), 24 s (count 8); counts 5 and 10
    assert due == [4, 5, 8, 10]


def test_train_loop_log_mean_writes_the_averaged_record(tmp_path):
    with TrainLoop(tmp_path, total=10, count=0, description="t", progress=False, log_every=2) as loop:
        loop.mean.add({"loss": 1.0, "kl": 4.0})
        loop.mean.add({"loss": 2.0, "kl": 2.0})
        record = loop.log_mean(2, "wm/", **{"wm/updates_per_second": 7.5})
        assert record == {"wm/loss": 1.5, "wm/kl": 3.0, "wm/updates_per_second": 7.5}
        loop.mean.add({"loss": 5.0, "kl": 0.0})
        loop.log_mean(4)
        loop.log(4, {"val/loss": 0.25})
    records = read_metrics(tmp_path)
    assert records == [{"step": 2, "wm/loss": 1.5, "wm/kl": 3.0, "wm/updates_per_second": 7.5},
                       {"step": 4, "loss": 5.0, "kl": 0.0}, {"step": 4, "val/loss": 0.25}]
    assert any((tmp_path / "tb").iterdir())


def test_train_loop_metrics_name(tmp_path):
    with TrainLoop(tmp_path, total=1, count=0, description="t", progress=False,
                   metrics_name="behavior_metrics.jsonl") as loop:
        loop.mean.add({"actor/loss": 0.5})
        loop.log_mean(1)
    assert read_metrics(tmp_path, "behavior_metrics.jsonl") == [{"step": 1, "actor/loss": 0.5}]
    assert read_metrics(tmp_path) == []


def test_train_loop_running_stops_at_total(tmp_path):
    with TrainLoop(tmp_path, total=7, count=0, description="t", progress=False) as loop:
        steps = 0
        while loop.running(steps):
            steps += 3  # a counter that overshoots: env steps of 3 envs
        assert steps == 9 and not loop.stopped
        assert not loop.running(7) and loop.running(6)


def test_train_loop_max_seconds(tmp_path, clock):
    with TrainLoop(tmp_path, total=10**9, count=0, description="t", progress=False, max_seconds=30.0) as loop:
        count = 0
        while loop.running(count):
            count += 1
            clock.now += 1.0
        assert count == 30 and loop.stopped and loop.elapsed() == 30.0
        assert loop.rate(count) == pytest.approx(1.0)
    with TrainLoop(tmp_path, total=5, count=0, description="t", progress=False) as loop:
        clock.now += 10**6
        assert not loop.stopped and loop.running(0)  # max_seconds=0: no time limit


def test_train_loop_stops_on_sigterm_when_handling_signals(tmp_path, own_signals):
    before = signal.getsignal(signal.SIGTERM)
    with TrainLoop(tmp_path, total=1000, count=0, description="t", progress=False, handle_signals=True) as loop:
        count = 0
        while loop.running(count):
            count += 1
            if count == 3:
                os.kill(os.getpid(), signal.SIGTERM)
        assert count == 3 and loop.stopped
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is restored on exit


def test_stop_request_second_ctrl_c_raises(own_signals):
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # SIGTERM only ever sets the flag
        assert stop.requested


# --- resume_or_refuse, truncate_metrics, write_config -----------------------------------------


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class RunConfig:
    out: str = "run"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)


def files_of(root):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def save_state(path, cfg, counters, identity: str | None = None) -> None:
    """A resume checkpoint of the run ``path`` lies in (``identity``: another run's id instead)."""
    spaces = checkpoint.spaces_json(gym.spaces.Dict({"vector": gym.spaces.Box(-1, 1, (2,), np.float32)}),
                                    gym.spaces.Discrete(3))
    identity = identity or common.run_id(path.parent.parent, create=True)
    checkpoint.save(path, checkpoint.TrainState(**spaces, stage_config=config_lib.to_dict(cfg), stage="test",
                                                run_id=identity, counters=counters,
                                                modules={"m": {"w": torch.ones(2)}}))


def test_fresh_run_without_files_starts(tmp_path):
    cfg = RunConfig(out=str(tmp_path / "run"))
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    assert resume_or_refuse(cfg, latest, [tmp_path / "run" / "model.pt"], False, "choose another --out") == (cfg, None)


@pytest.mark.parametrize("existing", ["latest", "artifact"])
def test_fresh_run_refuses_an_existing_run_without_touching_it(tmp_path, existing):
    run = tmp_path / "run"
    latest, artifact = run / "checkpoints" / "latest.pt", run / "model.pt"
    if existing == "latest":
        save_state(latest, RunConfig(), {"update": 3})
    else:
        run.mkdir()
        artifact.write_bytes(b"weights")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    before = files_of(run)
    with pytest.raises(DreamerError) as info:
        resume_or_refuse(RunConfig(), latest, [artifact], False, "choose another --out")
    message = str(info.value)
    taken = latest.name if existing == "latest" else artifact.name
    assert str(run) in message and taken in message
    assert "--resume" in message and "choose another --out" in message and "nothing was changed" in message
    assert files_of(run) == before


def test_resume_without_a_checkpoint_starts_afresh_and_says_so(tmp_path, capsys):
    """A run killed before its first checkpoint: --resume starts it afresh (instead of sending
    the user between "pass --resume" and "start afresh"), keeping what may be kept."""
    run = tmp_path / "run"
    (run / "replay").mkdir(parents=True)
    latest = run / "checkpoints" / "latest.pt"
    cfg = RunConfig(out=str(run))
    assert resume_or_refuse(cfg, latest, [run / "replay"], True, "x", resumable=[run / "replay"]) == (cfg, None)
    assert "no checkpoint yet" in capsys.readouterr().err and (run / "replay").is_dir() and not latest.exists()
    common.write_config(run / "config.yaml", "test", RunConfig(out=str(run), steps=77))
    resumed, _ = resume_or_refuse(RunConfig(out=str(run)), latest, [], True, "x", config_file=run / "config.yaml",
                                  command="test")
    assert resumed.steps == 77  # the config the run started with, not the defaults
    with pytest.raises(DreamerError, match="never started \\(its config.yaml has no other section\\)"):
        resume_or_refuse(cfg, latest, [], True, "x", config_file=run / "config.yaml", command="other")
    with pytest.raises(DreamerError, match="never started \\(it has no other.yaml\\)"):
        resume_or_refuse(cfg, latest, [], True, "x", config_file=run / "other.yaml")
    with pytest.raises(DreamerError, match="there is no run at"):
        resume_or_refuse(cfg, tmp_path / "missing" / "checkpoints" / "latest.pt", [], True, "x")
    assert not (tmp_path / "missing").exists()
    (run / "model.pt").write_bytes(b"weights")  # an artifact without a checkpoint cannot be continued
    with pytest.raises(DreamerError, match="model.pt but no latest.pt to resume from. Choose another --out"):
        resume_or_refuse(cfg, latest, [run / "model.pt"], True, "x")
    assert (run / "model.pt").read_bytes() == b"weights"


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    """A resume checkpoint copied from another run is recognised by the run identity it carries."""
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    here = common.run_id(tmp_path / "run", create=True)
    save_state(latest, RunConfig(), {"update": 3}, identity="another-run")
    with pytest.raises(DreamerError, match=f"belongs to another run \\(run another-run\\), not to .* \\(run {here}\\)"):
        resume_or_refuse(RunConfig(), latest, [], True, "x")
    (tmp_path / "run" / common.RUN_ID_FILE).unlink()
    with pytest.raises(DreamerError, match="no run.json"):
        resume_or_refuse(RunConfig(), latest, [], True, "x")


def test_run_id_is_made_once_and_a_damaged_one_is_refused(tmp_path):
    assert common.run_id(tmp_path) is None
    first = common.run_id(tmp_path, create=True)
    assert common.run_id(tmp_path, create=True) == first == common.run_id(tmp_path) and len(first) == 32
    (tmp_path / common.RUN_ID_FILE).write_text("{not json")
    with pytest.raises(DreamerError, match="is damaged"):
        common.run_id(tmp_path)


def test_run_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path, capsys):
    with common.RunLock(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()  # made by the lock and left empty: removed again
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    stale = run / "checkpoints" / ".latest.pt.x1.tmp"  # left by a write killed mid-way
    stale.write_bytes(b"half")
    with common.RunLock(run) as lock:
        assert not stale.exists()
        record = json.loads(lock.path.read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(DreamerError, match=f"in use by process {os.getpid()}"):
            common.RunLock(run).__enter__()
    assert not (run / common.LOCK_FILE).exists()  # released
    dead = subprocess_pid_that_exited()
    (run / common.LOCK_FILE).write_text(json.dumps({"pid": dead, "host": record["host"], "since": "earlier"}))
    with common.RunLock(run):
        assert json.loads((run / common.LOCK_FILE).read_text())["pid"] == os.getpid()
    assert f"taking over the lock of process {dead}" in capsys.readouterr().err
    (run / common.LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "earlier"}))
    with pytest.raises(DreamerError, match="on host elsewhere"):
        common.RunLock(run).__enter__()


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_clean_temporaries_removes_only_what_killed_atomic_writes_left(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / ".online_latest.pt.abc123.tmp", tmp_path / ".config.yaml.x.tmp"]
    keep = [tmp_path / "checkpoints" / "online_latest.pt", tmp_path / "metrics.jsonl", tmp_path / "notes.tmp"]
    for path in stale + keep:
        path.write_bytes(b"x")
    assert sorted(common.clean_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_resume_returns_the_stored_config_through_keep(tmp_path):
    latest = tmp_path / "run" / "checkpoints" / "latest.pt"
    stored = RunConfig(out="old", steps=50, inner=Inner(rate=0.1, sizes=(3, 4, 5)))
    save_state(latest, stored, {"update": 7, "resumes": 0})
    given = RunConfig(out="new", steps=80)
    cfg, state = resume_or_refuse(given, latest, [], True, "x")
    assert cfg == stored  # the default keep: the stored config as it was (tuples come back as tuples)
    assert isinstance(state, checkpoint.TrainState) and state.counters == {"update": 7, "resumes": 0}
    assert torch.equal(state.modules["m"]["w"], torch.ones(2))
    cfg, _ = resume_or_refuse(given, latest, [], True, "x",
                              keep=lambda s, g: dataclasses.replace(s, steps=g.steps))
    assert cfg == dataclasses.replace(stored, steps=80)


def test_truncate_metrics_drops_records_after_the_checkpoint(tmp_path):
    truncate_metrics(tmp_path, 5)  # no metrics file yet: nothing to do
    assert not (tmp_path / "metrics.jsonl").exists()
    lines = [{"step": 2, "a": 1.0}, {"b": 3.0}, {"step": 5, "a": 2.0}, {"step": 6, "a": 3.0}, {"step": 9}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 1')
    truncate_metrics(tmp_path, 5)
    # records up to the checkpoint stay (a record without a step counts as step 0); a torn line goes
    assert read_metrics(tmp_path) == lines[:3]
    (tmp_path / "behavior_metrics.jsonl").write_text('{"step": 1}\n{"step": 4}\n')
    truncate_metrics(tmp_path, 3, "behavior_metrics.jsonl")
    assert read_metrics(tmp_path, "behavior_metrics.jsonl") == [{"step": 1}]
    assert read_metrics(tmp_path) == lines[:3]


def test_write_config_round_trip(tmp_path):
    """One file per run, one section per command: {config:, records:}; rewriting a command's
    section replaces it and keeps the others."""
    cfg = RunConfig(out="x", steps=3, inner=Inner(rate=1e-4, sizes=(64, 64)))
    path = tmp_path / "config.yaml"
    write_config(path, "train-test", cfg, calibration={"weights": {"recon": 0.5}})
    data = yaml.safe_load(path.read_text())
    assert data["train-test"]["records"] == {"calibration": {"weights": {"recon": 0.5}}}
    assert config_lib.from_dict(RunConfig, data["train-test"]["config"]) == cfg
    write_config(path, "other-test", RunConfig(steps=5))
    write_config(path, "train-test", RunConfig())  # rewriting replaces the section
    data = yaml.safe_load(path.read_text())
    assert list(data) == ["train-test", "other-test"] and set(data["train-test"]) == {"config"}
    assert data["other-test"]["config"]["steps"] == 5


# --- ProgressDisplay ----------------------------------------------------------------------------


def bar_line(width: int, total: int, count: int, description: str, status: str) -> str:
    """The live bar's line as a terminal of ``width`` columns shows it."""
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    display = ProgressDisplay(total, description, console=console)
    assert display.live
    display.update(count, status, force=True)
    console.print(display.bar.make_tasks_table(display.bar.tasks))
    return console.file.getvalue().rstrip("\n")


ONLINE_STATUS = " prefill | 36.0 steps/s | 120 updates (4.50/s) | return 20.1 | eval 55.3"


@pytest.mark.parametrize("total,count,description,status", [
    (20000, 2000, "train CartPole-v1", ONLINE_STATUS),
    (10**7, 12345, "train dmc:walker-walk with a long label", "x" * 200),
    (5000, 10, "world model", "loss 1.234 | 10 updates"),
    (5000, 10, "d" * 200, ""),
])
@pytest.mark.parametrize("width", [80, 60])
def test_the_bar_keeps_its_count_elapsed_time_and_eta_at_any_width(width, total, count, description, status):
    line = bar_line(width, total, count, description, status)
    assert "\n" not in line and len(line) <= width, line
    assert re.search(rf" {count}/{total} (.* )?0:00:00 ETA -:--:--$", line), line


def test_the_bar_at_80_columns_shortens_the_description_then_the_status():
    line = bar_line(80, 20000, 2000, "train CartPole-v1", ONLINE_STATUS)
    assert line.startswith("train CartP… ━") and len(line) <= 80
    assert line.endswith(" 2000/20000 prefill | 36.0 steps/s… 0:00:00 ETA -:--:--"), line
    wide = bar_line(160, 20000, 2000, "train CartPole-v1", ONLINE_STATUS)
    assert wide.startswith("train CartPole-v1 ") and "| eval 55.3 0:00:00 ETA" in wide  # room: nothing cut


def test_fit_bar_line_gives_way_in_order():
    assert fit_bar_line(200, "world model", "loss 1", fixed=30) == ("world model", 40, "loss 1")
    # 80 columns: the bar narrows to 10, the description to 12, then the status is cut
    assert fit_bar_line(80, "train CartPole-v1", "s" * 100, fixed=30) == ("train CartP…", 10, "s" * 24 + "…")
    assert fit_bar_line(60, "world model", "loss 1", fixed=30) == ("world model", 10, "loss 1")
    # too narrow for anything but the fixed part and a short bar: parts of width 0 are left out
    assert fit_bar_line(35, "d", "s", fixed=30) == ("", 4, "")


def test_plain_lines_at_the_start_by_time_after_an_evaluation_and_at_the_end(clock):
    out, calls = io.StringIO(), []

    def status() -> str:
        calls.append(1)
        return " 12.0 steps/s |  eval 5.0 "

    with ProgressDisplay(1000, "train X", start_count=100, seconds=30, console=Console(file=out)) as display:
        assert not display.live  # not a terminal
        for count in range(101, 301):
            clock.now += 1.0
            display.update(count, status)
            if count == 150:
                display.line_due()  # an evaluation
    lines = out.getvalue().splitlines()
    assert [int(line.split()[2].split("/")[0]) for line in lines] == [100, 130, 151, 181, 211, 241, 271, 300]
    assert lines[0] == "train X 100/1000 (10%) | 0s | ETA -"
    assert lines[4] == "train X 211/1000 (21%) | 12.0 steps/s | eval 5.0 | 1m51s | ETA 13m09s"
    assert len(calls) == 6  # the status is only built for a line


def test_train_loop_prints_plain_lines_by_time_and_after_evaluations(tmp_path, clock, capsys, monkeypatch):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    with TrainLoop(tmp_path, total=20, count=0, description="world model", progress=10.0) as loop:
        for count in range(1, 21):
            clock.now += 1.0
            if count == 5:
                loop.log(count, {"val/loss": 1.0})  # an evaluation: a line at the next show
            if count == 7:
                loop.log(count, {"train/return": 1.0})  # not one
            loop.show(count, lambda count=count: f"loss {count}")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" | ")[0] for line in lines] == [
        "world model 0/20 (0%)", "world model 5/20 (25%)", "world model 15/20 (75%)", "world model 20/20 (100%)"]
    assert lines[1] == "world model 5/20 (25%) | loss 5 | 5s | ETA 15s"
    with TrainLoop(tmp_path, total=5, count=0, description="quiet", progress=False) as loop:
        loop.log(1, {"eval/return": 1.0})
        loop.show(5, lambda: "x", force=True)
    assert capsys.readouterr().err == ""


def test_duration():
    assert [logging_lib._duration(s) for s in (0, 42.4, 250, 3720, 2 * 86400 + 3 * 3600 + 59)] == [
        "0s", "42s", "4m10s", "1h02m", "2d03h"]


def test_plain_lines_eta_is_from_the_recent_rate(clock):
    """A fast random-policy prefill (500 counts in 1 s) does not make the ETA of the slow
    training after it optimistic: the rate is over about the last ETA_SECONDS."""
    out = io.StringIO()
    with ProgressDisplay(1000, "train X", seconds=1000, console=Console(file=out)) as display:
        clock.now += 1.0
        display.update(500)
        for count in range(501, 601):
            clock.now += 1.0
            display.update(count)
        display.line_due()
        display.update(600)
    assert out.getvalue().splitlines()[1] == "train X 600/1000 (60%) | 1m41s | ETA 6m40s"
