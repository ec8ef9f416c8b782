"""A disk that fills up, is read-only or refuses writes: a clear DatasetError, nothing lost.

h5py reports a full disk as OSError, RuntimeError or ValueError depending on the call (the
errno only in the message). The injected errors below are the ones h5py raises; one test
fills a real tmpfs when the test process may mount one (root).
"""

import errno
import hashlib
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest

from dreamer_core.data import minari as mi
from dreamer_core.data import schema, store
from dreamer_core.data.dataset import Dataset
from dreamer_core.data.storage import ColumnStore
from dreamer_core.data.writer import DatasetWriter
from dreamer_core.errors import DatasetError
from tests.common import ACTION_SPACES, OBS_SPACES, make_episode, mounted_tmpfs

ROOT = Path(__file__).resolve().parents[2]

# The errors h5py 3.x raises on a full disk (messages shortened).
FLUSH_ENOSPC = RuntimeError(
    "Unable to synchronously flush file (file write failed: time = Mon Nov 30 21:07:11 2026\n, "
    "filename = '/x/.shard-1.h5.partial', file descriptor = 3, errno = 28, error message = "
    "'No space left on device', buf = 0x1, total write size = 2048, bytes this sub-write = 2048, "
    "offset = 4096)"
)
GROUP_ENOSPC = ValueError(
    "Unable to synchronously create group (file write failed: time = Mon Nov 30 21:28:19 2026\n, "
    "filename = '/x/main_data.hdf5', file descriptor = 4, errno = 28, error message = 'No space "
    "left on device', buf = 0x1, total write size = 4096, bytes this sub-write = 4096, offset = 0)"
)
WRITE_ENOSPC = OSError(
    errno.ENOSPC, "Write through page buffer failed (file write failed: errno = 28, error message "
    "= 'No space left on device')"
)


def digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.shard_paths(path)}


def writer_with_two_closed_shards(path, **kwargs):
    obs_space, action_space = OBS_SPACES["dict"], ACTION_SPACES["discrete"]
    w = DatasetWriter(path, "Test-v0", {}, obs_space, action_space, shard_episodes=2, **kwargs)
    for i in range(4):
        w.add_episode(make_episode(obs_space, action_space, 6, True, i))
    return w


def check_intact(path, before, episodes):
    assert digest(path) == before  # the closed shards are untouched
    assert store.partial_paths(path) == []  # and no half-written shard is left
    ds = Dataset(path)
    assert ds.num_episodes == episodes
    assert ColumnStore.from_datasets(ds).num_rows == ds.num_rows  # every column reads back


@pytest.mark.parametrize("where", ["flush", "append"])
@pytest.mark.parametrize("error", [FLUSH_ENOSPC, GROUP_ENOSPC, WRITE_ENOSPC], ids=["runtime", "value", "os"])
def test_full_disk_discards_only_the_open_shard(tmp_path, monkeypatch, where, error):
    w = writer_with_two_closed_shards(tmp_path / "ds")
    before = digest(tmp_path / "ds")
    obs_space, action_space = w.observation_space, w.action_space
    w.add_episode(make_episode(obs_space, action_space, 6, True, 8))  # pending for shard 3

    def fail(*args, **kwargs):
        raise error

    if where == "flush":  # h5py's File.flush, as the shard is closed
        monkeypatch.setattr(h5py.File, "flush", fail)
    else:  # a dataset write while the pending episodes go into the open shard
        monkeypatch.setattr("dreamer_core.data.writer._append", fail)
    with pytest.raises(DatasetError) as info:
        w.add_episode(make_episode(obs_space, action_space, 6, True, 9))
    message = str(info.value)
    assert "No space left on device" in message and str(tmp_path / "ds") in message
    assert re.search(r"\(\d+(\.\d)? [KM]iB free there\)", message) and "Free disk space" in message
    assert "2 shard(s) already in the dataset are intact" in message and "2 episode(s)" in message
    monkeypatch.undo()
    check_intact(tmp_path / "ds", before, episodes=4)
    w.close()  # the writer is usable again (nothing pending)


