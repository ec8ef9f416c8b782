"""`dreamer sweep`: search-space specs and their errors, trials as `dreamer train` subprocesses
watched through their metrics.jsonl, pruning by optuna's pruner, failed trials with their
stderr, the summary and plots, and resuming a study from its storage.

Most sweeps here run a stand-in trainer (a small script that logs a metrics curve made from
its ``--set`` values) so that they take seconds; ``test_real_train_trials_with_a_pruned_one``
runs real `dreamer train` subprocesses.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dreamer_core.errors import DreamerError
from dreamer_core.runs import read_config
from dreamer_core.stages import sweep
from dreamer_core.stages.online import TrainConfig

optuna = pytest.importorskip("optuna")

# Logs ``quality * step`` as eval/return at steps 100..500 (a pause before each), like a run's
# metrics.jsonl; ``mode=crash`` fails after the first evaluation with a traceback on stderr.
FAKE_TRAIN = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    assert args[0] == "train"
    out = Path(args[args.index("--out") + 1])
    sets = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--set")
    quality, mode = float(sets.get("quality", 1)), sets.get("mode", "ok")
    delay = float(sets.get("delay", 0.15))
    out.mkdir(parents=True, exist_ok=True)
    print("training", out)
    with open(out / "metrics.jsonl", "a", buffering=1) as f:
        for step in range(100, 501, 100):
            time.sleep(delay)
            f.write(json.dumps({"step": step - 3, "train/return": 1.0}) + "\\n")
            f.write(json.dumps({"step": step, "eval/return": quality * step}) + "\\n")
            if mode == "crash":
                print("Traceback (most recent call last):\\nValueError: boom at step", step, file=sys.stderr)
                sys.exit(1)
    print("done")
""")


@pytest.fixture
def fake_train(tmp_path):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return [sys.executable, str(script)]


def config(out, **changes) -> sweep.SweepConfig:
    base = dict(out=str(out), params=("quality=float:0:1", "mode=choice:ok,crash"), trials=6,
                pruner="median:2", sampler="random", seed=0, poll_seconds=0.05, stop_seconds=5.0)
    return sweep.SweepConfig(**(base | changes))


def enqueue(cfg: sweep.SweepConfig, *params: dict) -> None:
    """Put trials with these parameters first in the study (it is created as the sweep will load it)."""
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=cfg.study or Path(cfg.out).resolve().name,
                                storage=sweep.storage_url(cfg), direction=cfg.direction, load_if_exists=True)
    for p in params:
        study.enqueue_trial(p)


def read_summary(out):
    with open(out / "summary.csv") as f:
        return list(csv.DictReader(f))


def test_param_specs_parse():
    p = sweep.parse_param("optim.lr=float:1e-5:1e-3:log")
    assert (p.key, p.kind, p.low, p.high, p.log, p.step) == ("optim.lr", "float", 1e-5, 1e-3, True, None)
    p = sweep.parse_param("batch_size=int:8:64:8")
    assert (p.kind, p.low, p.high, p.step, p.log) == ("int", 8, 64, 8, False)
    assert sweep.parse_param("model.rssm.deter = int:32:256").spec() == "model.rssm.deter=int:32:256"
    p = sweep.parse_param("model.act=choice:silu, elu,1e-3,16,true")
    assert p.choices == ("silu", "elu", 0.001, 16, "true")
    assert [sweep.set_text(v) for v in (0.001, 16, True, None, "elu")] == ["0.001", "16", "true", "none", "elu"]
    assert sweep.parse_param("x=float:0:1:0.25").step == 0.25


@pytest.mark.parametrize("spec,needle", [
    ("optim.lr", "no '=' between the config key and its range"),
    ("optim.lr=flaot:0:1", "the type 'flaot' is none of float, int, choice"),
    ("optim.lr=float:1e-3", "a float range is float:LOW:HIGH"),
    ("optim.lr=float:a:1", "LOW 'a' is not a number"),
    ("optim.lr=float:1:0.5", "LOW (1) must be below HIGH (0.5)"),
    ("optim.lr=float:0:1:log", "a log-uniform range needs LOW above 0"),
    ("batch_size=int:8.5:64", "LOW '8.5' is not a whole number"),
    ("batch_size=int:8:60:8", "HIGH - LOW (52) is not a multiple of STEP (8)"),
    ("batch_size=int:8:64:-8", "STEP must be positive"),
    ("model.act=choice:silu", "a choice needs two values or more"),
    ("model.act=choice:silu,silu", "repeat a value"),
    ("9lives=float:0:1", "is not a config key"),
])
def test_bad_param_specs_name_the_problem_and_the_form(spec, needle):
    with pytest.raises(DreamerError) as info:
        sweep.parse_param(spec)
    message = str(info.value)
    assert needle in message and spec in message and "KEY=float:LOW:HIGH[:log|:STEP]" in message, message


