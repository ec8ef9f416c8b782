"""files.py: an atomic write shows readers the old or the new content, never part of it, and
leaves no temporary file behind, also when the write fails."""

import os

import pytest

from dreamer_core import files


def test_atomic_write_replaces_the_content_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    files.atomic_write_bytes(path, b"old")
    files.atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    files.atomic_write_bytes(path, b"old")

    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="No space left"):
        files.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_fsync_dir_tolerates_a_missing_folder(tmp_path):
    files.fsync_dir(tmp_path)
    files.fsync_dir(tmp_path / "missing")  # no error: nothing to make durable
