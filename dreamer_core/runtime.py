"""Process-level settings: the device, the C allocator and torch's thread count.

``resolve_device("auto"|"cpu"|"cuda")`` picks the torch device (auto: CUDA when present).

glibc's malloc serves large blocks (the [rows, 255] head outputs, activations of a batch) with
mmap and gives them back with munmap, so every update page-faults its tensors in again: on
the project machine 20-55 thousand page faults per second per training process and a third
of its time in the kernel. ``tune_allocator`` keeps every block in the heap instead: no block is
served by mmap (``M_MMAP_MAX`` 0; blocks above glibc's largest mmap threshold, 32 MiB, such as
the features of all imagined states, would otherwise still be mapped afresh on every update),
and freed memory stays in the heap until a gigabyte of it is free at its top. An update then
reuses the blocks of the one before. A `tiny` online update went from about 490 to 350 ms with
the first of these settings (benchmarks/RESULTS.md, online-speed). Serving the large blocks from
the heap too took the 64x64-pixel XS update from 9.0 to 5.1 s and the S vector update from 8.2
to 5.7 s; the XS vector update went from 1.73 to 1.88 s (benchmarks/RESULTS.md, update-speed,
an interleaved A/B). The price is memory: blocks stay mapped between updates (the pixel XS
benchmark process peaks at 2.6 GB, 2.2 GB before). Setting ``MALLOC_MMAP_THRESHOLD_`` yourself
(or ``DREAMER_MALLOC=default``) leaves the allocator alone.

Torch's option to back large CPU blocks with transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``)
is not set: on the project machine (a virtual machine) huge-page faults cost much kernel time,
and with the heap settings above it made three of four updates slower in an interleaved A/B
(pixel XS 6.2 s against 5.6 s, XS vector 1.96 against 1.84 s, S pixels 10.9 against 10.0 s; S
vector 5.6 against 6.1 s).

Imports: ctypes, torch (in functions: importing this module does not import torch), errors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import TYPE_CHECKING

from dreamer_core.errors import DreamerError

if TYPE_CHECKING:
    import torch

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 << 20  # glibc's maximum
TRIM_THRESHOLD = 1 << 30
_done = False


def _switched_off() -> bool:
    """``DREAMER_MALLOC=default``: leave glibc's allocator as it is."""
    return os.environ.get("DREAMER_MALLOC") == "default"


def allocator_env() -> dict[str, str]:
    """The same allocator settings as environment variables, for a process not started by
    this toolkit (glibc reads them at start-up); e.g. a peer program timed beside ours."""
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
            "MALLOC_MMAP_MAX_": "0"}


def tune_allocator() -> bool:
    """Serve every block from the heap and keep freed blocks there for reuse (glibc only;
    idempotent). Returns True when applied."""
    global _done
    if _done:
        return True
    if _switched_off() or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl without mallopt)
        return False
    ok = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
          and mallopt(M_MMAP_MAX, 0) == 1)
    _done = ok
    return ok


def setup(threads: int = 0) -> None:
    """What every training stage does first: tune the allocator and set torch's CPU threads
    (0 keeps torch's default)."""
    import torch

    tune_allocator()
    if threads > 0:
        torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when torch sees one, else CPU), ``cpu`` or ``cuda`` (refused without CUDA)."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DreamerError("--device cuda was asked for, but torch sees no CUDA device. Use --device auto or cpu.")
    return torch.device(name)
