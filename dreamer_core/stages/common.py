"""The stage kit: what every stage shares, so that no stage imports another.

- ``autocast``: precision selection (bf16 autocast or float32); the device itself is
  ``runtime.resolve_device``.
- ``RunLock``: one writer per run directory (a lock file with the holder's pid and host; a
  lock left by a dead process is taken over with a message); ``clean_temporaries`` removes
  what a killed atomic write left.
- ``run_id``: the identity of a run directory (``RUN/run.json``), stored in every checkpoint.
- ``resume_or_refuse``: a fresh run refuses to overwrite a run directory; a resumed one reads
  its checkpoint and refuses one that belongs to another run; a run killed before its first
  checkpoint starts afresh. ``truncate_metrics`` drops records logged after a given step.
- ``write_config``: the resolved config of a stage, saved as its section of ``RUN/config.yaml``
  (the other commands' sections kept; a file of dreamer-core 0.3.0 and earlier is converted).
- ``open_datasets``: the datasets a stage trains on, with a clear error when none is given.
- ``StopRequest``: Ctrl-C / SIGTERM become a flag the loops check between steps.
- ``TrainLoop``: the training loop helper of stage 02, stage 03 and ``dreamer train``: the
  schedule (a counter of updates or env steps up to a total, optionally a time limit), metric
  averaging between log records, the non-finite guard, the progress display, the metrics sink,
  the checkpoint cadence (every N counts or every S seconds) and the user's ``Callback`` hooks
  (``on_update``, ``on_eval``, ``on_checkpoint``).
- the progress display (``logging.ProgressDisplay``: a live bar in a terminal, plain lines anywhere
  else: nohup, SLURM, CI), shared with collect and evaluate.

Artifact names live in ``dreamer_core.runs`` (a library module: the notebooks use it too).

Imports: checkpoint, config, data, distributed, errors, files, logging, runs (config file names); rich.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from dreamer_core import checkpoint, distributed, runs, trackers
from dreamer_core import config as config_lib
from dreamer_core.data.dataset import Dataset
from dreamer_core.errors import DreamerError
from dreamer_core.files import atomic_write_bytes
from dreamer_core.logging import PROGRESS_SECONDS, MetricsSink, ProgressDisplay, read_metrics
from dreamer_core.stages.outputs import check_run_dir

C = TypeVar("C")


def autocast(device: torch.device, precision: str):
    """bf16 autocast when asked for (master weights and losses stay float32), else a no-op."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def open_datasets(paths: tuple[str, ...] | list[str], skip_corrupt: bool = False) -> list[Dataset]:
    if not paths:
        raise DreamerError("No dataset given. Pass one or more dataset directories written by `dreamer collect`.")
    return [Dataset(p, skip_corrupt=skip_corrupt) for p in paths]


def write_config(path: Path, stage: str, cfg: Any, **extra: Any) -> None:
    """Save a stage's resolved config (and ``extra`` records, e.g. a calibration) as the
    section ``stage`` of the run's config file ``path`` (``RUN/config.yaml``): the section is
    replaced, the other commands' sections stay, and a file of dreamer-core 0.3.0 and earlier
    (``stage:`` + ``config:``) becomes its command's section."""
    path = Path(path)
    found = {}
    if path.is_file():
        found = config_lib.sections(config_lib.read_yaml(path, "The run's config file"), "train-world-model",
                                    run_file=True) or {}
    found[stage] = config_lib.section_of(cfg, extra)
    atomic_write_bytes(path, config_lib.dump_sections(found).encode())


