"""Process settings: the allocator tuning applies on glibc and can be switched off."""

import os
import subprocess
import sys

import pytest

from dreamer_core import runtime


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_allocator_tuning_applies_once_and_can_be_switched_off():
    code = "from dreamer_core import runtime; print(runtime.tune_allocator(), runtime.tune_allocator())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
    env = {"DREAMER_MALLOC": "default", "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "False"]


def test_setup_sets_threads():
    import torch

    before = torch.get_num_threads()
    try:
        runtime.setup(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_resolve_device(monkeypatch):
    import torch

    from dreamer_core.errors import DreamerError

    assert runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DreamerError, match="--device auto or cpu"):
        runtime.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == torch.device("cuda")
    assert runtime.resolve_device("cuda") == torch.device("cuda")


MAPPED = """
import ctypes, ctypes.util
from dreamer_core import runtime
applied = runtime.tune_allocator()
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype = ctypes.c_void_p

class Info(ctypes.Structure):  # struct mallinfo2: ten size_t fields; hblkhd is the fifth
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = Info
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)  # above glibc's largest mmap threshold
print(applied, libc.mallinfo2().hblkhd - before)
libc.free(ctypes.c_void_p(block))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_tuned_allocator_serves_even_a_64_mib_block_from_the_heap():
    """Blocks above 32 MiB would otherwise be mapped and unmapped afresh on every update."""
    out = subprocess.run([sys.executable, "-c", MAPPED], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "0"]  # nothing served by mmap
    env = {**os.environ, "DREAMER_MALLOC": "default"}
    out = subprocess.run([sys.executable, "-c", MAPPED], capture_output=True, text=True, check=True, env=env).stdout
    applied, mapped = out.split()
    assert applied == "False" and int(mapped) >= 64 << 20  # glibc's default: a mapping of its own


def test_allocator_env_names_the_same_settings():
    env = runtime.allocator_env()
    assert env["MALLOC_MMAP_THRESHOLD_"] == str(runtime.MMAP_THRESHOLD) == str(32 << 20)
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(runtime.TRIM_THRESHOLD)
    assert env["MALLOC_MMAP_MAX_"] == "0"