def test_space_file_and_checks_against_the_train_config(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: float:1e-5:1e-3:log\nbatch_size: [8, 16]\n"
                     "model.rssm.deter: {type: int, low: 32, high: 128, step: 32}\n")
    cfg = sweep.SweepConfig(out=str(tmp_path / "s"), params=("seed=int:0:3",), space=str(space))
    params = sweep.search_space(cfg, TrainConfig)
    assert [p.spec() for p in params] == ["seed=int:0:3", "optim.lr=float:1e-05:0.001:log",
                                          "batch_size=choice:8,16", "model.rssm.deter=int:32:128:32"]
    space.write_text("optim.lr: {type: float, low: 1, hihg: 2}\n")
    with pytest.raises(DreamerError, match="unknown field.*hihg"):
        sweep.search_space(cfg, TrainConfig)
    with pytest.raises(DreamerError, match="optim.lrr.*does not fit `dreamer train`'s config.*Did you mean 'optim.lr'"):
        sweep.search_space(sweep.SweepConfig(params=("optim.lrr=float:0.1:1",)), TrainConfig)
    with pytest.raises(DreamerError, match="expects int"):
        sweep.search_space(sweep.SweepConfig(params=("batch_size=choice:8,big",)), TrainConfig)
    with pytest.raises(DreamerError, match="more than once"):
        sweep.search_space(sweep.SweepConfig(params=("seed=int:0:3", "seed=int:0:5")))
    with pytest.raises(DreamerError, match="both swept and fixed by --set"):
        sweep.search_space(sweep.SweepConfig(params=("seed=int:0:3",), train_args=("--set", "seed=1")))
    with pytest.raises(DreamerError, match="Give the search space"):
        sweep.search_space(sweep.SweepConfig())
    with pytest.raises(DreamerError, match="cannot hold --out"):
        sweep.validate(sweep.SweepConfig(train_args=("--out", "x")))
    with pytest.raises(DreamerError, match="--pruner must be one of"):
        sweep.validate(sweep.SweepConfig(pruner="medain"))
    with pytest.raises(DreamerError, match="percentile must be in"):
        sweep.make_pruner(optuna, "percentile:250", "maximize")
    assert isinstance(sweep.make_pruner(optuna, "median:3:1000", "maximize"), optuna.pruners.MedianPruner)
    assert sweep.make_pruner(optuna, "threshold:50", "maximize")._lower == 50


