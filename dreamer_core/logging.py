"""Console progress and the metrics sink.

``ProgressDisplay`` shows a command's progress on stderr: a live bar in a terminal, plain lines
anywhere else (nohup, SLURM, CI); ``update`` only draws when due, so a collector can call it
once per env step. ``MetricsSink`` writes ``RUN/metrics.jsonl`` and passes every record to the
experiment trackers (``trackers.py``: TensorBoard, W&B, MLflow).

Imports: rich, json, trackers (which imports torch's SummaryWriter, wandb and mlflow lazily).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from dreamer_core import trackers as trackers_lib
from dreamer_core.trackers import TensorBoardTracker, Tracker

PROGRESS_SECONDS = 30.0  # between plain progress lines when the output is not a terminal
ETA_SECONDS = 60.0  # the plain lines' ETA is from the rate over this much of the recent past


class ProgressDisplay:
    """What a training loop shows on stderr while it runs.

    In a terminal (or Jupyter): a live bar, ``description bar count status elapsed ETA``,
    redrawn at most every ``refresh`` seconds, that always fits the terminal's width: the
    count, the elapsed time and the ETA keep theirs (``fit_bar_line`` shortens the rest).

    Anywhere else (nohup, SLURM, CI, a pipe) a live bar would print nothing until the end and
    then one cut line, so plain lines instead: one at the start, one every ``seconds``, one at
    the next update after ``line_due`` (an evaluation) and one at the end::

        train CartPole-v1 2000/20000 (10%) | 36.0 steps/s | ... | eval 55.3 | 1m02s | ETA 9m18s

    Args:
        total: the counter's target; ``start_count``: its value at the start (for the rate).
        description: what is counted (the bar's label, the lines' first words).
        seconds: between plain lines.
        console: where to draw (default: stderr); whether it is a terminal decides the mode.
        enabled: False shows nothing (tests, --quiet).
    """

    def __init__(self, total: int, description: str, start_count: int = 0, seconds: float = PROGRESS_SECONDS,
                 console: Console | None = None, refresh: float = 0.25, enabled: bool = True):
        self.enabled = enabled
        self.total, self.description, self.start_count = total, description, start_count
        self.console = console if console is not None else Console(file=sys.stderr)
        self.live = self.console.is_interactive or self.console.is_jupyter
        self.refresh, self.seconds = refresh, seconds
        self.status = ""
        self.count = start_count
        self._start = time.monotonic()
        self._drawn = -math.inf  # when the bar was last redrawn or the last plain line printed
        self._printed: int | None = None  # the count of the last plain line
        self._line_due = False
        self._samples: deque[tuple[float, int]] = deque([(self._start, start_count)])  # (time, count), for the ETA
        self.bar: _FittedProgress | None = None
        if self.live and enabled:
            self.bar = _FittedProgress(console=self.console)
            self._task = self.bar.add_task(description, total=total, completed=start_count, status="")

    def __enter__(self) -> ProgressDisplay:
        if self.bar is not None:
            self.bar.start()
        self.update(self.start_count, force=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.refresh()
            self.bar.stop()
        elif self.enabled and exc[0] is None and self._printed != self.count:
            self._print()

    def line_due(self) -> None:
        """The next update prints a plain line (after an evaluation), whatever the time."""
        self._line_due = True

    def due(self) -> bool:
        """Whether the next update would draw (lets callers build the status lazily)."""
        return self.enabled and self._due(time.monotonic())

    def _due(self, now: float) -> bool:
        wait = self.refresh if self.live else self.seconds
        return now - self._drawn >= wait or (self._line_due and not self.live)

    def update(self, count: int, status: Callable[[], str] | str | None = None, force: bool = False) -> bool:
        """Set the count; redraw (or print a line) when due or ``force``d. ``status`` (text, or a
        function called only when drawing) replaces the status text; None keeps it. Returns
        whether it drew."""
        self.count = count
        if not self.enabled:
            return False
        now = time.monotonic()
        if now - self._samples[-1][0] >= 1.0:
            self._samples.append((now, count))
            while len(self._samples) > 1 and now - self._samples[1][0] >= ETA_SECONDS:
                self._samples.popleft()
        if not (force or self._due(now)):
            return False
        self._drawn = now
        if status is not None:
            self.status = " ".join((status() if callable(status) else status).split()).strip(" |")
        if self.bar is not None:
            self.bar.update(self._task, completed=count, status=self.status)
        else:
            self._print()
        return True

    def line(self) -> str:
        """The plain line for the current count; the ETA is from the rate over about the last
        ``ETA_SECONDS`` (a fast random-policy prefill does not make it optimistic)."""
        now = time.monotonic()
        since, then = self._samples[0]
        done, took = self.count - then, now - since
        share = f" ({100 * self.count / self.total:.0f}%)" if self.total > 0 else ""
        eta = _duration(max(self.total - self.count, 0) * took / done) if done > 0 and took > 0 else "-"
        parts = [f"{self.description} {self.count}/{self.total}{share}", self.status, _duration(now - self._start),
                 f"ETA {eta}"]
        return " | ".join(part for part in parts if part)

    def _print(self) -> None:
        self._line_due = False
        self._printed = self.count
        self.console.file.write(self.line() + "\n")
        self.console.file.flush()


def fit_bar_line(width: int, description: str, status: str, fixed: int, bar: int = 40, min_bar: int = 10,
                 short_description: int = 12) -> tuple[str, int, str]:
    """The description, bar width and status that fit a bar line of ``width`` columns beside
    ``fixed`` columns (the count, elapsed time and ETA with their separators), which are never
    cut. What gives way, in order: the bar (down to ``min_bar``), the description (down to
    ``short_description``), the status, the rest of the description, the rest of the bar. Text is
    cut with an ellipsis; a part of width 0 is left out (its separator too)."""
    sizes = {"description": len(description), "bar": bar, "status": len(status)}
    floors = [("bar", min_bar), ("description", short_description), ("status", 0), ("description", 0), ("bar", 0)]

    def over() -> int:
        return fixed + sum(size + 1 for size in sizes.values() if size > 0) - width

    for part, floor in floors:
        while over() > 0 and sizes[part] > floor:
            sizes[part] -= 1
    return _cut(description, sizes["description"]), sizes["bar"], _cut(status, sizes["status"])


def _cut(text: str, size: int) -> str:
    return text if len(text) <= size else (text[:size - 1].rstrip() + "…" if size > 0 else "")


class _FittedProgress(Progress):
    """A rich progress display whose line is laid out at each redraw by ``fit_bar_line`` for
    the console's width."""

    def make_tasks_table(self, tasks: Any) -> Table:
        table = Table.grid(padding=(0, 1))
        for task in tasks:
            if not task.visible:
                continue
            right = [MofNCompleteColumn().render(task), TimeElapsedColumn().render(task), Text("ETA"),
                     TimeRemainingColumn().render(task)]
            fixed = sum(cell.cell_len + 1 for cell in right) - 1
            description, bar, status = fit_bar_line(self.console.width, task.description, task.fields["status"], fixed)
            cells = [Text(description, style="bold")] if description else []
            cells += [BarColumn(bar_width=bar).render(task)] if bar else []
            cells += right[:1] + ([Text(status)] if status else []) + right[1:]
            for _ in range(len(table.columns), len(cells)):
                table.add_column(no_wrap=True)
            table.add_row(*cells)
        return table


