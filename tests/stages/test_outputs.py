"""The output checks of the stage kit (stages/outputs.py): run directories, folders, output
files and writability, each refused with a message before anything is written."""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from dreamer_core import runs
from dreamer_core.errors import DreamerError
from dreamer_core.stages import outputs
from dreamer_core.stages.outputs import (
    check_folder,
    check_output_file,
    check_run_dir,
    check_writable,
)
from tests.common import mounted_tmpfs


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system holding ``file.txt`` and ``run/config.yaml`` (root only)."""
    for where in mounted_tmpfs(tmp_path / "ro", "1m"):
        (where / "file.txt").write_text("x")
        (where / "run").mkdir()
        (where / "run" / runs.WORLD_MODEL_CONFIG).write_text("stage: x\n")
        assert subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True).returncode == 0
        yield where


def test_a_run_directory_may_be_new_empty_or_a_run(tmp_path):
    assert check_run_dir(tmp_path / "a" / "b" / "new") == tmp_path / "a" / "b" / "new"
    assert tree(tmp_path) == []  # the probe removed the folders it made
    (tmp_path / "empty").mkdir()
    check_run_dir(tmp_path / "empty")
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".lock").write_text("{}")
    check_run_dir(tmp_path / "hidden")  # hidden files do not count
    for marker in outputs.RUN_MARKERS:
        run = tmp_path / f"run-{marker.replace('.', '_')}"
        run.mkdir()
        (run / marker).write_text("x")
        (run / "notes.txt").write_text("the user's own notes beside the run")
        check_run_dir(run)
    assert not list(tmp_path.rglob(".dreamer-write-test-*"))


def test_a_file_a_dataset_or_an_unrelated_directory_is_refused(tmp_path):
    (tmp_path / "afile").write_text("precious")
    with pytest.raises(DreamerError, match=r"--out .*afile is a file, not a run directory"):
        check_run_dir(tmp_path / "afile")
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.json").write_text("{}")
    with pytest.raises(DreamerError, match="is a dataset directory, not a run directory"):
        check_run_dir(ds, "--run")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.tex").write_text("precious")
    with pytest.raises(DreamerError, match=r"exists and is not a run directory \(it holds thesis\.tex\)"):
        check_run_dir(notes)
    assert (tmp_path / "afile").read_text() == "precious" and tree(notes) == ["thesis.tex"]


def test_a_folder_must_not_be_a_file(tmp_path):
    (tmp_path / "eval").write_text("x")
    with pytest.raises(DreamerError, match="evaluation folder .* is a file"):
        check_folder(tmp_path / "eval", "The evaluation folder")
    check_folder(tmp_path / "new" / "eval", "The evaluation folder")
    assert tree(tmp_path) == ["eval"]


def test_output_files_need_their_suffix_and_a_free_name(tmp_path):
    with pytest.raises(DreamerError, match=r"--out must end in \.png or \.pdf \(got 'a\.txt'\).*a\.png"):
        check_output_file(tmp_path / "a.txt", (".png", ".pdf"))
    with pytest.raises(DreamerError, match=r"must end in \.gif"):
        check_output_file(tmp_path / "noext", (".gif",))
    (tmp_path / "clip.gif").mkdir()
    with pytest.raises(DreamerError, match="is an existing directory"):
        check_output_file(tmp_path / "clip.gif", (".gif",))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DreamerError, match="afile is a file, not a folder"):
        check_output_file(tmp_path / "afile" / "x.gif", (".gif",))
    (tmp_path / "old.gif").write_text("replaced by design")
    assert check_output_file(tmp_path / "old.gif", (".gif", ".mp4")) == tmp_path / "old.gif"
    assert check_output_file(tmp_path / "deep" / "x.MP4", (".gif", ".mp4")).name == "x.MP4"
    assert tree(tmp_path) == ["afile", "clip.gif", "old.gif"]


def test_unwritable_places_are_refused(tmp_path):
    with pytest.raises(DreamerError, match=r"/proc/dreamer-test/run cannot be written \(No such file or directory\)"):
        check_run_dir("/proc/dreamer-test/run")
    with pytest.raises(DreamerError, match="afile is a file, not a folder"):
        (tmp_path / "afile").write_text("x")
        check_writable(tmp_path / "afile" / "sub", "--out x")


def test_read_only_file_system(read_only):
    with pytest.raises(DreamerError, match=r"--out .*new cannot be written \(Read-only file system\)"):
        check_run_dir(read_only / "new")
    with pytest.raises(DreamerError, match=r"Read-only file system"):
        check_run_dir(read_only / "run", "--run")  # an existing run on a read-only disk
    with pytest.raises(DreamerError, match=r"Read-only file system"):
        check_output_file(read_only / "x.gif", (".gif",))
    assert tree(read_only) == ["file.txt", "run", "run/config.yaml"]


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_a_failing_probe_is_named_and_cleaned_up(tmp_path, monkeypatch, code):
    """Without root (no mount), the same refusals with the OS error injected into the probe."""
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    (tmp_path / "run").mkdir()
    with pytest.raises(DreamerError, match=rf"cannot be written \({os.strerror(code)}\)"):
        check_run_dir(tmp_path / "run")
    original = Path.mkdir

    def mkdir_then_refuse(self, *args, **kwargs):
        if self.name == "b":
            raise OSError(code, os.strerror(code))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir_then_refuse)
    with pytest.raises(DreamerError, match=rf"cannot be written \({os.strerror(code)}\)"):
        check_run_dir(tmp_path / "a" / "b" / "c")
    assert tree(tmp_path) == ["run"]  # the probe's own folder "a" was removed again
