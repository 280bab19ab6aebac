"""`LoopLag`: how late the event loop wakes up, and how much of that is the server's own doing.

A probe sleeps `interval_s` on the loop again and again; the lag is how much later than asked it
woke. Part of a lag is the host's: the loop thread was ready to run and waited for a CPU that other
processes had (Linux counts that time per thread: `run_delay` in `/proc/self/task/<tid>/schedstat`).
The rest is the server's own: the loop was busy with its own callbacks, or its thread waited for the
GIL that another thread of this process held (a shadow thread, say). Only the server's own lag says
that shadow work would compete with the primary: on a host busy with other processes the loop lags
too, but shedding shadows then frees next to nothing for the primary (shadow threads run at nice
19) and only starves a shadow stage of comparisons.

Where schedstat is missing (not Linux), the whole lag counts as the server's own (the safe side).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio

#: How often the probe wakes up.
PROBE_INTERVAL_S = 0.1


def cpu_wait_clock() -> Callable[[], float | None]:
    """Seconds the calling thread has spent waiting for a CPU so far (None where unknown)."""
    path = f"/proc/self/task/{threading.get_native_id()}/schedstat"

    def waited() -> float | None:
        try:
            with open(path, "rb") as stat:
                return int(stat.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None

    return waited


class LoopLag:
    """The latest probe's lag, split into the host's part and the server's own (see the docstring)."""

    def __init__(self, interval_s: float = PROBE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.lag_s = 0.0  # how late the last probe woke
        self.cpu_wait_s = 0.0  # of which the loop thread waited for a CPU (the host's part)
        self.own_s = 0.0  # the rest: the server's own work, or the GIL held by its other threads

    async def run(self) -> None:
        """Probe until cancelled (a lifespan task; on the loop thread, whose CPU wait it reads)."""
        waited = cpu_wait_clock()
        while True:
            started, wait_before = time.perf_counter(), waited()
            await anyio.sleep(self.interval_s)
            lag = max(0.0, time.perf_counter() - started - self.interval_s)
            wait_after = waited()
            cpu_wait = 0.0 if wait_before is None or wait_after is None else wait_after - wait_before
            self.lag_s, self.cpu_wait_s = lag, min(lag, cpu_wait)
            self.own_s = lag - self.cpu_wait_s

    def describe(self) -> dict[str, float]:
        return {
            "loop_lag_s": round(self.lag_s, 6),
            "loop_cpu_wait_s": round(self.cpu_wait_s, 6),
            "loop_own_lag_s": round(self.own_s, 6),
        }
