"""
Helpers for edge protection and analytics tests: a proxy built from a whole
L{Config} (rules, geo, limits, events), bursts of clients from one address,
and waiting for a condition on the real reactor.
"""

from __future__ import annotations

import time
from typing import Any, Callable, List, Optional

from twisted.internet import protocol, reactor

from spectrum.model import Config, Origin
from spectrum.service import SpectrumService

from relaykit import Client, Proxy, sleep


class EdgeProxy(Proxy):
    """
    A started SpectrumService for C{config}, and the events it recorded.
    """

    def __init__(self, config: Config, drain_timeout: float = 5.0) -> None:
        self.service = SpectrumService(config, reactor=reactor, drain_timeout=drain_timeout)
        self.events: List[tuple] = []
        self.service.recorders.add(lambda kind, record: self.events.append((kind, record.as_event(kind))))
        self.service.startService()

    @property
    def firewall(self) -> Any:
        return self.service.admission.firewall

    def of_kind(self, kind: str) -> List[dict]:
        return [event for k, event in self.events if k == kind]


def origin_at(port: Any, name: str = "o") -> Origin:
    number = port if isinstance(port, int) else port.getHost().port
    return Origin(name=name, address="127.0.0.1", port=number)


def start_client(port: int, bind: Optional[str] = None) -> Client:
    """
    Start connecting a client (without waiting); its C{done} fires when it
    is closed, C{ready} when it connected.
    """
    client = Client()
    client.ready.addErrback(lambda failure: None)
    factory = protocol.ClientFactory.forProtocol(lambda: client)
    factory.clientConnectionFailed = lambda connector, reason: client.done.callback(None)  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, factory, bindAddress=(bind, 0) if bind else None)
    return client


async def exchange(port: int, bind: Optional[str], payload: bytes = b"ping") -> bytes:
    """
    Connect from C{bind}, send C{payload}, half-close and return what came
    back before the connection closed (b"" for a refused connection).
    """
    client = start_client(port, bind)
    await client.ready
    if payload:
        client.transport.write(payload)
    client.transport.loseWriteConnection()
    return await client.done


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await sleep(0.01)