def test_errors_that_are_not_the_disk_pass_through(tmp_path, monkeypatch):
    w = writer_with_two_closed_shards(tmp_path / "ds")
    w.add_episode(make_episode(w.observation_space, w.action_space, 6, True, 8))

    def fail(*args, **kwargs):
        raise RuntimeError("some other HDF5 problem (errno = 5)")

    monkeypatch.setattr(h5py.File, "flush", fail)
    with pytest.raises(RuntimeError, match="some other HDF5 problem"):
        w.close_shard()


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only"), (errno.EACCES, "Permission denied")])
def test_read_only_or_forbidden_disk(tmp_path, monkeypatch, code, words):
    w = writer_with_two_closed_shards(tmp_path / "ds")
    before = digest(tmp_path / "ds")
    real_file = h5py.File

    def refuse(path, mode="r", *args, **kwargs):
        if mode == "w":
            raise OSError(code, f"Unable to synchronously create file (unable to open file: errno = {code})")
        return real_file(path, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", refuse)
    with pytest.raises(DatasetError, match=words) as info:
        for i in range(2):
            w.add_episode(make_episode(w.observation_space, w.action_space, 6, True, 10 + i))
    assert "writable" in str(info.value) or "permissions" in str(info.value)
    monkeypatch.undo()
    check_intact(tmp_path / "ds", before, episodes=4)


def test_existing_dataset_directory_that_is_not_writable(tmp_path, monkeypatch):
    writer_with_two_closed_shards(tmp_path / "ds").close()
    before = digest(tmp_path / "ds")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if mode == os.W_OK else real_access(path, mode, **kw))
    with pytest.raises(DatasetError, match="Permission denied.*nothing was changed.*permissions"):
        DatasetWriter(tmp_path / "ds", "Test-v0", {}, OBS_SPACES["dict"], ACTION_SPACES["discrete"])
    monkeypatch.undo()
    check_intact(tmp_path / "ds", before, episodes=4)


def test_output_directory_that_cannot_be_created(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(DatasetError, match="Permission denied.*cannot be created"):
        DatasetWriter(tmp_path / "new", "T", {}, OBS_SPACES["vector"], ACTION_SPACES["discrete"])


def test_manifest_that_cannot_be_written_keeps_the_closed_shard(tmp_path, monkeypatch):
    w = writer_with_two_closed_shards(tmp_path / "ds")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store, "atomic_write_bytes", full)
    for i in range(1):
        w.add_episode(make_episode(w.observation_space, w.action_space, 6, True, 20 + i))
    with pytest.raises(DatasetError, match="was closed and is complete") as info:
        w.add_episode(make_episode(w.observation_space, w.action_space, 6, True, 21))
    assert "manifest" in str(info.value) and "No space left on device" in str(info.value)
    monkeypatch.undo()
    assert len(store.shard_paths(tmp_path / "ds")) == 3 and store.partial_paths(tmp_path / "ds") == []
    assert Dataset(tmp_path / "ds").num_episodes == 6  # the shard missing from the manifest is scanned


def test_minari_export_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    writer_with_two_closed_shards(tmp_path / "src").close()
    calls = []

    def full(group, index, episode, single_key):
        calls.append(index)
        if index == 2:
            raise GROUP_ENOSPC
        original(group, index, episode, single_key)

    original = mi._write_episode
    monkeypatch.setattr(mi, "_write_episode", full)
    with pytest.raises(DatasetError, match="No space left on device") as info:
        mi.export_minari(tmp_path / "src", tmp_path / "dst")
    assert "nothing was written at" in str(info.value) and calls == [0, 1, 2]
    assert not (tmp_path / "dst").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no hidden partial copy either


# --- a real full disk -----------------------------------------------------------------------------

FILL_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from dreamer_core.data.minari import export_minari
    from dreamer_core.data.writer import DatasetWriter
    from dreamer_core.errors import DatasetError
    from tests.common import ACTION_SPACES, OBS_SPACES, make_episode

    out, pixels, src = sys.argv[1], sys.argv[2] == "pixels", sys.argv[3]
    obs_space = OBS_SPACES["dict" if pixels else "vector"]
    action_space = ACTION_SPACES["discrete"]
    try:
        with DatasetWriter(out, "T", {}, obs_space, action_space, shard_episodes=5,
                           compression="none") as w:
            for i in range(100000):
                w.add_episode(make_episode(obs_space, action_space, 200, i % 2 == 0, i))
    except DatasetError as exc:
        print("WRITER:", exc)
    try:
        export_minari(src, out + "-minari")
    except DatasetError as exc:
        print("EXPORT:", exc)
    """
)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MiB tmpfs, mounted for the test (needs root); skipped where it cannot be mounted
    (the injected-error tests above cover the logic then)."""
    yield from mounted_tmpfs(tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}", "2m")