def test_sweep_prunes_fails_summarizes_and_resumes(tmp_path, fake_train):
    """Six trials of the stand-in trainer: 2 and 4 (worse than the median of the complete ones
    at their first report) are pruned by optuna's MedianPruner and stopped early, 3 crashes
    (FAIL, its stderr tail kept); then the summary, the plots, and a rerun that continues."""
    out = tmp_path / "sweep"
    cfg = config(out)
    enqueue(cfg, {"quality": 0.9, "mode": "ok"}, {"quality": 0.8, "mode": "ok"}, {"quality": 0.1, "mode": "ok"},
            {"quality": 0.99, "mode": "crash"}, {"quality": 0.7, "mode": "ok"}, {"quality": 0.95, "mode": "ok"},
            {"quality": 0.92, "mode": "ok"})
    lines = []
    start = time.monotonic()
    result = sweep.run(cfg, command=fake_train, log=lines.append)
    assert time.monotonic() - start < 40
    states = [(r["number"], r["state"]) for r in result.rows]
    assert states == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED"), (3, "FAIL"), (4, "PRUNED"),
                      (5, "COMPLETE"), (6, "COMPLETE")], states
    rows = {r["number"]: r for r in result.rows}
    assert rows[0]["value"] == pytest.approx(450.0) and rows[6]["value"] == pytest.approx(460.0)
    # pruned at the first report: 0.1 * 100 and 0.7 * 100 lie below the median (85) of trials 0 and 1
    assert rows[2]["note"] == "pruned at step 100 (eval/return 10)" and rows[2]["value"] == pytest.approx(10.0)
    assert rows[4]["step"] == 100 and rows[2]["step"] == 100
    pruned_metrics = (out / "trial-0002" / "metrics.jsonl").read_text().splitlines()
    assert len(pruned_metrics) < 10  # stopped, not run to its end
    assert "exited with code 1" in rows[3]["note"] and "ValueError: boom at step 100" in rows[3]["note"]
    failure = (out / "trial-0003" / "failure.txt").read_text()
    assert "ValueError: boom at step 100" in failure and "dreamer train --out" in failure and "--set mode=crash" in failure
    assert "boom" in (out / "trial-0003" / "stderr.log").read_text()
    assert (out / "trial-0000" / "stdout.log").read_text() == f"training {out / 'trial-0000'}\ndone\n"
    assert not list(out.glob("trial-*/.std*"))
    assert result.best["number"] == 5 and "best: trial 5, eval/return (last) 475: --set quality=0.95 --set mode=ok" \
        in result.summary_line()
    assert "trial 2 pruned; pruned at step 100 (eval/return 10)" in lines and "trial 0 complete: eval/return 450" in lines

    summary = read_summary(out)
    assert [r["state"] for r in summary] == [s for _, s in states]
    assert summary[5]["quality"] == "0.95" and summary[5]["mode"] == "ok" and summary[5]["value"] == "475.0"
    assert summary[5]["run_dir"] == str(out / "trial-0005") and summary[5]["step"] == "500"
    table = result.table().splitlines()
    assert table[0].split() == ["trial", "state", "value", "quality", "mode", "step", "run", "note"]
    assert table[3].split()[:6] == ["2", "PRUNED", "10", "0.1", "ok", "100"]
    for name in ("history.png", "curves.png", "importance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    recorded = sweep.yaml.safe_load((out / "sweep.yaml").read_text())
    assert recorded["space"] == ["mode=choice:ok,crash", "quality=float:0.0:1.0"] and recorded["study"] == "sweep"

    # The same command again: the study holds 6 finished trials already, so nothing runs.
    again = sweep.run(cfg, command=fake_train, log=lines.append)
    assert again.ran == 0 and len(again.rows) == 7
    # One more finished trial: sampled from number 7 on (the queue is empty), each in its own directory.
    more = sweep.run(config(out, trials=7), command=fake_train, log=lines.append)
    assert more.ran >= 1 and [r["number"] for r in more.rows] == list(range(7 + more.ran))
    assert sum(r["state"] in ("COMPLETE", "PRUNED") for r in more.rows) == 7
    assert (out / "trial-0007" / "metrics.jsonl").exists()
    # Another space, metric or direction is another sweep: refused, pointing at --study.
    with pytest.raises(DreamerError, match="started with other settings.*space.*--study"):
        sweep.run(config(out, params=("quality=float:0:2", "mode=choice:ok,crash")), command=fake_train)
    with pytest.raises(DreamerError, match="direction"):
        sweep.run(config(out, direction="minimize"), command=fake_train)


def test_failing_trials_stop_the_worker_with_the_error(tmp_path, fake_train):
    out = tmp_path / "sweep"
    cfg = config(out, params=("mode=choice:crash,crash2",), trials=10, max_failures=2)
    with pytest.raises(DreamerError) as info:
        sweep.run(cfg, command=[*fake_train[:1], "-c", "import sys; sys.exit('no such option: --stepz')"],
                  log=lambda _: None)
    message = str(info.value)
    assert "The last 2 trials failed" in message and "no such option: --stepz" in message
    assert str(out / "trial-0001" / "failure.txt") in message
    assert [r["state"] for r in read_summary(out)] == ["FAIL", "FAIL"]
    # A new sweep elsewhere that finds trial directories but an empty study is refused.
    (tmp_path / "other" / "trial-0000").mkdir(parents=True)
    with pytest.raises(DreamerError, match="belong to another study"):
        sweep.run(config(tmp_path / "other"), command=fake_train)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(DreamerError, match="is a run directory"):
        sweep.run(config(run), command=fake_train)


def test_sigterm_stops_the_running_trial_and_writes_the_summary(tmp_path, fake_train):
    """SIGTERM to a worker (e.g. a cancelled batch job): its running trial's run is stopped, the
    trial recorded as FAIL (interrupted), the summary written, and the worker exits 130."""
    out = tmp_path / "sweep"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from dreamer_core.stages import sweep
        cfg = sweep.SweepConfig(out={str(out)!r}, params=("delay=float:5:6",), trials=3, poll_seconds=0.05,
                                stop_seconds=5.0)
        result = sweep.run(cfg, command={fake_train!r}, log=print)
        sys.exit(130 if result.interrupted else 0)
    """))
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not (out / "trial-0000" / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.send_signal(signal.SIGTERM)
    output = worker.communicate(timeout=30)[0]
    assert worker.returncode == 130, output
    assert [(r["state"], r["note"]) for r in read_summary(out)] == [("FAIL", "interrupted (the sweep was stopped)")]
    assert "interrupted: the running trial was stopped" in output
    assert "done" not in (out / "trial-0000" / "stdout.log").read_text()  # the run did not go on


def test_without_optuna_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    with pytest.raises(DreamerError, match=r"pip install 'dreamer-core\[sweep\]'"):
        sweep.run(config(tmp_path / "sweep"))


def test_metric_tail_reads_whole_lines_as_they_come(tmp_path):
    path = tmp_path / "metrics.jsonl"
    tail = sweep.MetricTail(path, "eval/return")
    assert tail.read() == []
    with open(path, "w") as f:
        f.write('{"step": 5, "eval/return": 1.5}\n{"step": 7, "train/return": 2}\n{"step": 9, "eval/ret')
        f.flush()
        assert tail.read() == [(5, 1.5)]
        f.write('urn": "nan"}\n{"step": 11, "eval/return": 3}\n')
        f.flush()
        assert tail.read() == [(11, 3.0)]
    assert sweep.objective_value([1.0, 3.0, 2.0], "last", "maximize") == 2.0
    assert sweep.objective_value([1.0, 3.0, 2.0], "best", "maximize") == 3.0
    assert sweep.objective_value([1.0, 3.0, 2.0], "best", "minimize") == 1.0
    assert sweep.objective_value([1.0, 3.0, 2.0], "mean", "maximize") == 2.0


def test_real_train_trials_with_a_pruned_one(tmp_path):
    """Three real `dreamer train` subprocesses on the toy env: trials 0 and 1 (the same
    setting, so the same curve) complete; trial 2 truncates every episode after one step, so
    its first evaluation (at most 1) lies below the median of the two, and optuna's
    MedianPruner prunes it: the sweep stops the run long before its 2000 steps."""
    out = tmp_path / "sweep"
    train = ("--env", "dreamer/DummyDiscrete-v0", "--preset", "tiny", "--prefill", "32", "--eval-every", "16",
             "--eval-episodes", "1", "--train-ratio", "8", "--threads", "1", "--checkpoint-seconds", "0", "-q")
    cfg = sweep.SweepConfig(out=str(out), params=("env.time_limit=choice:0,1", "steps=choice:48,2000"),
                            train_args=train, trials=3, pruner="median:2", poll_seconds=0.2)
    enqueue(cfg, {"env.time_limit": 0, "steps": 48}, {"env.time_limit": 0, "steps": 48},
            {"env.time_limit": 1, "steps": 2000})
    result = sweep.run(cfg, config_class=TrainConfig, log=lambda _: None)
    rows = result.rows
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "PRUNED"], result.table()
    assert rows[0]["value"] == rows[1]["value"] > 1 and rows[0]["step"] == 48
    assert rows[2]["step"] == 32 and rows[2]["value"] <= 1 and rows[2]["note"].startswith("pruned at step 32")
    for r in rows:
        assert read_config(out / f"trial-{r['number']:04d}", "train") is not None  # a normal run directory
    assert read_config(out / "trial-0002", "train")["steps"] == 2000
    assert max(int(line.split('"step": ')[1].split(",")[0].rstrip("}"))
               for line in (out / "trial-0002" / "metrics.jsonl").read_text().splitlines()) < 2000
    assert [r["state"] for r in read_summary(out)] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert (out / "history.png").exists() and (out / "curves.png").exists()


def test_cli_sweep_command(tmp_path):
    """`dreamer sweep` once it is wired into the CLI: the search space and the train options
    are checked before any trial runs."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from dreamer_core.cli import app

    if "sweep" not in get_command(app).commands:
        pytest.skip("the CLI has no `dreamer sweep` yet")
    runner = CliRunner()
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(out), "--param", "optim.lrr=float:1e-4:1e-3", "--", "--env", "CartPole-v1"])
    assert result.exit_code == 2 and "Did you mean 'optim.lr'" in result.output, result.output
    result = runner.invoke(app, ["sweep", str(out), "--param", "optim.lr=float:1e-4:1e-3", "--", "--stepz", "3"])
    assert result.exit_code == 2 and "No such option: --stepz" in result.output, result.output
    assert not out.exists()
