"""A flags file as a hot-reloaded source of `FlagSet`s.

`poll()` re-reads the file when its (mtime, size, inode) changed and swaps the whole `FlagSet` in
one assignment. A file that fails to parse keeps the last good `FlagSet` serving and records the
message in `last_error` (cleared by the next good load). File I/O lives here; `routing/` stays pure.
`watch` parses in a worker thread, so a large file never stalls the event loop.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import anyio.to_thread

from modelserve.errors import ConfigError
from modelserve.routing.flagd import FlagSet, load_flagset


class FlagFileSource:
    """The current `FlagSet` of one flagd flag-definition file.

    The first load must succeed (raises `ConfigError`); later reloads never raise.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.last_error: str | None = None
        self.reloads = 0
        self._signature = self._stat()
        if self._signature is None:
            raise ConfigError(f"flags file {self.path} does not exist")
        self.flagset: FlagSet = self._load()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _load(self) -> FlagSet:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"flags file {self.path}: {exc.strerror or exc}") from None
        return load_flagset(data, source=str(self.path))

    def poll(self) -> bool:
        """Reload if the file changed; True when a new FlagSet was swapped in."""
        signature = self._stat()
        if signature == self._signature:
            return False
        self._signature = signature
        if signature is None:
            self.last_error = f"flags file {self.path} disappeared; keeping the last good flags"
            return False
        try:
            flagset = self._load()
        except ConfigError as exc:
            self.last_error = f"{exc}; keeping the last good flags"
            return False
        except Exception as exc:  # anything else is a bug, but it must not stop later reloads
            problem = f"{type(exc).__name__}: {exc}"
            self.last_error = f"flags file {self.path}: {problem}; keeping the last good flags"
            return False
        self.flagset = flagset  # one reference swap: readers see the old or the new set, never a mix
        self.last_error = None
        self.reloads += 1
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Poll every `interval_s` seconds until cancelled (run it in the app's task group)."""
        limiter = anyio.CapacityLimiter(1)  # its own, never the host application's default pool
        while True:
            await anyio.sleep(interval_s)
            await anyio.to_thread.run_sync(self.poll, limiter=limiter)  # bounded, but not free
