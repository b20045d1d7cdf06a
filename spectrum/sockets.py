"""
What every edge socket gets, TCP (L{spectrum.listeners}) or UDP
(L{spectrum.proxy.udp}) alike.
"""

from __future__ import annotations

import socket


def edge_socket_options(sock: socket.socket, family: int, reuse_port: bool) -> socket.socket:
    """
    Set what every edge socket (TCP or UDP) gets: IPv6 only for an IPv6
    address, and SO_REUSEPORT when worker processes share the port.
    """
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock
