"""
Direct writes for the normal (copying) relay path.

Twisted's C{transport.write} always buffers: the bytes go to a list, the
descriptor is added to the poller for writing (C{epoll_ctl}), and only on the
next loop round does C{doWrite} send them and take the descriptor out again
(another C{epoll_ctl}).  For a relay, where nearly every chunk read is sent
on at once into a socket with room, that is two system calls and a loop
round per chunk for nothing.

L{target} says whether a transport can be written to directly: a plain
Twisted TCP socket transport (not TLS, not a test transport).
The relay's C{dataReceived} (L{spectrum.proxy.tcp}) then sends straight
to its socket when nothing is waiting in the
transport's buffer (so the byte order is kept), and hands whatever the
socket does not take (or any error) to C{transport.write}, which buffers it,
waits for the socket to be writable, applies backpressure to the producer
and reports a broken connection exactly as before.  A transport that is
closed or half-closed for writing takes the ordinary path too, and drops
the bytes as Twisted does.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet import tcp

#: The transport classes whose socket may be written to directly.
_DIRECT = frozenset((tcp.Server, tcp.Client))


def target(transport: Any) -> Optional[Any]:
    """
    C{transport} if bytes may be sent straight to its socket, else L{None}.
    """
    if type(transport) in _DIRECT and not getattr(transport, "TLS", False):
        return transport
    return None
