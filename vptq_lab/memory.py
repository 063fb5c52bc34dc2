"""Process memory: let freed tensors go back to the operating system (glibc's allocator).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB at start) with its own ``mmap``, given
back to the OS when freed. But the threshold is dynamic: each time such a chunk is freed it rises to that chunk's
size, up to 32 MiB, so after the first few large frees every tensor of up to 32 MiB is carved from the heap, and
freed heap memory stays in the process (fragmentation keeps it from being trimmed). A training loop that builds
and frees many tensors of a few MiB per step then grows its resident memory far past what it holds at any time
(``experiments/distill_memory.py --malloc default|release`` measures it for distillation).

:func:`release_freed_memory` fixes the threshold, which also turns the dynamic rise off: the same effect as
starting Python with ``MALLOC_MMAP_THRESHOLD_=131072`` in the environment. It is process-wide; the ``vptq-lab``
command calls it for its long jobs, and a notebook may call it once at the top.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["release_freed_memory"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def release_freed_memory(threshold: int = 128 * 1024) -> bool:
    """Serve every allocation of at least ``threshold`` bytes with its own mapping, returned to the OS when freed
    (see the module doc). Returns whether it took effect: False off glibc (macOS, Windows, musl), where it does
    nothing."""
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 0 < threshold <= 32 * 2**20:
        raise ValueError(f"threshold={threshold!r} must be a number of bytes in 1 .. 32 MiB (glibc's cap)")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # present in glibc only  # noqa: B018
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, threshold) == 1
