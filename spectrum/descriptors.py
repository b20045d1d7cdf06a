"""
The process's file descriptors: the soft limit raised to the hard limit at
start, and the share of it clients may take.

A TCP connection holds two descriptors (the client's socket and the
origin's), a UDP session one (its socket to the origin). Out of the limit,
what was open when the listeners were bound (listeners, logs, the event
loop) and L{RESERVE} more (the admin's connections, probes, DNS questions,
the store, a reload's files) are never given to clients; UDP sessions may
take at most half of the rest, so a crowd of UDP clients cannot take what
TCP connections need; TCP connections may take whatever is left. A client
past its share is refused at once (TCP at accept with 431, UDP with 432)
and counted, instead of failing later with EMFILE.
"""

from __future__ import annotations

import os
import resource
from typing import Optional

#: descriptors never given to clients: the admin, probes, DNS, the store, reloads
RESERVE = 64
#: what a TCP connection and a UDP session hold
CONNECTION = 2
SESSION = 1


def raise_limit() -> int:
    """
    Raise the soft C{RLIMIT_NOFILE} to the hard limit (to the kernel's
    C{nr_open} when the hard limit is unlimited); return the soft limit it
    had before.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        pass
    return soft


def open_descriptors() -> int:
    """
    How many descriptors the process has open now (0 where the system does
    not say).
    """
    try:
        # Less the one listing the directory.
        return len(os.listdir("/proc/self/fd")) - 1
    except OSError:
        return 0


class Descriptors:
    """
    The descriptors clients hold, against their share of the limit; one per
    service, shared by its apps.

    @ivar held: descriptors held by open TCP connections and UDP sessions.
    @ivar sessions: open UDP sessions.
    @ivar base: descriptors open apart from the clients' (counted at start
        and at each reload).
    """

    def __init__(self, limit: Optional[int] = None) -> None:
        self.limit = limit
        self.held = 0
        self.sessions = 0
        self.base = 0
        self.usable = 0
        self.rebase()

    def rebase(self) -> None:
        """
        Count again what is open apart from the clients, and read the limit
        (at start, after a reload).
        """
        limit = self.limit
        if limit is None:
            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            if limit == resource.RLIM_INFINITY:
                limit = 1 << 20
        self.base = max(0, open_descriptors() - self.held)
        self.usable = max(0, limit - self.base - RESERVE)

    @property
    def session_share(self) -> int:
        """
        The most UDP sessions that may be open.
        """
        return self.usable // 2

    def room_for_session(self) -> bool:
        return self.sessions < self.session_share and self.held + SESSION <= self.usable

    def room_for_connection(self) -> bool:
        return self.held + CONNECTION <= self.usable

    def opened(self, cost: int) -> None:
        self.held += cost
        if cost == SESSION:
            self.sessions += 1

    def closed(self, cost: int) -> None:
        self.held -= cost
        if cost == SESSION:
            self.sessions -= 1

    def refusal(self) -> str:
        """
        Why a client was refused for want of descriptors.
        """
        return (
            f"the process's descriptors are spoken for ({self.held} held by clients,"
            f" {self.sessions} of them by UDP sessions, of {self.usable})"
        )

    def describe(self, before: Optional[int] = None) -> str:
        """
        The start's line: the limit and what it can hold.
        """
        limit = self.usable + self.base + RESERVE
        raised = f", raised from {before}" if before is not None and before < limit else ""
        return (
            f"file descriptors: limit {limit}{raised}; {self.base} open, {RESERVE} kept for the admin,"
            f" probes and reloads: room for {self.session_share} UDP sessions and"
            f" {self.usable // CONNECTION} TCP connections"
            f" ({(self.usable - self.session_share) // CONNECTION} beside a full share of UDP sessions)"
        )
