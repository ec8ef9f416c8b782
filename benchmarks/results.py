"""Shared by the benchmark scripts: write a named section of benchmarks/RESULTS.md (leaving the
other sections alone), and run training jobs a few at a time."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
# What a later call needs to write a section again, kept in the repository (benchmarks/_work, where
# the runs train, is not: a fresh checkout has none of it): the notes written under sections, the
# curves of finished runs, the last speed run.
RECORDS = Path(__file__).resolve().parent / "records"
HEADER = "# Benchmark results\n\nFigures measured on the project machine (2 CPU cores, no GPU); each section names its command.\n"


def update_section(name: str, body: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` (append if new)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    block = f"{start}\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def load_records(path: Path) -> dict[str, dict]:
    """The records kept at ``path`` (a JSON object; empty when the file does not exist yet)."""
    return json.loads(path.read_text()) if path.exists() else {}


def save_records(path: Path, records: dict[str, dict]) -> None:
    """One record per line, sorted by key, so that a new run is a one-line change; replaced whole."""
    lines = [f"{json.dumps(k)}: {json.dumps(records[k])}" for k in sorted(records)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    tmp.replace(path)


def kept_note(path: Path, given: str | None) -> str:
    """The note written under a section: ``given`` is stored at ``path`` (beside the runs it is
    about; "" removes it) so that a later call without ``--note`` writes it again instead of
    dropping it; None reads the stored one."""
    if given is not None:
        if given:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(given)
        elif path.exists():
            path.unlink()
        return given
    return path.read_text() if path.exists() else ""


def run_parallel(jobs: list[tuple[str, list[str], dict[str, str], str]], parallel: int) -> list[str]:
    """Run ``(name, command, environment, line to print)`` jobs, ``parallel`` at a time, in order;
    returns the printed lines of the jobs started. A failed job is reported, not retried."""
    todo, running, started = list(jobs), [], []
    while todo or running:
        while todo and len(running) < parallel:
            name, cmd, env, line = todo.pop(0)
            print(line, flush=True)
            started.append(line)
            running.append((subprocess.Popen(cmd, env=env), name))
        time.sleep(5)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                print(f"{name}: exit {proc.returncode}", flush=True)
    return started
