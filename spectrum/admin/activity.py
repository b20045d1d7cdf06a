"""
What the admin page shows live: the last connection events (refused ones
kept apart, so a burst of normal traffic does not push them out) and byte
totals per app that include connections still open.

L{RecentEvents} is a recorder: it costs one dict and a deque append per
connection event, nothing per byte. Live byte totals are summed over the open
connections only when the admin asks (a poll every second or two), from the
counters the relay keeps anyway.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, Iterable, List, Optional

from spectrum.record import CLIENT_FILTERED, CONNECT, ConnectionRecord

#: Events kept, and refused connections kept apart.
KEEP = 500
KEEP_REFUSED = 200


class RecentEvents:
    """
    The last L{KEEP} connection events and the last L{KEEP_REFUSED}
    refusals, and closed-connection byte totals per app.
    """

    def __init__(self, reactor: Any = None, keep: int = KEEP, keep_refused: int = KEEP_REFUSED) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.events: Deque[Dict[str, Any]] = deque(maxlen=keep)
        self.refused: Deque[Dict[str, Any]] = deque(maxlen=keep_refused)
        #: app -> [bytes from clients, bytes to clients, connections closed]
        self.closed: Dict[str, List[int]] = {}
        self.sequence = 0

    def __call__(self, kind: str, record: ConnectionRecord) -> None:
        event = record.as_event(kind)
        self.sequence += 1
        event["Sequence"] = self.sequence
        event["Timestamp"] = self.reactor.seconds()
        self.events.append(event)
        if kind == CLIENT_FILTERED:
            self.refused.append(event)
        if kind != CONNECT:
            totals = self.closed.get(record.application)
            if totals is None:
                totals = self.closed[record.application] = [0, 0, 0]
            totals[0] += record.client_bytes
            totals[1] += record.origin_bytes
            totals[2] += 1

    def recent(self, limit: int = 100, refused_only: bool = False, since: Optional[int] = None) -> List[Dict[str, Any]]:
        """
        The newest events first (refusals only with C{refused_only}), after
        sequence number C{since} when given.
        """
        source: Iterable[Dict[str, Any]] = reversed(self.refused if refused_only else self.events)
        result = []
        for event in source:
            if since is not None and event["Sequence"] <= since:
                break
            result.append(event)
            if len(result) >= limit:
                break
        return result


def live_traffic(service: Any, recent: RecentEvents) -> Dict[str, Dict[str, Any]]:
    """
    Per app: open connections, and bytes from and to clients so far,
    counting the bytes of connections still open.
    """
    result: Dict[str, Dict[str, Any]] = {}
    for runtime in service.all_runtimes():
        name = runtime.app.name
        entry = result.get(name)
        if entry is None:
            closed = recent.closed.get(name, [0, 0, 0])
            entry = result[name] = {
                "connections": 0,
                "bytes_ingress": closed[0],
                "bytes_egress": closed[1],
                "closed": closed[2],
            }
        for connection in runtime.connections:
            entry["connections"] += 1
            # A TCP connection's counters are on the leg holding it now.
            relay = getattr(connection, "leg", None) or connection
            entry["bytes_ingress"] += getattr(relay, "received", 0)
            leg = getattr(relay, "origin_leg", None)
            if leg is not None:
                entry["bytes_egress"] += getattr(leg, "received", 0)
    for name, closed in recent.closed.items():
        if name not in result:
            result[name] = {
                "connections": 0,
                "bytes_ingress": closed[0],
                "bytes_egress": closed[1],
                "closed": closed[2],
            }
    return result
