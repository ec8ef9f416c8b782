"""Console progress and the metrics sink.

``ProgressBar.update`` only redraws every ``refresh`` seconds, so a collector can call it
once per env step. ``MetricsSink`` writes ``RUN/metrics.jsonl`` and TensorBoard events.

Imports: rich, json; torch's SummaryWriter lazily (only when TensorBoard is on).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ProgressBar:
    """A progress bar with a free-text status (rate, episodes, returns...).

    Args:
        total: units of work (env steps, updates, episodes).
        description: what is counted.
        enabled: False prints nothing (tests, --quiet).
        refresh: minimum seconds between redraws.
    """

    def __init__(self, total: int, description: str, enabled: bool = True, refresh: float = 0.25):
        self.total = total
        self.enabled = enabled
        self.refresh = refresh
        self._last = 0.0
        self._progress: Progress | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, status="")

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.refresh()
            self._progress.stop()

    def update(self, completed: int, status: str | None = None, force: bool = False) -> bool:
        """Set progress; returns True when it redrew (so callers can skip building status)."""
        if self._progress is None:
            return False
        now = time.monotonic()
        if not force and now - self._last < self.refresh:
            return False
        self._last = now
        fields = {} if status is None else {"status": status}
        self._progress.update(self._task, completed=completed, **fields)
        return True

    def due(self) -> bool:
        """Whether the next update would redraw (lets callers build the status lazily)."""
        return self._progress is not None and time.monotonic() - self._last >= self.refresh


class MetricsSink:
    """Append metrics to ``RUN/metrics.jsonl`` (one JSON object per line with ``step``) and to
    TensorBoard under ``RUN/tb/``.

    Values are python floats by the time they arrive here: reduce tensors once per log
    interval (one host sync), never per step.
    """

    def __init__(self, run_dir: Path | str, tensorboard: bool = True, name: str = "metrics.jsonl"):
        """``name``: the JSONL file inside ``run_dir`` (stage 03 writes ``behavior_metrics.jsonl``)."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / name, "a", buffering=1)
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tb"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def flush(self) -> None:
        self._jsonl.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self.flush()
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsSink:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
