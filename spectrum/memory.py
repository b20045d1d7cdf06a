"""
Giving freed heap back to the system.

A relay allocates and frees buffers of every size all day. glibc keeps the
freed memory inside its heap, and can hand pages back only from the top of
it, so the process's resident size creeps up as the heap fragments even
though what it uses stays level. L{Trimmer} calls C{malloc_trim(0)} once a
minute (glibc then returns every whole free page, wherever it is), which
keeps the resident size at what the process holds. Other C libraries: no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Any, Callable, Optional

from twisted.application.internet import TimerService
from twisted.logger import Logger

#: seconds between trims
INTERVAL = 60.0
#: a trim slower than this is logged
SLOW = 0.005


def _load_trim() -> Optional[Callable[[int], int]]:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


_malloc_trim = _load_trim()


def available() -> bool:
    return _malloc_trim is not None


def trim() -> bool:
    """
    Return free heap pages to the system; whether any were.
    """
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))


class Trimmer(TimerService):
    """
    Trims the heap every L{INTERVAL} seconds. A trim walks the heap (about
    a millisecond for a heap of tens of MiB); one that takes longer than
    L{SLOW} seconds is logged.
    """

    log = Logger()

    def __init__(self, reactor: Any, interval: float = INTERVAL) -> None:
        super().__init__(interval, self.trim)
        self.clock = reactor
        self.trims = 0
        self.longest = 0.0

    def trim(self) -> None:
        started = time.perf_counter()
        released = trim()
        self.trims += 1
        took = time.perf_counter() - started
        self.longest = max(self.longest, took)
        if took > SLOW:
            self.log.info("heap trim took {ms:.1f} ms (pages returned: {released})", ms=took * 1000, released=released)
