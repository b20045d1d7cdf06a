"""
The origin connect for IP literals (spectrum.proxy.dial): its shared
timeout timer, failures reported on a later turn, and events meant for an
earlier socket with the same descriptor number.
"""

from __future__ import annotations

import socket
from typing import Any, List

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import Clock

from spectrum.proxy import dial

from relaykit import black_hole, sleep


class _Recorder(ClientFactory):
    def __init__(self) -> None:
        self.failures: List[Any] = []
        self.built: List[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = Protocol()
        self.built.append(protocol)
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.failures.append(reason)


class _Retrying:
    """
    A stand-in dial that, timed out, starts another (the relay trying its
    next origin with the same connect timeout).
    """

    def __init__(self, deadlines: Any, log: List[str], name: str) -> None:
        self.deadlines, self.log, self.name = deadlines, log, name

    def timed_out(self) -> None:
        self.log.append(self.name)
        if not self.name.endswith("'"):
            self.deadlines.add(_Retrying(self.deadlines, self.log, self.name + "'"))


def test_deadlines_keep_one_timer_when_timeouts_retry() -> None:
    clock = Clock()
    deadlines = dial._Deadlines(clock, 5.0)
    log: List[str] = []
    for second in range(30):
        deadlines.add(_Retrying(deadlines, log, f"d{second}"))
        clock.advance(1)
        assert len(clock.getDelayedCalls()) == 1, second
    for _ in range(12):
        clock.advance(1)
        assert len(clock.getDelayedCalls()) <= 1
    assert clock.getDelayedCalls() == [] and not deadlines.pending
    # Every dial timed out once, and each retry once, in order.
    assert log[:3] == ["d0", "d1", "d2"] and len(log) == 60
    assert sorted(log) == sorted([f"d{i}" for i in range(30)] + [f"d{i}'" for i in range(30)])


def test_deadlines_survive_a_failing_timeout(no_logged_errors: List[dict]) -> None:
    clock = Clock()
    deadlines = dial._Deadlines(clock, 1.0)
    fired: List[str] = []

    class Broken:
        def timed_out(self) -> None:
            raise RuntimeError("boom")

    class Fine:
        def timed_out(self) -> None:
            fired.append("fine")

    deadlines.add(Broken())  # type: ignore[arg-type]
    clock.advance(0.5)
    deadlines.add(Fine())  # type: ignore[arg-type]
    clock.advance(0.6)
    clock.advance(0.5)
    assert fired == ["fine"]
    # The failure was logged (and taken here, not failing the test).
    assert len(no_logged_errors) == 1 and no_logged_errors[0]["log_failure"].check(RuntimeError)
    no_logged_errors.clear()


@pytest_twisted.ensureDeferred
async def test_immediate_failure_is_reported_on_a_later_turn() -> None:
    # The kernel refuses at once (no route to a broadcast address): the
    # factory hears of it after start() has returned.
    factory = _Recorder()
    attempt = dial.Dial(factory)
    attempt.start("255.255.255.255", 80, 5.0, reactor)
    assert factory.failures == []
    await sleep(0.05)
    assert len(factory.failures) == 1 and attempt.transport is None


@pytest_twisted.ensureDeferred
async def test_refusal_and_success() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    factory = _Recorder()
    dial.Dial(factory).start("127.0.0.1", port, 5.0, reactor)
    await sleep(0.1)
    [failure] = factory.failures
    assert failure.check(ConnectionRefusedError)
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(8)
    try:
        attempt = dial.Dial(factory)
        attempt.start("127.0.0.1", listening.getsockname()[1], 5.0, reactor)
        await sleep(0.1)
        assert len(factory.built) == 1 and attempt.transport is not None and attempt.transport.connected
        assert not attempt.transport.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        attempt.transport.loseConnection()
    finally:
        listening.close()


@pytest_twisted.ensureDeferred
async def test_a_stale_readiness_event_does_not_complete_a_pending_connect() -> None:
    # An origin whose accept queue is full never answers: the connect stays
    # in progress. An event delivered to it anyway (one meant for an
    # earlier socket with the same descriptor number) must not make it
    # connected, and its timeout still applies.
    factory = _Recorder()
    with black_hole() as hole:
        attempt = dial.Dial(factory)
        attempt.start(hole[0], hole[1], 0.5, reactor)
        await sleep(0.1)
        assert attempt.transport is not None
        attempt.transport.doWrite()
        attempt.transport.doRead()
        assert not attempt.transport.connected and factory.built == []
        await sleep(0.7)
        [failure] = factory.failures
        assert failure.check(TimeoutError)