def truncate_metrics(run_dir: Path, step: int, name: str = "metrics.jsonl") -> None:
    """Drop metrics logged after the checkpoint we resume from (they will be logged again)."""
    path = run_dir / name
    if not path.exists():
        return
    kept = [r for r in read_metrics(run_dir, name) if r.get("step", 0) <= step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


RUN_ID_FILE = "run.json"
LOCK_FILE = ".lock"


def run_id(run_dir: Path, create: bool = False) -> str | None:
    """The identity of the run in ``run_dir`` (``RUN/run.json``); ``create`` makes one for a new run.

    Every checkpoint stores it, so a checkpoint copied from another run is recognised."""
    path = run_dir / RUN_ID_FILE
    if path.exists():
        try:
            return str(json.loads(path.read_text())["run_id"])
        except (ValueError, KeyError, TypeError):
            raise DreamerError(
                f"{path} is damaged, so the run's checkpoints cannot be matched to it. Restore it from a "
                "backup, or start a new run in another directory; nothing was changed."
            ) from None
    if not create:
        return None
    identity = uuid.uuid4().hex
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps({"run_id": identity, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
    return identity


def resume_or_refuse(cfg: C, latest: Path, artifacts: list[Path], resume: bool, alternative: str,
                     keep: Callable[[C, C], C] = lambda stored, given: stored, resumable: list[Path] = (),
                     config_file: Path | None = None, command: str | None = None,
                     ) -> tuple[C, checkpoint.TrainState | None]:
    """The config a run continues with, and its resume state (None for a fresh run).

    ``latest`` is the run's resume checkpoint (``RUN/checkpoints/NAME.pt``). Resuming takes
    the run's stored config, passed through ``keep(stored, given)`` for what the user may
    change on a resume (a new budget, new datasets), and refuses a checkpoint whose run
    identity is not this directory's. ``--resume`` on a run killed before its first checkpoint
    starts it afresh and says so. A fresh run refuses to start where ``latest`` or any of
    ``artifacts`` exist, so nothing on disk is overwritten; of those, ``resumable`` ones (an
    online run's replay) do not stop a resume without a checkpoint: the stage continues from them,
    with the config the run started with: the section ``command`` (default: the command whose
    checkpoint ``latest`` is, ``runs.LATEST_COMMANDS``) of ``config_file`` (written by
    ``write_config``), or, in a run of dreamer-core 0.3.0 and earlier, its own file.
    """
    run_dir = latest.parent.parent
    if resume and not run_dir.is_dir():
        raise DreamerError(
            f"--resume was given, but there is no run at {run_dir}. Check the path, or start a new run there "
            "without --resume."
        )
    if resume and latest.exists():
        state = checkpoint.load(latest, checkpoint.TrainState)
        _check_identity(state, latest, run_dir)
        stored = config_lib.from_dict(type(cfg), state.stage_config)
        return keep(stored, cfg), state
    taken = [p for p in (latest, *artifacts) if p.exists()]
    if resume and not [p for p in taken if p not in resumable]:
        stored = None
        if config_file is not None:
            command = command or runs.LATEST_COMMANDS.get(latest.name, latest.stem)
            stored = config_lib.read_section(config_file, command)
            legacy = runs.LEGACY_CONFIGS.get(command)
            if stored is None and config_file.name == runs.CONFIG and legacy and legacy != runs.CONFIG:
                stored = config_lib.read_section(config_file.parent / legacy, command, legacy_command=command)
            if stored is None:
                has = (f"its {config_file.name} has no {command} section" if config_file.exists()
                       else f"it has no {config_file.name}")
                raise DreamerError(
                    f"--resume was given, but the run in {run_dir} never started ({has}), so "
                    "there is nothing to continue. Start it without --resume, with the options it should have."
                )
        kept = "".join(f", keeping {p.name}/" for p in taken)
        print(f"{run_dir} has no checkpoint yet (the run stopped before its first one): starting it afresh{kept}.",
              file=sys.stderr)
        if stored is not None:
            cfg = keep(config_lib.from_dict(type(cfg), stored["config"]), cfg)
        return cfg, None
    if taken:
        raise DreamerError(
            f"The run {run_dir} already holds {', '.join(p.name for p in taken)}"
            + (f" but no {latest.name} to resume from" if resume else "")
            + f". {'Pass --resume to continue it, or ' if not resume else 'Choose another --out: '}{alternative}; "
            "nothing was changed."
        )
    return cfg, None


def _check_identity(state: checkpoint.TrainState, latest: Path, run_dir: Path) -> None:
    here = run_id(run_dir)
    if here is None or state.run_id != here:
        found = f"run {state.run_id or 'unknown'}"
        raise DreamerError(
            f"The checkpoint {latest} belongs to another run ({found}), not to the run in {run_dir} "
            f"({'no ' + RUN_ID_FILE if here is None else 'run ' + here}): it was copied or moved here. "
            "Resume the run it belongs to in its own directory, or start a new run elsewhere; nothing was changed."
        )


def clean_temporaries(run_dir: Path) -> list[Path]:
    """Remove the temporary files killed atomic writes left in the run (``.NAME.*.tmp``);
    call it while holding the run's lock. Returns what was removed."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for path in folder.glob(".*.tmp") if folder.is_dir() else ():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def claim_run_dir(dist: distributed.Context, run_dir: str, flag: str, loggers: str, loggers_flag: str,
                  ) -> Iterator[None]:
    """Hold the run directory for the body: rank 0 alone (the only writer of a ``torchrun``
    launch; the only process otherwise) checks the trackers ``loggers`` can be built, checks
    ``run_dir`` as an output (``outputs.check_run_dir``, naming ``flag``) and locks it
    (``RunLock``). A refusal there stops every rank: rank 0 raises its own DreamerError, the
    others one that points to it; nothing is written."""
    with contextlib.ExitStack() as stack:
        problem = None
        if dist.is_main:
            try:
                trackers.check(loggers, loggers_flag)  # before any write
                check_run_dir(run_dir, flag)
                stack.enter_context(RunLock(Path(run_dir)))
            except DreamerError as error:
                problem = error
        if not dist.all(problem is None):
            raise problem or DreamerError(f"Rank 0 refused the run in {run_dir} (its message says why); "
                                          "nothing was written.")
        yield


class RunLock:
    """One writer per run directory: ``RUN/.lock`` holds the writer's pid, host and start time.

    A lock held by a live process (or by another host, whose processes cannot be checked)
    is refused with a message; a lock left by a process that no longer runs on this host is
    taken over, with a message. The lock is removed on exit (and the run directory too when the
    lock made it and nothing was written into it). Taking the lock removes the temporary files
    that killed atomic writes left (``clean_temporaries``)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def __enter__(self) -> RunLock:
        self.created = not self.run_dir.exists()  # a refused new run leaves no empty directory
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.record, f)
            clean_temporaries(self.run_dir)  # safe now: no other writer can be mid-write
            return self
        raise DreamerError(f"Could not take the lock {self.path}; try again.")

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)
        if self.created and not any(self.run_dir.iterdir()):
            self.run_dir.rmdir()

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile: try again
        except (ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, self.record["host"]
        if host != self.record["host"]:
            raise DreamerError(
                f"The run {self.run_dir} is in use by process {pid} on host {host} (since {holder.get('since')}). "
                "Wait for it to finish or stop it; if it is certainly gone, delete "
                f"{self.path} and try again. Nothing was changed."
            )
        if pid > 0 and _alive(pid):
            raise DreamerError(
                f"The run {self.run_dir} is in use by process {pid} (since {holder.get('since')}): two writers "
                "would duplicate its data and metrics. Wait for it to finish or stop it (Ctrl-C keeps "
                "everything); nothing was changed."
            )
        print(f"{self.run_dir}: taking over the lock of process {pid}, which no longer runs.", file=sys.stderr)
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks between steps, so a stop never lands in
    the middle of an HDF5 write (an exception raised there could leave a half-written shard
    header). A second Ctrl-C raises KeyboardInterrupt at once; the writer then discards its
    open shard instead of closing it. kill -9 cannot be caught: the open shard stays .partial."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


# --- the training loop helper ---------------------------------------------------------------------


class Every:
    """Due each time a counter reaches the next multiple of ``every`` (0: never).

    ``due_now``: the first check is due whatever the count (an evaluation before training)."""

    def __init__(self, every: int | float, count: int = 0, due_now: bool = False):
        self.every = every
        self.next = (0 if due_now else self._after(count)) if every > 0 else math.inf

    def _after(self, count: int) -> float:
        return (count // self.every + 1) * self.every if self.every > 0 else math.inf

    def __call__(self, count: int) -> bool:
        if count < self.next:
            return False
        self.next = self._after(count)
        return True


class EverySeconds:
    """Due once ``seconds`` of wall-clock time have passed since the last time it was due."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last = time.monotonic()

    def __call__(self) -> bool:
        if time.monotonic() - self.last < self.seconds:
            return False
        self.last = time.monotonic()
        return True


class NullSink:
    """The metrics sink of a rank other than 0 in a data-parallel run: it writes nothing."""

    media = False

    def track(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def image(self, *args: Any, **kwargs: Any) -> None:
        pass

    def video(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def __enter__(self) -> NullSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


class MetricMean:
    """Averages float metrics between two log records."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def pop(self, prefix: str = "") -> dict[str, float]:
        """The means since the last pop (keys prefixed), and a fresh start."""
        out = {f"{prefix}{k}": v / self.count for k, v in self.sums.items()} if self.count else {}
        self.sums, self.count = {}, 0
        return out


class NonFiniteGuard:
    """Counts non-finite updates in a row; at ``limit`` it calls ``on_limit`` (to keep data) and
    raises the DreamerError that ``message(count)`` words."""

    def __init__(self, limit: int, message: Callable[[int], str], on_limit: Callable[[], None] | None = None):
        self.limit, self.message, self.on_limit = limit, message, on_limit
        self.in_row = 0

    def check(self, finite: bool) -> bool:
        """Record one update; returns ``finite``, raises at the limit."""
        self.in_row = 0 if finite else self.in_row + 1
        if self.in_row >= self.limit:
            if self.on_limit is not None:
                self.on_limit()
            raise DreamerError(self.message(self.in_row))
        return finite


class Callback:
    """Hooks the training loops call: stage 02, stage 03 and ``dreamer train``.

    Subclass it and override the hooks you need (these do nothing), or pass any object with
    some of the three methods. ``step`` is the counter the run logs its metrics at (the
    ``step`` of ``metrics.jsonl``): updates in stages 02 and 03, env steps in ``dreamer
    train`` (where several updates can share one env step).

    An exception raised by a hook is not caught: it ends the run like any other error (the
    last checkpoint stays, and ``resume`` continues from it; ``dreamer train`` loses the
    episodes not yet written to a shard, as after a crash). A failing hook is a bug to see,
    not to skip, and raising is the way to stop a run from a hook.

    Example:
        ```python
        class PrintLoss(Callback):
            def on_update(self, step, metrics):
                if step % 100 == 0:
                    print(step, metrics["wm/loss"])
        ```
    """

    def on_update(self, step: int, metrics: dict[str, float]) -> None:
        """After every update that counted: its metrics as floats, keyed as ``metrics.jsonl``
        keys them (``wm/*`` world model; ``actor/*``, ``critic/*``, ``imag/*`` behavior), not
        averaged. Stage 02 skips a non-finite update (it does not count); ``dreamer train``
        counts it and reports ``{"wm/nonfinite": 1.0}``."""

    def on_eval(self, step: int, result: dict[str, float]) -> None:
        """After every evaluation: stage 02's held-out metrics (``val/wm/*``; none without a
        held-out split), ``dreamer train``'s evaluation episodes (``eval/*``). Stage 03 does
        not evaluate."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After every checkpoint: ``path`` is the resume checkpoint just written
        (``RUN/checkpoints/*latest.pt``); the run's artifacts (``world_model.pt``,
        ``behavior.pt``) were written with it."""


class TrainLoop:
    """The skeleton every training stage runs in (see the module docstring).

    Use as a context manager around the stage's ``while loop.running(count):`` loop; it opens
    the metrics sink (``loop.sink``), the progress display and the stop request, and keeps the
    start time and count for rates.

    Args:
        run_dir: where ``metrics_name`` and ``tb/`` go.
        total: the counter's target (updates or env steps); ``count``: its value now (resumes).
        description: the progress display's label.
        progress: False prints nothing; True, or the seconds between plain lines when stderr
            is not a terminal (True: ``PROGRESS_SECONDS``), shows a ``ProgressDisplay``: a bar
            in a terminal, else plain lines, also after each evaluation (a record logged with
            ``eval/`` or ``val/`` keys).
        log_every: counts between log records (``log_due``).
        checkpoint_every / checkpoint_seconds: checkpoint cadence by counts or by seconds
            (0: only when the stage asks at the end).
        max_seconds: also stop after this much wall-clock time (0: no limit).
        handle_signals: turn SIGINT/SIGTERM into ``stopped`` (the loop ends cleanly).
        callbacks: ``Callback``-like objects; the stage reports through ``updated``,
            ``evaluated`` and ``checkpointed``, which call their hooks in order.
        dist: a data-parallel run's ``distributed.Context``: rank 0 alone writes metrics, shows
            progress and calls the hooks (the other ranks get a ``NullSink``), and ``running``
            stops every rank at the same count when any rank is asked to stop.
    """

    def __init__(self, run_dir: Path, total: int, count: int, description: str, progress: bool | float = True,
                 metrics_name: str = "metrics.jsonl", log_every: int = 0, checkpoint_every: int = 0,
                 checkpoint_seconds: float = 0.0, max_seconds: float = 0.0, handle_signals: bool = False,
                 callbacks: Sequence[Any] = (), dist: distributed.Context = distributed.SINGLE):
        self.run_dir, self.total = run_dir, total
        self.dist = dist
        if not dist.is_main:  # rank 0 alone writes metrics, shows progress and calls the hooks
            progress, callbacks = False, ()
        self.callbacks = list(callbacks)
        self.start_count, self.start_time = count, time.perf_counter()
        self.metrics_name, self.description, self.progress = metrics_name, description, progress
        self.mean = MetricMean()
        self._log = Every(log_every, count)
        self._checkpoint = Every(checkpoint_every, count)
        self._checkpoint_timer = EverySeconds(checkpoint_seconds) if checkpoint_seconds > 0 else None
        self.max_seconds = max_seconds
        self._stop = StopRequest() if handle_signals else None
        self.sink: MetricsSink | NullSink | None = None
        self.display: ProgressDisplay | None = None

    def __enter__(self) -> TrainLoop:
        self.sink = (MetricsSink(self.run_dir, name=self.metrics_name) if self.dist.is_main else NullSink()).__enter__()
        if self.progress:
            seconds = PROGRESS_SECONDS if self.progress is True else float(self.progress)
            self.display = ProgressDisplay(self.total, self.description, self.start_count, seconds).__enter__()
        if self._stop is not None:
            self._stop.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._stop is not None:
            self._stop.__exit__(*exc)
        if self.display is not None:
            self.display.__exit__(*exc)
        self.sink.__exit__(*exc)

    # --- schedule ---------------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """A stop was requested (Ctrl-C, SIGTERM) or the time limit passed."""
        timed_out = self.max_seconds > 0 and self.elapsed() >= self.max_seconds
        return timed_out or (self._stop is not None and self._stop.requested)

    def running(self, count: int) -> bool:
        """Below the total and no stop asked for (on any rank: all ranks stop together)."""
        return count < self.total and not self.dist.any(self.stopped)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start_time

    def rate(self, count: int) -> float:
        """Counts per second since the loop started."""
        return (count - self.start_count) / max(self.elapsed(), 1e-9)

    # --- cadences -----------------------------------------------------------------------------

    def log_due(self, count: int, final: bool = False) -> bool:
        return self._log(count) or final

    def checkpoint_due(self, count: int, final: bool = False) -> bool:
        by_count = self._checkpoint(count)
        by_time = self._checkpoint_timer is not None and self.dist.any(self._checkpoint_timer())  # ranks agree
        return by_count or by_time or final

    # --- records --------------------------------------------------------------------------

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.sink.log(step, metrics)
        if self.display is not None and any(k.startswith(("eval/", "val/")) for k in metrics):
            self.display.line_due()  # an evaluation: a plain line at the next show

    def log_mean(self, step: int, prefix: str = "", **extra: float) -> dict[str, float]:
        """Log the means since the last record (keys prefixed) plus ``extra``; returns the record."""
        record = self.mean.pop(prefix)
        record.update(extra)
        self.sink.log(step, record)
        return record

    # --- callbacks (exceptions propagate: see Callback) -----------------------------------------

    def updated(self, step: int, metrics: dict[str, float]) -> None:
        """Call every callback's ``on_update`` (each gets its own copy of ``metrics``)."""
        self._call("on_update", step, metrics)

    def evaluated(self, step: int, result: dict[str, float]) -> None:
        """Call every callback's ``on_eval``."""
        self._call("on_eval", step, result)

    def checkpointed(self, step: int, path: Path) -> None:
        """Call every callback's ``on_checkpoint`` with the resume checkpoint just written."""
        self._call("on_checkpoint", step, path)

    def _call(self, hook: str, step: int, value: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(int(step), dict(value) if isinstance(value, dict) else value)

    def show(self, count: int, status: Callable[[], str] | None = None, force: bool = False) -> None:
        """Redraw the progress bar, or print a plain line, when due (``status`` is only called
        then; None keeps the text)."""
        if self.display is not None:
            self.display.update(count, status, force=force)