@pytest.mark.parametrize("pixels", ["vector", "pixels"])
def test_real_full_disk(small_tmpfs, tmp_path, pixels):
    """Fill a real 2 MiB disk: a clean error, no crash at exit (h5py used to segfault), every
    closed shard readable, no partial file; the Minari export fails cleanly the same way."""
    src = tmp_path / "src"
    writer_with_two_closed_shards(src).close()
    for i in range(20):  # a source bigger than the disk
        with DatasetWriter(src, "Test-v0", {}, OBS_SPACES["dict"], ACTION_SPACES["discrete"]) as w:
            w.add_episode(make_episode(OBS_SPACES["dict"], ACTION_SPACES["discrete"], 200, True, 100 + i))
    out = small_tmpfs / "ds"
    result = subprocess.run([sys.executable, "-c", FILL_SCRIPT, str(out), pixels, str(src)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]  # 139 was the segfault
    assert "WRITER: No space left on device" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "EXPORT: No space left on device" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert store.partial_paths(out) == []
    assert not [p for p in small_tmpfs.iterdir() if p.name != "ds"]  # no export left behind
    shards = store.shard_paths(out)
    assert shards  # the disk held a few shards before it filled up
    ds = Dataset(out)
    columns = ColumnStore.from_datasets(ds)  # every chunk passes its checksum
    assert columns.num_rows == ds.num_rows == sum(e.rows for e in ds.iter_episodes())
    assert np.all(columns.gather([0], ds.num_rows)[schema.IS_FIRST][0][ds.refs[0].rows])


# --- a write failing at any point of a Minari export ------------------------------------------------

FSIZE_SCRIPT = textwrap.dedent(
    """
    import os, resource, signal, sys
    from pathlib import Path
    from dreamer_core.data import minari as mi, store

    src, out, lo, hi, step = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:])
    discard = store.discard_h5_file

    def discard_with_room(f, path, handles=None):  # the file's disk is full, memory is not
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        discard(f, path, handles)

    store.discard_h5_file = discard_with_room
    crashed = []
    for limit in range(lo, hi, step):
        pid = os.fork()
        if pid == 0:  # writes past `limit` bytes fail (EFBIG) as on a full disk; then a normal exit
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            try:
                mi.export_minari(src, out / str(limit))
            except Exception:
                pass
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        if status:
            crashed.append((limit, os.waitstatus_to_exitcode(status)))
    print("crashed:", crashed)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and RLIMIT_FSIZE as on Linux")
def test_minari_export_failing_at_any_write_exits_cleanly(tmp_path):
    """The export's file refused at every 8 KiB step of its growth: each process ends normally.
    A write failing inside ``Dataset.flush`` used to leave HDF5's metadata cache mid-flush, and
    closing the file then crashed the interpreter (SIGSEGV, or SIGBUS at exit)."""
    import resource

    if resource.getrlimit(resource.RLIMIT_FSIZE)[1] != resource.RLIM_INFINITY:
        pytest.skip("the file size limit cannot be lifted again here")
    obs_space, action_space = OBS_SPACES["vector"], ACTION_SPACES["discrete"]
    with DatasetWriter(tmp_path / "src", "Test-v0", {}, obs_space, action_space) as w:
        for i in range(40):
            w.add_episode(make_episode(obs_space, action_space, 30, True, i))
    (tmp_path / "out").mkdir()
    result = subprocess.run([sys.executable, "-c", FSIZE_SCRIPT, str(tmp_path / "src"), str(tmp_path / "out"),
                             str(96 << 10), str(352 << 10), str(8 << 10)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "crashed: []" in result.stdout, result.stdout + result.stderr[-2000:]
    assert not list((tmp_path / "out").iterdir())  # every failed export removed its partial copy
