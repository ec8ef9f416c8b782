"""Process-level settings: the device, the C allocator and torch's thread count.

``resolve_device("auto"|"cpu"|"cuda")`` picks the torch device (auto: CUDA when present).

glibc's malloc serves large blocks (the [rows, 255] head outputs, activations of a batch) with
mmap and gives them back with munmap, so every update page-faults its tensors in again: on
the project machine 20-55 thousand page faults per second per training process and a third
of its time in the kernel. Raising the mmap threshold to its maximum (32 MiB) and keeping
freed memory in the heap lets those blocks be reused; a `tiny` online update went from about
490 to 350 ms (benchmarks/RESULTS.md, online-speed). Setting ``MALLOC_MMAP_THRESHOLD_``
yourself (or ``DREAMER_MALLOC=default``) leaves the allocator alone.

Blocks above 32 MiB (the features of all imagined states, ``[1024, 16, 1280]`` floats at the
XS size) are still mapped afresh on every update. ``prepare_environment`` asks torch's CPU
allocator to back blocks of 2 MiB and more with transparent huge pages
(``THP_MEM_ALLOC_ENABLE``, read by torch once, at its first allocation), so such a block costs
a few hundred page faults instead of tens of thousands (benchmarks/RESULTS.md, update-speed).
The CLI calls it before torch is imported; ``DREAMER_MALLOC=default`` or setting the variable
yourself leaves it alone.

Imports: ctypes, torch (in functions: importing this module does not import torch), errors.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import TYPE_CHECKING

from dreamer_core.errors import DreamerError

if TYPE_CHECKING:
    import torch

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum
TRIM_THRESHOLD = 1 << 30
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"
_done = False


def _switched_off() -> bool:
    """``DREAMER_MALLOC=default``: leave the allocators (glibc's and torch's) as they are."""
    return os.environ.get("DREAMER_MALLOC") == "default"


def prepare_environment() -> bool:
    """Before torch is imported: transparent huge pages for torch's large CPU blocks (see the
    module docstring). Returns True when they will apply: not when ``DREAMER_MALLOC=default``,
    when the variable was set otherwise, or when torch is already imported (it has read it)."""
    if _switched_off() or "torch" in sys.modules:
        return False
    return os.environ.setdefault(THP_VARIABLE, "1") == "1"


def allocator_env() -> dict[str, str]:
    """The same allocator settings as environment variables, for a process not started by
    this toolkit (glibc and torch read them at start-up); e.g. a peer program timed beside ours."""
    return {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
            THP_VARIABLE: "1"}


def tune_allocator() -> bool:
    """Keep large freed blocks for reuse (glibc only; idempotent). Returns True when applied."""
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
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
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
