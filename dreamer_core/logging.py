"""Console progress for long work (rich), cheap enough to call from a hot loop.

``ProgressBar.update`` only redraws every ``refresh`` seconds, so a collector can call it
once per env step. The JSONL/TensorBoard metrics sink arrives with the training stages.

Imports: rich only.
"""

from __future__ import annotations

import sys
import time
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
