"""The C heap of a serving process: what a huge request made resident goes back to the OS.

glibc starts by giving each block of 128 kB or more a mapping of its own, unmapped when freed; but
once such a block is freed it raises that threshold to the block's size (up to 32 MB) and its trim
threshold (free memory kept at the top of a heap) to twice that. After one large infer request,
later large buffers come from the heaps, and each thread's heap keeps up to 64 MB of freed memory
resident, which `malloc_trim` cannot return (it leaves the top of a thread's heap alone): 35-70 MB
stayed resident after four concurrent 58 MB binary tensor bodies, whatever was trimmed.

`fix_thresholds()` pins both thresholds (`modelserve serve` calls it: the process is its own), so
that blocks of `MMAP_THRESHOLD_BYTES` or more are always mappings of their own and a heap keeps at
most `TRIM_THRESHOLD_BYTES` free at its top; `trim()` returns the free pages inside the heaps after a
large request. Both are no-ops where the C library is not glibc.

`populated_pages()` maps fresh memory for a large request body with its pages already faulted in,
and unmaps it once unused, both without holding the GIL (Python's `mmap.mmap` holds it while the
kernel maps and zeroes the pages: ~30 ms for 58 MB, in which no other thread runs).
"""

from __future__ import annotations

import ctypes
import mmap
import weakref
from typing import Any

#: glibc's `mallopt` parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks this large get a mapping of their own, unmapped when freed (glibc's own ceiling is 32 MB).
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
#: Free memory a heap keeps at its top for the next request (glibc's starting value is 128 kB): a
#: request of a few MB reuses it rather than faulting fresh pages in.
TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024


def _glibc_function(name: str) -> Any:
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOPT = _glibc_function("mallopt")
_MALLOC_TRIM = _glibc_function("malloc_trim")
_MMAP = _glibc_function("mmap")
_MUNMAP = _glibc_function("munmap")
if _MMAP is not None and _MUNMAP is not None:
    _MMAP.restype = ctypes.c_void_p
    _MMAP.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    _MUNMAP.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value
#: Linux: the kernel faults every page in before mmap returns.
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def fix_thresholds() -> None:
    """Pin glibc's mmap and trim thresholds (process-wide: only for a process that is the server's)."""
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        _MALLOPT(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


def trim() -> None:
    """Return the heaps' free pages to the OS (`malloc_trim`). Blocking: it walks every heap."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def populated_pages(size: int) -> memoryview:
    """`size` (> 0) writable bytes of fresh memory, every page already in, unmapped once no view of
    them is left. Blocking (the kernel zeroes them: ~0.3 ms a MB), but the GIL is free meanwhile, in
    the unmapping too; elsewhere than glibc, an ordinary anonymous mapping."""
    if _MMAP is None or _MUNMAP is None:
        return memoryview(mmap.mmap(-1, size))
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE
    address = _MMAP(None, size, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0)  # ctypes frees the GIL
    if address is None or address == _MAP_FAILED:
        raise MemoryError(f"cannot map {size} bytes")
    pages = (ctypes.c_char * size).from_address(address)
    weakref.finalize(pages, _MUNMAP, address, size)
    return memoryview(pages).cast("B")