def _duration(seconds: float) -> str:
    """``42s``, ``4m10s``, ``1h02m``, ``2d03h``."""
    seconds = max(int(round(seconds)), 0)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // sub_size:02d}{sub}"
    return f"{seconds}s"


class MetricsSink:
    """Append metrics to ``RUN/metrics.jsonl`` (one JSON object per line with ``step``), always,
    and pass them to the experiment trackers (``trackers.py``): TensorBoard under ``RUN/tb/`` by
    default; ``track`` swaps in the ones a stage's ``loggers`` setting names (W&B, MLflow).

    Values are python floats by the time they arrive here: reduce tensors once per log
    interval (one host sync), never per step.
    """

    def __init__(self, run_dir: Path | str, tensorboard: bool = True, name: str = "metrics.jsonl",
                 trackers: list[Tracker] | None = None):
        """``name``: the JSONL file inside ``run_dir`` (stage 03 writes ``behavior_metrics.jsonl``);
        ``trackers``: the sinks beside it (default: TensorBoard when ``tensorboard``)."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / name, "a", buffering=1)
        if trackers is None:
            trackers = [TensorBoardTracker(self.run_dir / trackers_lib.TB_DIR)] if tensorboard else []
        self.trackers: list[Tracker] = list(trackers)

    def track(self, loggers: str, stage: str, config: dict[str, Any], project: str = "",
              metrics: tuple[str, ...] = ()) -> None:
        """Log to the trackers ``loggers`` names from now on (instead of the default TensorBoard),
        each given the stage's resolved ``config`` (``metrics``: its headline metrics). Call it
        before the first record: the replaced default then never wrote anything."""
        opened = trackers_lib.open_trackers(loggers, self.run_dir, stage, config, project, metrics)
        for tracker in self.trackers:
            tracker.close()
        self.trackers = opened

    @property
    def media(self) -> bool:
        """Whether any tracker shows images and videos (worth drawing them)."""
        return any(tracker.media for tracker in self.trackers)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        values = trackers_lib.numbers(record)
        for tracker in self.trackers:
            tracker.log(int(step), values)

    def image(self, tag: str, image: Any, step: int) -> None:
        """A uint8 ``[H, W, 3]`` image for the trackers that show media."""
        for tracker in self.trackers:
            tracker.image(tag, image, int(step))

    def video(self, tag: str, frames: list[Any], step: int, fps: int = 4) -> None:
        """uint8 ``[H, W, 3]`` frames for the trackers that show media."""
        for tracker in self.trackers:
            tracker.video(tag, frames, int(step), fps)

    def flush(self) -> None:
        self._jsonl.flush()
        for tracker in self.trackers:
            tracker.flush()

    def close(self, failed: bool = False) -> None:
        """Close the file and the trackers (``failed``: the stage stopped on an error; W&B and
        MLflow mark their runs so)."""
        self._jsonl.flush()
        self._jsonl.close()
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close(failed)

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(failed=exc[0] is not None)


def read_metrics(run_dir: Path | str, name: str = "metrics.jsonl") -> list[dict[str, Any]]:
    """All records of ``RUN/<name>`` (a torn last line from a crash is skipped)."""
    path = Path(run_dir) / name
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value
