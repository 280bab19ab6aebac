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
"""

from __future__ import annotations

import ctypes
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


def fix_thresholds() -> None:
    """Pin glibc's mmap and trim thresholds (process-wide: only for a process that is the server's)."""
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        _MALLOPT(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)


def trim() -> None:
    """Return the heaps' free pages to the OS (`malloc_trim`). Blocking: it walks every heap."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
