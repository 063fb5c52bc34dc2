"""release_freed_memory: after it, a tensor of a few MiB gets its own mapping even once glibc's threshold has risen."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from vptq_lab.memory import release_freed_memory

PROBE = """
import ctypes, sys
import torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "release":
    from vptq_lab.memory import release_freed_memory
    assert release_freed_memory()
big = torch.ones(4 * 2**20)
del big  # a 16 MiB mapping freed: glibc's dynamic threshold rises to 16 MiB
before = libc.mallinfo2().hblkhd  # bytes in mmapped chunks
small = torch.ones(2**18)  # 1 MiB
print(libc.mallinfo2().hblkhd - before)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_mib_sized_tensor_is_mapped_only_after_release():
    mapped = {}
    for setting in ("default", "release"):
        out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
        mapped[setting] = int(out.stdout.split()[-1])
    assert mapped["default"] < 2**20  # carved from the heap: freed, it would stay in the process
    assert mapped["release"] >= 2**20  # its own mapping: freed, it goes back to the OS


@pytest.mark.parametrize("bad", [0, -1, 64 * 2**20, 1.5, True])
def test_threshold_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="threshold"):
        release_freed_memory(bad)
