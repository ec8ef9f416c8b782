"""The fast cases of benchmarks/fuzz_cli.py through the real CLI (typer's CliRunner, in this
process): each bad command line exits with code 2, prints no traceback, names the problem and
leaves every file of the workspace (a dataset, trained runs, a file, an unrelated folder,
read-only and nearly full mounts when running as root) unchanged. The whole table:
``python benchmarks/fuzz_cli.py``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fuzz_cli", ROOT / "benchmarks" / "fuzz_cli.py")
fuzz = sys.modules.setdefault("fuzz_cli", importlib.util.module_from_spec(_spec))  # dataclasses look it up there
_spec.loader.exec_module(fuzz)

FAST = [c for c in fuzz.CASES if c.fast]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "ws"
    root.mkdir()
    ws = fuzz.Workspace(root)
    try:
        yield ws.prepare()
    finally:
        ws.close()


def test_the_table_covers_every_command_and_names_are_unique():
    names = [c.name for c in fuzz.CASES]
    assert len(names) == len(set(names))
    assert {fuzz.command_of(c) for c in fuzz.CASES} == {*fuzz.COMMANDS, "(none)"}
    assert 30 <= len(FAST) < len(fuzz.CASES)


@pytest.mark.parametrize("case", FAST, ids=[c.name for c in FAST])
def test_bad_input_fails_cleanly_and_changes_nothing(workspace, case):
    outcome = fuzz.run_case(case, workspace, inprocess=True)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert outcome.passed, f"{'; '.join(outcome.problems)}\n$ dreamer {' '.join(outcome.command)}\n{outcome.output}"


def test_the_checks_can_fail(workspace):
    """A command that succeeds, and one that writes, are caught by the same checks."""
    ok = fuzz.run_case(fuzz.case("probe-version", "version", r"nothing"), workspace, inprocess=True)
    assert any("exit code 0" in p for p in ok.problems) and any("does not match" in p for p in ok.problems)
    writes = fuzz.case("probe-writes", "collect --env dreamer/DummyDiscrete-v0 --out {fresh} --steps 20 -q", "x")
    outcome = fuzz.run_case(writes, workspace, inprocess=True)
    assert any(p.startswith("new files: fresh/probe-writes/") for p in outcome.problems), outcome.problems
