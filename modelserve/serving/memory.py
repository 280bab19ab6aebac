"""What a warm version costs in memory, and the budget that bounds the warm set.

What is measured, honestly: the process's resident set size (RSS, `/proc/self/statm`) just before
and just after a version's session is created and warmed up, in the loading thread. That delta holds
the session's copy of the weights, onnxruntime's arena as grown by the warm-up (batch 1) and the
allocator's own slack. It is an estimate, not an accounting: other threads serving at the same time
allocate too (noise of a few hundred KB), a larger batch grows the arena later, and memory freed by
an earlier unload and reused by this load does not show up as growth at all, while the first
version loaded in a process also carries onnxruntime's one-time setup (~9 MB here). So the cost used for
the budget is the larger of the RSS delta and the ONNX file's size (the initializers are copied into
the session, so a version never costs less than that); both figures are shown in `status`.

The budget (`serve --memory-budget 512M`) bounds the sum of these costs over every warm version of
every model. A load that would pass it is refused before it starts (estimate: the version's last
measured cost, else its file size) and, if the measured cost turns out larger, the new version is
dropped again; the error names what could be unloaded. Nothing live is ever evicted to make room.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from modelserve.errors import ConfigError, Conflict

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class MemoryBudgetExceeded(Conflict):
    """Loading a version would pass the memory budget (HTTP 409); nothing was evicted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryCost:
    """A warm version's measured cost: RSS growth around session creation + warm-up, and file size."""

    rss_delta_bytes: int | None
    file_bytes: int

    @property
    def resident_bytes(self) -> int:
        """The figure the budget counts: max(RSS delta, file size)."""
        return max(self.rss_delta_bytes or 0, self.file_bytes)

    def describe(self) -> dict[str, object]:
        return {
            "resident_bytes": self.resident_bytes,
            "resident": format_size(self.resident_bytes),
            "rss_delta_bytes": self.rss_delta_bytes,
            "file_bytes": self.file_bytes,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmEntry:
    """One warm version as the budget sees it."""

    model: str
    version: str
    role: str
    resident_bytes: int


def resident_bytes() -> int | None:
    """This process's resident set size, or None where `/proc` is not available."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def parse_size(text: str) -> int:
    """`"512M"`, `"2G"`, `"1.5GiB"`, `"1048576"` -> bytes (binary units); ConfigError otherwise."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"invalid size {text!r}: use a number with an optional unit, e.g. 512M or 2G")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ConfigError(f"invalid size {text!r}: must be positive")
    return size


def format_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def check_budget(
    budget: int | None, warm: Sequence[WarmEntry], *, model: str, version: str, needed: int, measured: bool
) -> None:
    """Raise MemoryBudgetExceeded if `needed` more bytes do not fit beside `warm` in `budget`."""
    if budget is None:
        return
    in_use = sum(entry.resident_bytes for entry in warm)
    if in_use + needed <= budget:
        return
    how = "measured" if measured else "estimated"
    unloadable = sorted((e for e in warm if e.role != "live"), key=lambda e: e.resident_bytes, reverse=True)
    listed = ", ".join(f"{e.model} {e.version} ({e.role}, {format_size(e.resident_bytes)})" for e in warm)
    if unloadable:
        first = unloadable[0]
        hint = (
            "unload a version that is not live first, e.g. "
            f"`modelserve unload {first.model} {first.version}` (frees {format_size(first.resident_bytes)}); "
            "candidates: " + ", ".join(f"{e.model} {e.version}" for e in unloadable)
        )
    else:
        hint = "only live versions are warm: raise --memory-budget"
    raise MemoryBudgetExceeded(
        f"loading {model} version {version} needs {format_size(needed)} ({how}) but only "
        f"{format_size(max(budget - in_use, 0))} of the {format_size(budget)} memory budget is free "
        f"(warm: {listed}); {hint}. Nothing was unloaded."
    )
