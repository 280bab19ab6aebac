"""The C heap policy of a serving process (`server/heap.py`), each case in a fresh interpreter."""

from __future__ import annotations

import gc
import subprocess
import sys

import numpy as np
import pytest

from modelserve.server import heap

pytestmark = pytest.mark.skipif(heap._MALLOPT is None, reason="glibc only")

#: A pool thread frees a 20 MB block (unpinned, glibc raises its thresholds to that size), then
#: allocates and frees 4 x 8 MB, which then come from its own heap; prints the MB still resident.
RETAINED_MB = """
import sys, threading
from modelserve.server import heap

def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20

if sys.argv[1] == "pinned":
    heap.fix_thresholds()
done, stop = threading.Event(), threading.Event()

def pool_thread():
    block = b"x" * (20 << 20)
    del block
    blocks = [b"y" * (8 << 20) for _ in range(4)]
    del blocks
    done.set()
    stop.wait()

before = resident_mb()
thread = threading.Thread(target=pool_thread)
thread.start()
done.wait()
heap.trim()
print(resident_mb() - before)
stop.set()
thread.join()
"""


def _retained_mb(mode: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", RETAINED_MB, mode], capture_output=True, text=True, check=True
    )
    return int(result.stdout)


def test_pinned_thresholds_give_a_pool_threads_freed_buffers_back_after_a_trim() -> None:
    assert _retained_mb("pinned") <= 4
    assert _retained_mb("default") >= 16  # what glibc's moving thresholds keep, trim or not


def _mapped(address: int) -> bool:
    with open("/proc/self/maps") as maps:
        for line in maps:
            low, high = (int(bound, 16) for bound in line.split()[0].split("-"))
            if low <= address < high:
                return True
    return False


def test_populated_pages_are_writable_and_unmapped_once_the_last_view_is_gone() -> None:
    view = heap.populated_pages(3 << 20)[100:]  # as a body buffer is used: a slice, then an array
    view[:5] = b"hello"
    array = np.frombuffer(view, dtype=np.uint8)
    address = array.ctypes.data
    del view
    assert bytes(array[:5]) == b"hello" and _mapped(address)  # the array keeps the pages
    del array
    gc.collect()
    assert not _mapped(address)
