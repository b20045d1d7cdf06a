"""
The per-connection record: one object per client connection, filled in as
the connection goes and handed to the recorders when it opens and closes.

Field names follow Cloudflare Spectrum's event logs, so a record turns into a
log line an operator's existing tooling reads.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from twisted.logger import Logger

from spectrum import status as S

# Event kinds, as Cloudflare names them.
CONNECT = "connect"
DISCONNECT = "disconnect"
CLIENT_FILTERED = "clientFiltered"
ORIGIN_ERROR = "originError"
TLS_ERROR = "tlsError"


class ConnectionRecord:
    """
    What happened to one client connection.

    Byte counters are plain ints bumped on the hot path; everything else is
    set once.
    """

    __slots__ = (
        "application",
        "app_id",
        "client_proto",
        "client_ip",
        "client_port",
        "edge_ip",
        "edge_port",
        "origin_name",
        "origin_ip",
        "origin_port",
        "client_bytes",
        "origin_bytes",
        "connect_time",
        "disconnect_time",
        "status",
        "reason",
        "firewall",
        "extra",
    )

    def __init__(
        self,
        application: str,
        app_id: str,
        client_ip: str,
        client_port: int,
        edge_ip: str,
        edge_port: int,
        connect_time: float,
        client_proto: str = "tcp",
    ) -> None:
        self.application = application
        self.app_id = app_id
        self.client_proto = client_proto
        self.client_ip = client_ip
        self.client_port = client_port
        self.edge_ip = edge_ip
        self.edge_port = edge_port
        self.origin_name: Optional[str] = None
        self.origin_ip: Optional[str] = None
        self.origin_port: Optional[int] = None
        #: bytes read from the client (client to origin)
        self.client_bytes = 0
        #: bytes read from the origin (origin to client)
        self.origin_bytes = 0
        self.connect_time = connect_time
        self.disconnect_time: Optional[float] = None
        self.status = S.OPENED
        self.reason = ""
        self.firewall = "UNKNOWN"
        #: fields added by later stages (TLS, PROXY protocol, geo)
        self.extra: Dict[str, Any] = {}

    @property
    def duration(self) -> float:
        """
        Seconds from connect to disconnect (or 0 while open).
        """
        if self.disconnect_time is None:
            return 0.0
        return self.disconnect_time - self.connect_time

    def as_event(self, kind: str) -> Dict[str, Any]:
        """
        This record as one event with Cloudflare's Spectrum log field names.
        """
        event: Dict[str, Any] = {
            "Event": kind,
            "Application": self.application,
            "ApplicationId": self.app_id,
            "ClientProto": self.client_proto,
            "ClientIP": self.client_ip,
            "ClientPort": self.client_port,
            "ClientBytes": self.client_bytes,
            "ClientMatchedIpFirewall": self.firewall,
            "EdgeIP": self.edge_ip,
            "EdgePort": self.edge_port,
            "OriginName": self.origin_name,
            "OriginIP": self.origin_ip,
            "OriginPort": self.origin_port,
            "OriginBytes": self.origin_bytes,
            "Status": self.status,
            "Reason": self.reason,
            "ConnectTimestamp": self.connect_time,
            "DisconnectTimestamp": self.disconnect_time,
        }
        event.update(self.extra)
        return event


Recorder = Callable[[str, ConnectionRecord], None]


class Recorders:
    """
    The recorders a connection's events go to, plus a structured log line
    when it ends (or is refused).

    A recorder that raises is logged and does not disturb the connection or
    the other recorders.
    """

    log = Logger()

    def __init__(self) -> None:
        self._recorders: List[Recorder] = []

    def add(self, recorder: Recorder) -> None:
        self._recorders.append(recorder)

    def remove(self, recorder: Recorder) -> None:
        self._recorders.remove(recorder)

    def __call__(self, kind: str, record: ConnectionRecord) -> None:
        if kind != CONNECT:
            # One line per connection, at its end, with the whole record (as
            # HAProxy's tcplog): a connect line too would double the log,
            # and twistd writes debug events as well.
            self.log.info(
                "{app}: {client_ip}:{client_port} {event_kind} status {status}"
                " ({reason}) origin {origin} client_bytes {client_bytes} "
                "origin_bytes {origin_bytes} duration {duration:.3f}s",
                event_kind=kind,
                app=record.application,
                client_ip=record.client_ip,
                client_port=record.client_port,
                origin=record.origin_name or "-",
                status=record.status,
                reason=record.reason or S.DESCRIPTIONS.get(record.status, ""),
                client_bytes=record.client_bytes,
                origin_bytes=record.origin_bytes,
                duration=record.duration,
            )
        for recorder in self._recorders:
            try:
                recorder(kind, record)
            except Exception:
                self.log.failure("recorder {recorder!r} failed", recorder=recorder)
