"""
Health checks: a L{HealthChecker} per origin pool probes each origin on the
reactor's clock and tells the pool's L{Balancer} which origins are up.

Each origin has its own schedule, jittered so that a thousand origins with
the same interval are not probed in the same tick: the first probe starts at
a random point within the first interval, and each next one between
C{(1 - JITTER) * interval} and C{interval} after the previous one started,
so an origin is never probed less often than its interval says. Start times
are rounded down to L{TICK}s of a timing wheel, one reactor timer per tick.

A probe is a Deferred with its own timeout (C{monitor.timeout}); a failed
probe is tried again at once up to C{monitor.retries} times before it counts
as one failure. C{consecutive_down} failures in a row mark an origin down,
C{consecutive_up} passes in a row mark it up again. A probe that fails,
times out or raises is recorded, never stops the schedule: there is no
LoopingCall here, which would stop on its first unhandled error.

Passive health: the relay reports real connection failures (refused, timed
out, reset before any byte) through L{HealthChecker.passive_failure};
C{monitor.passive_down} of them in a row mark the origin down until a probe
passes.

Every change of state is a L{HealthEvent}, logged and kept (the last
L{HISTORY} of them) in L{HealthChecker.history} for the admin API.

Probe types: C{tcp} (connect; with C{send}/C{expect}, a dialogue), C{tls}
(handshake, verified unless C{allow_insecure}), C{http}/C{https} (treq),
C{smtp} (greeting 220, HELO 250, QUIT 221), C{udp} (send, expect a reply).
"""

from __future__ import annotations

import errno
import functools
import math
import os
import random
import re
import socket
import struct
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import attr
from twisted.internet import error as ierror
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReadDescriptor,
    IWriteDescriptor,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from spectrum.balancer import Balancer
from spectrum.model import Monitor, Origin, Pool

#: How much earlier than its interval a probe may start (a fraction).
JITTER = 0.1
#: Probes start on multiples of this many seconds (of the reactor's clock), so
#: the reactor wakes once for the few origins due in one tick rather than once
#: per origin; the jitter still spreads origins over an interval's ticks.
TICK = 0.01
#: State changes kept per checker.
HISTORY = 256
#: The most of an answer kept to match C{expect} against.
MAX_ANSWER = 64 * 1024

#: A probe: (reactor, origin, port, monitor) -> Deferred that fires (with a
#: short description) when the origin is healthy and fails otherwise.
Probe = Callable[[Any, Origin, int, Monitor], "Deferred[Optional[str]]"]


class ProbeError(Exception):
    """
    The origin answered, but not as the monitor expects; C{str()} is one line.
    """


@attr.s(frozen=True, slots=True, auto_attribs=True)
class HealthEvent:
    """
    One change of an origin's state.

    @ivar healthy: the new state.
    @ivar latency: seconds the deciding probe took, if a probe decided.
    @ivar error: what the failing probe or connection reported.
    """

    time: float
    pool: str
    origin: str
    healthy: bool
    reason: str
    latency: Optional[float] = None
    error: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return attr.asdict(self)


class _OriginHealth:
    """
    What the checker knows about one origin.
    """

    __slots__ = (
        "active",
        "call",
        "failures",
        "last_error",
        "last_latency",
        "last_time",
        "origin",
        "passive",
        "passive_down",
        "passive_total",
        "port",
        "probes",
        "probing",
        "round_started",
        "successes",
        "timed_out",
        "timer",
        "up",
    )

    def __init__(self, origin: Origin, port: int, up: bool) -> None:
        self.origin = origin
        self.port = port
        self.up = up
        self.successes = 0
        self.failures = 0
        self.passive = 0
        self.passive_total = 0
        self.passive_down = False
        self.probes = 0
        self.last_time: Optional[float] = None
        self.last_latency: Optional[float] = None
        self.last_error: Optional[str] = None
        self.call: Any = None
        self.probing: Optional[Deferred] = None
        self.round_started = 0.0
        self.active = False
        self.timer: Any = None
        self.timed_out = False


def describe(reason: Failure) -> str:
    """
    A probe's failure as the one line kept in status and events.
    """
    if reason.check(DeferredTimeout, ierror.TimeoutError, CancelledError):
        return "timed out"
    inner = getattr(reason.value, "reasons", None)
    if isinstance(inner, list) and inner and all(isinstance(r, Failure) for r in inner):
        # twisted.web's ResponseFailed and ResponseNeverReceived wrap the causes.
        return "; ".join(describe(r) for r in inner)
    text = reason.getErrorMessage()
    return " ".join(text.split()) or getattr(reason.type, "__name__", "error")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class HealthChecker:
    """
    Probes the origins of one pool on the reactor's clock and marks them up
    or down in C{balancer}.

    Origins without a monitor (the pool has none) are up and never probed;
    disabled origins are not probed.

    @ivar history: the last L{HISTORY} state changes, oldest first.
    """

    log = Logger()

    def __init__(
        self,
        balancer: Balancer,
        pool: Pool,
        default_port: int,
        reactor: Any = None,
        rng: Optional[random.Random] = None,
        probe: Optional[Probe] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.balancer = balancer
        self.rng = rng if rng is not None else random.Random()
        self._probe_override = probe
        self.history: Deque[HealthEvent] = deque(maxlen=HISTORY)
        self.running = False
        self.pool = pool
        self.default_port = default_port
        self.monitor = pool.monitor
        self._probe = self._probe_for(pool.monitor)
        self._states: Dict[str, _OriginHealth] = {}
        self._wheel: Dict[int, List[_OriginHealth]] = {}
        self._wheel_calls: Dict[int, Any] = {}
        self.balancer.when_all_down = pool.when_all_down
        for origin in pool.origins:
            self._states[origin.name] = _OriginHealth(origin, self._port(origin), True)
            if origin.drain:
                self.balancer.set_draining(origin.name, True)

    # configuration ---------------------------------------------------------

    def _probe_for(self, monitor: Optional[Monitor]) -> Optional[Probe]:
        if monitor is None:
            return None
        if self._probe_override is not None:
            return self._probe_override
        return PROBES[monitor.type]

    def _port(self, origin: Origin) -> int:
        if self.monitor is not None and self.monitor.port is not None:
            return self.monitor.port
        return origin.port or self.default_port

    def update(self, pool: Pool, default_port: Optional[int] = None) -> None:
        """
        Check C{pool} from now on (a reload). An unchanged pool keeps
        everything; an origin whose address, port and monitor stay keeps its
        state and schedule; a changed or new one starts up and is probed
        within its first interval.
        """
        old_pool = self.pool
        if default_port is not None:
            self.default_port = default_port
        self.balancer.when_all_down = pool.when_all_down
        old_drain = {origin.name: origin.drain for origin in old_pool.origins}
        for origin in pool.origins:
            if old_drain.get(origin.name, False) != origin.drain:
                self.balancer.set_draining(origin.name, origin.drain)
        monitor_changed = pool.monitor != self.monitor
        self.pool = pool
        self.monitor = pool.monitor
        self._probe = self._probe_for(pool.monitor)
        states: Dict[str, _OriginHealth] = {}
        for origin in pool.origins:
            port = self._port(origin)
            old = self._states.pop(origin.name, None)
            if old is not None and old.origin.address == origin.address and old.port == port:
                old.origin = origin
                if monitor_changed or not origin.enabled:
                    self._halt(old)
                    old.successes = old.failures = 0
                if self.monitor is None and not old.up:
                    self._change(old, True, "monitor removed")
                states[origin.name] = old
            else:
                if old is not None:
                    self._halt(old)
                    if not old.up:
                        self._change(old, True, "origin changed")
                states[origin.name] = _OriginHealth(origin, port, True)
        for gone in self._states.values():
            self._halt(gone)
        self._states = states
        if not any(health.active for health in states.values()):
            self._clear_wheel()
        if self.running:
            for health in states.values():
                if not health.active:
                    self._begin(health)

    # lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """
        Start probing: each origin's first probe comes at a random point
        within its first interval.
        """
        if self.running:
            return
        self.running = True
        for health in self._states.values():
            self._begin(health)

    def stop(self) -> None:
        """
        Stop probing; probes under way are cancelled. States are kept.
        """
        self.running = False
        for health in self._states.values():
            self._halt(health)
        self._clear_wheel()

    def _begin(self, health: _OriginHealth) -> None:
        monitor = self.monitor
        if monitor is None or not health.origin.enabled:
            return
        health.active = True
        self._at(health, self.reactor.seconds() + self.rng.uniform(0, monitor.interval))

    def _at(self, health: _OriginHealth, due: float) -> None:
        # A timing wheel: origins due in one tick share one timer (rounded
        # down, so never later than the jittered time). A DelayedCall per
        # origin would cost a heap push and pop among a thousand others.
        slot = math.floor(due / TICK)
        health.call = slot
        bucket = self._wheel.get(slot)
        if bucket is None:
            bucket = self._wheel[slot] = []
            delay = max(0.0, slot * TICK - self.reactor.seconds())
            self._wheel_calls[slot] = self.reactor.callLater(delay, self._tick, slot)
        bucket.append(health)

    def _tick(self, slot: int) -> None:
        self._wheel_calls.pop(slot, None)
        for health in self._wheel.pop(slot, ()):
            # Entries of origins halted or moved since are skipped.
            if health.call != slot or not health.active:
                continue
            health.call = None
            try:
                self._round(health)
            except Exception:
                self.log.failure("{pool}: probing {origin} failed", pool=self.pool.name, origin=health.origin.name)
                self._next(health)

    def _clear_wheel(self) -> None:
        for call in self._wheel_calls.values():
            if call.active():
                call.cancel()
        self._wheel_calls.clear()
        self._wheel.clear()

    def _halt(self, health: _OriginHealth) -> None:
        health.active = False
        health.call = None
        probing, health.probing = health.probing, None
        if probing is not None:
            probing.cancel()
        timer, health.timer = health.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # probing ---------------------------------------------------------------

    def _round(self, health: _OriginHealth) -> None:
        assert self.monitor is not None  # only monitored origins are active
        health.round_started = self.reactor.seconds()
        self._try(health, self.monitor.retries)

    def _try(self, health: _OriginHealth, retries_left: int) -> None:
        monitor = self.monitor
        probe = self._probe
        assert monitor is not None and probe is not None
        reactor = self.reactor
        started = reactor.seconds()
        try:
            d = probe(reactor, health.origin, health.port, monitor)
        except Exception:
            # A probe that raises is a failed probe, not a dead loop.
            d = fail()
        health.probing = d
        health.timed_out = False
        if not d.called:
            # Lighter than Deferred.addTimeout, at a thousand probes a second.
            health.timer = reactor.callLater(monitor.timeout, self._expire, health, d)
        d.addCallbacks(
            self._passed,
            self._failed,
            callbackArgs=(health, started),
            errbackArgs=(health, started, retries_left),
        )

    def _expire(self, health: _OriginHealth, d: Deferred) -> None:
        health.timer = None
        health.timed_out = True
        d.cancel()

    def _settled(self, health: _OriginHealth) -> None:
        health.probing = None
        timer, health.timer = health.timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _passed(self, detail: Any, health: _OriginHealth, started: float) -> None:
        self._settled(health)
        if not health.active:
            return
        try:
            self._record(health, True, self.reactor.seconds() - started, None)
        finally:
            self._next(health)

    def _failed(self, reason: Failure, health: _OriginHealth, started: float, retries_left: int) -> None:
        self._settled(health)
        if not health.active:
            # Stopped or reloaded while the probe ran.
            return
        try:
            if retries_left > 0:
                self._try(health, retries_left - 1)
                return
            error = "timed out" if health.timed_out else describe(reason)
            self._record(health, False, self.reactor.seconds() - started, error)
        except Exception:
            self.log.failure(
                "{pool}: recording a probe of {origin} failed", pool=self.pool.name, origin=health.origin.name
            )
        self._next(health)

    def _next(self, health: _OriginHealth) -> None:
        if not health.active or health.call is not None or health.probing is not None:
            return
        assert self.monitor is not None
        interval = self.monitor.interval
        self._at(health, health.round_started + interval * self.rng.uniform(1.0 - JITTER, 1.0))

    def _record(self, health: _OriginHealth, ok: bool, latency: float, error: Optional[str]) -> None:
        monitor = self.monitor
        assert monitor is not None
        health.probes += 1
        health.last_time = self.reactor.seconds()
        health.last_latency = latency
        health.last_error = error
        if ok:
            health.failures = 0
            health.successes += 1
            if not health.up:
                if health.passive_down:
                    self._change(health, True, "probe passed after failed connections", latency)
                elif health.successes >= monitor.consecutive_up:
                    self._change(health, True, f"{_count(health.successes, 'probe')} passed", latency)
        else:
            health.successes = 0
            health.failures += 1
            if health.up and health.failures >= monitor.consecutive_down:
                self._change(health, False, f"{_count(health.failures, 'probe')} failed", latency, error)

    def _change(
        self,
        health: _OriginHealth,
        up: bool,
        reason: str,
        latency: Optional[float] = None,
        error: Optional[str] = None,
    ) -> None:
        health.up = up
        health.passive = 0
        if up:
            health.passive_down = False
        self.balancer.set_up(health.origin.name, up)
        event = HealthEvent(
            time=self.reactor.seconds(),
            pool=self.pool.name,
            origin=health.origin.name,
            healthy=up,
            reason=reason,
            latency=latency,
            error=error,
        )
        self.history.append(event)
        emit = self.log.info if up else self.log.warn
        emit(
            "{pool}: origin {origin} is {state}: {reason}{detail}",
            pool=event.pool,
            origin=event.origin,
            state="up" if up else "down",
            reason=reason,
            detail=f" ({error})" if error else "",
            health_event=event.as_dict(),
        )

    # passive health and drain ------------------------------------------------

    def passive_failure(self, origin: Origin, reason: Failure) -> None:
        """
        A real connection to C{origin} failed before any byte came back
        (refused, timed out, reset). Counted only when the pool has a monitor,
        since only a passing probe brings the origin back.
        """
        health = self._states.get(origin.name)
        monitor = self.monitor
        if health is None or monitor is None or not health.active:
            return
        if reason.check(ierror.UserError, ierror.ConnectingCancelledError, CancelledError):
            # The client left while we were connecting: not the origin's fault.
            return
        health.passive_total += 1
        if not health.up or not monitor.passive_down:
            return
        health.passive += 1
        if health.passive >= monitor.passive_down:
            health.passive_down = True
            health.successes = 0
            self._change(
                health,
                False,
                f"{_count(health.passive, 'connection')} failed in a row",
                error=describe(reason),
            )

    def passive_success(self, origin: Origin) -> None:
        """
        A real connection to C{origin} exchanged bytes: the run of passive
        failures is broken.
        """
        health = self._states.get(origin.name)
        if health is not None:
            health.passive = 0

    def drain(self, origin_name: str, draining: bool = True) -> bool:
        """
        Start or stop draining an origin: no new connections, open ones
        continue (for the admin API). A reload keeps it unless the origin's
        C{drain} in the config changes. Returns whether the pool has that
        origin.
        """
        health = self._states.get(origin_name)
        if health is None:
            return False
        self.balancer.set_draining(origin_name, draining)
        self.log.info(
            "{pool}: origin {origin} {what}",
            pool=self.pool.name,
            origin=origin_name,
            what="draining" if draining else "no longer draining",
        )
        return True

    # reading ---------------------------------------------------------------

    def status(self) -> List[Dict[str, Any]]:
        """
        Each origin's health, in pool order, for the admin API.
        """
        result = []
        for health in self._states.values():
            origin = health.origin
            result.append(
                {
                    "name": origin.name,
                    "address": origin.address,
                    "port": health.port,
                    "enabled": origin.enabled,
                    "monitored": self.monitor is not None and origin.enabled,
                    "healthy": health.up,
                    "draining": self.balancer.is_draining(origin.name),
                    "consecutive_successes": health.successes,
                    "consecutive_failures": health.failures,
                    "passive_failures": health.passive_total,
                    "probes": health.probes,
                    "last_check": health.last_time,
                    "latency": health.last_latency,
                    "error": health.last_error,
                }
            )
        return result

    def is_up(self, origin_name: str) -> bool:
        return self._states[origin_name].up


# Probes ----------------------------------------------------------------------


_RESET = struct.pack("ii", 1, 0)
# Created non-blocking in one system call where the platform allows.
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_STREAM = socket.SOCK_STREAM | _NONBLOCK


@implementer(IWriteDescriptor)
class _Connect:
    """
    A TCP connect and nothing else, on a bare non-blocking socket: a fraction
    of a transport's cost, which matters at a thousand probes a second.
    """

    def __init__(self, reactor: Any, address: str, port: int) -> None:
        self.reactor = reactor
        self.result: Deferred[Optional[str]] = Deferred(self._cancel)
        self.watching = False
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock: Optional[socket.socket] = socket.socket(family, _STREAM)
        if not _NONBLOCK:
            self.sock.setblocking(False)
        code = self.sock.connect_ex((address, port))
        if code == errno.EINPROGRESS:
            # A near origin (loopback, same host) often answers within the
            # connect call itself: then the reactor need not watch at all.
            # Asking again says EISCONN, the error, or EALREADY (in progress).
            code = self.sock.connect_ex((address, port))
            if code == errno.EISCONN:
                code = 0
        if code in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
            self.watching = True
            reactor.addWriter(self)
        else:
            self._finish(code)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "HealthProbe"

    def doWrite(self) -> None:
        assert self.sock is not None
        self._finish(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def connectionLost(self, reason: Failure) -> None:
        # epoll reports a refused connect as a hang-up: the socket knows why.
        if self.sock is not None and not self.result.called:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._finish(code)
                return
        self._close()
        if not self.result.called:
            self.result.errback(reason)

    def _close(self) -> None:
        if self.watching:
            self.watching = False
            self.reactor.removeWriter(self)
        if self.sock is not None:
            # Close with a reset, as HAProxy's checks do: no FIN exchange and
            # no TIME_WAIT socket left behind per probe.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
            self.sock.close()
            self.sock = None

    def _finish(self, code: int) -> None:
        self._close()
        if code:
            self.result.errback(ierror.getConnectError((code, os.strerror(code))))
        else:
            self.result.callback("connected")

    def _cancel(self, d: Deferred) -> None:
        self._close()


@functools.lru_cache(maxsize=4096)
def _literal(address: str) -> bool:
    return isIPAddress(address) or isIPv6Address(address)


def _endpoint(reactor: Any, address: str, port: int, timeout: float) -> Any:
    from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint

    if isIPAddress(address):
        return TCP4ClientEndpoint(reactor, address, port, timeout=timeout)
    if isIPv6Address(address):
        return TCP6ClientEndpoint(reactor, address, port, timeout=timeout)
    return HostnameEndpoint(reactor, address, port, timeout=timeout)


class _Answer:
    """
    Matches an answer, as it arrives, against C{expect} or C{expect_regex}.
    """

    def __init__(self, expect: Optional[bytes], regex: Optional[bytes]) -> None:
        self.expect = expect
        self.pattern = re.compile(regex) if regex is not None else None
        self.buffer = b""

    @property
    def wanted(self) -> bool:
        return self.expect is not None or self.pattern is not None

    def feed(self, data: bytes) -> bool:
        """
        Add C{data}; whether the answer so far matches.
        """
        if len(self.buffer) < MAX_ANSWER:
            self.buffer = (self.buffer + data)[:MAX_ANSWER]
        if self.pattern is not None:
            return self.pattern.search(self.buffer) is not None
        return self.expect is not None and self.expect in self.buffer

    def mismatch(self) -> ProbeError:
        want = self.pattern.pattern if self.pattern is not None else self.expect
        return ProbeError(f"expected {want!r}, got {self.buffer[:80]!r}")


@implementer(IHandshakeListener)
class StreamProbe(Protocol):
    """
    One probe's dialogue on a stream: wait for the TLS handshake (when
    C{tls}), write C{send}, read until the answer matches. C{result} fires
    with a description on success and fails with the reason otherwise.
    """

    transport: Any

    def __init__(self, send: Optional[bytes], answer: _Answer, tls: bool = False) -> None:
        self.send = send
        self.answer = answer
        self.tls = tls
        self.result: Deferred[Optional[str]] = Deferred()

    def connectionMade(self) -> None:
        if not self.tls:
            self._ready()

    def handshakeCompleted(self) -> None:
        self._ready()

    def _ready(self) -> None:
        if self.send:
            self.transport.write(self.send)
        if not self.answer.wanted:
            self._succeed("handshake done" if self.tls else "connected")

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        if self.answer.feed(data):
            self._succeed("answer matched")

    def _succeed(self, detail: str) -> None:
        if not self.result.called:
            self.result.callback(detail)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if self.result.called:
            return
        if reason.check(ierror.ConnectionDone) and self.answer.wanted:
            self.result.errback(self.answer.mismatch())
        elif reason.check(ierror.ConnectionDone):
            self.result.errback(ProbeError("closed before the TLS handshake"))
        else:
            self.result.errback(reason)


def _run_stream(reactor: Any, endpoint: Any, protocol: Any) -> Deferred:
    """
    Connect C{protocol} through C{endpoint}; its C{result}, cancellable at
    any stage (the connect, or the open connection).
    """
    from twisted.internet.endpoints import connectProtocol

    connecting = connectProtocol(endpoint, protocol)

    def cancel(d: Deferred) -> None:
        if not connecting.called:
            connecting.cancel()
        elif protocol.transport is not None:
            protocol.transport.abortConnection()

    result: Deferred[Optional[str]] = Deferred(cancel)

    def connect_failed(reason: Failure) -> None:
        if not result.called:
            result.errback(reason)

    connecting.addErrback(connect_failed)

    def finished(value: Any) -> None:
        if not result.called:
            if isinstance(value, Failure):
                result.errback(value)
            else:
                result.callback(value)

    protocol.result.addBoth(finished)
    return result


def _tls_creator(monitor: Monitor, hostname: str) -> Any:
    from twisted.internet import ssl

    if monitor.allow_insecure:
        return _InsecureCreator(hostname)
    trust: Any = None
    if monitor.ca is not None:
        with open(monitor.ca, "rb") as f:
            trust = ssl.trustRootFromCertificates(
                [ssl.Certificate.loadPEM(pem) for pem in _pem_blocks(f.read())],
            )
    return ssl.optionsForClientTLS(hostname, trustRoot=trust)


def _pem_blocks(data: bytes) -> List[bytes]:
    end = b"-----END CERTIFICATE-----"
    return [block + end for block in data.split(end) if b"-----BEGIN CERTIFICATE-----" in block]


@implementer(IOpenSSLClientConnectionCreator, IPolicyForHTTPS)
class _InsecureCreator:
    """
    A TLS client that sends SNI and verifies nothing (C{allow_insecure}).
    """

    def __init__(self, hostname: str) -> None:
        from OpenSSL import SSL

        self.hostname = hostname
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.context.set_verify(SSL.VERIFY_NONE, lambda *args: True)

    def clientConnectionForTLS(self, protocol: Any) -> Any:
        from OpenSSL import SSL

        connection = SSL.Connection(self.context, None)
        if not (isIPAddress(self.hostname) or isIPv6Address(self.hostname)):
            connection.set_tlsext_host_name(self.hostname.encode("idna"))
        connection.set_connect_state()
        return connection

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self


def _host_header(monitor: Monitor) -> Optional[str]:
    for name, values in monitor.header:
        if name.lower() == "host" and values:
            return values[0]
    return None


def probe_tcp(reactor: Any, origin: Origin, port: int, monitor: Monitor) -> Deferred:
    """
    Connect; with C{send}/C{expect}, hold a dialogue.
    """
    if monitor.send is None and monitor.expect is None and monitor.expect_regex is None and _literal(origin.address):
        return _Connect(reactor, origin.address, port).result
    answer = _Answer(monitor.expect, monitor.expect_regex)
    endpoint = _endpoint(reactor, origin.address, port, monitor.timeout)
    return _run_stream(reactor, endpoint, StreamProbe(monitor.send, answer))


def probe_tls(reactor: Any, origin: Origin, port: int, monitor: Monitor) -> Deferred:
    """
    A TLS handshake (verified against C{ca} or the system's CAs unless
    C{allow_insecure}); then C{send}/C{expect} when given.
    """
    from twisted.internet.endpoints import wrapClientTLS

    endpoint = wrapClientTLS(
        _tls_creator(monitor, origin.address),
        _endpoint(reactor, origin.address, port, monitor.timeout),
    )
    return _run_stream(
        reactor, endpoint, StreamProbe(monitor.send, _Answer(monitor.expect, monitor.expect_regex), tls=True)
    )


def parse_smtp(buffer: bytes) -> Tuple[List[Tuple[int, str]], bytes]:
    """
    Complete SMTP replies in C{buffer} (multi-line ones joined), and what is
    left over. Pure.

    @raise ProbeError: a line that is not an SMTP reply.
    """
    replies: List[Tuple[int, str]] = []
    lines: List[str] = []
    while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or (len(text) > 3 and text[3] not in " -"):
            raise ProbeError(f"not an SMTP reply: {text[:80]!r}")
        lines.append(text[4:])
        if len(text) == 3 or text[3] == " ":
            replies.append((int(text[:3]), " ".join(lines)))
            lines = []
    return replies, buffer


class SMTPProbe(Protocol):
    """
    Greeting 220, C{HELO} 250, C{QUIT} 221.
    """

    transport: Any
    STEPS = ((220, b"HELO spectrum-health\r\n"), (250, b"QUIT\r\n"), (221, None))

    def __init__(self) -> None:
        self.result: Deferred[Optional[str]] = Deferred()
        self.buffer = b""
        self.step = 0

    def dataReceived(self, data: bytes) -> None:
        if self.result.called:
            return
        try:
            replies, self.buffer = parse_smtp(self.buffer + data)
            if len(self.buffer) > MAX_ANSWER:
                raise ProbeError("SMTP reply line too long")
            for code, text in replies:
                want, then = self.STEPS[self.step]
                if code != want:
                    raise ProbeError(f"expected {want}, got {code} {text[:80]}")
                self.step += 1
                if then is None:
                    self.result.callback(f"{code} {text[:40]}")
                    self.transport.loseConnection()
                    return
                self.transport.write(then)
        except ProbeError:
            self.result.errback()
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        if not self.result.called:
            if reason.check(ierror.ConnectionDone):
                reason = Failure(ProbeError(f"closed after {self.step} of 3 SMTP replies"))
            self.result.errback(reason)


def probe_smtp(reactor: Any, origin: Origin, port: int, monitor: Monitor) -> Deferred:
    """
    An SMTP greeting, HELO and QUIT.
    """
    return _run_stream(reactor, _endpoint(reactor, origin.address, port, monitor.timeout), SMTPProbe())


@implementer(IReadDescriptor)
class _Datagram:
    """
    Send one datagram from a connected UDP socket and wait for a reply that
    matches; an ICMP port unreachable (ECONNREFUSED on the socket) fails at
    once. A bare socket: Twisted's UDP port stops listening on that error.
    """

    def __init__(self, reactor: Any, address: str, port: int, send: bytes, answer: _Answer) -> None:
        self.reactor = reactor
        self.answer = answer
        self.result: Deferred[Optional[str]] = Deferred(lambda d: self._close())
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.sock: Optional[socket.socket] = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.reading = False
        try:
            self.sock.connect((address, port))
            self.sock.send(send)
        except OSError as e:
            self._fail(e.errno)
            return
        self.reading = True
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else -1

    def logPrefix(self) -> str:
        return "HealthProbe"

    def doRead(self) -> None:
        while self.sock is not None:
            try:
                data = self.sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as e:
                self._fail(e.errno)
                return
            if self.answer.feed(data):
                self._close()
                self.result.callback("answer matched")
                return

    def connectionLost(self, reason: Failure) -> None:
        if self.sock is not None and not self.result.called:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(code)
                return
        self._close()
        if not self.result.called:
            self.result.errback(reason)

    def _fail(self, code: Optional[int]) -> None:
        self._close()
        if code == errno.ECONNREFUSED:
            error: Exception = ProbeError("port unreachable")
        else:
            error = ProbeError(os.strerror(code) if code else "socket error")
        self.result.errback(error)

    def _close(self) -> None:
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def probe_udp(reactor: Any, origin: Origin, port: int, monitor: Monitor) -> Deferred:
    """
    Send C{send}; the reply must match C{expect} or C{expect_regex}.
    """

    def go(address: str) -> Deferred:
        answer = _Answer(monitor.expect, monitor.expect_regex)
        return _Datagram(reactor, address, port, monitor.send or b"", answer).result

    if isIPAddress(origin.address) or isIPv6Address(origin.address):
        return go(origin.address)
    return reactor.resolve(origin.address).addCallback(go)


def _codes(expected: str) -> Callable[[int], bool]:
    singles = set()
    hundreds = set()
    for part in expected.split(","):
        part = part.strip()
        if part.endswith("xx"):
            hundreds.add(int(part[0]))
        else:
            singles.add(int(part))
    return lambda code: code in singles or code // 100 in hundreds


def probe_http(reactor: Any, origin: Origin, port: int, monitor: Monitor) -> Deferred:
    """
    An HTTP(S) request through treq: the status must be one of
    C{expected_codes}, the body must contain C{expected_body} (any case).
    """
    import treq
    from twisted.web.client import Agent, HTTPConnectionPool

    host = origin.address
    if isIPv6Address(host):
        host = f"[{host}]"
    url = f"{monitor.type}://{host}:{port}{monitor.path}"
    if monitor.type == "https":
        policy = _tls_creator(monitor, _host_header(monitor) or origin.address)
        if not monitor.allow_insecure:
            policy = _FixedPolicy(policy)
        agent = Agent(reactor, contextFactory=policy, pool=HTTPConnectionPool(reactor, persistent=False))
    else:
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
    client = treq.client.HTTPClient(agent)
    headers: Dict[Any, Any] = {name: list(values) for name, values in monitor.header}
    headers.setdefault("User-Agent", ["spectrum-health"])
    accept = _codes(monitor.expected_codes)
    d = client.request(monitor.method, url, headers=headers)

    def got(response: Any) -> Any:
        if monitor.method == "HEAD" or (monitor.expected_body is None and not accept(response.code)):
            # Nothing more to learn: do not wait for a body.
            check(response, b"")
            response.deliverBody(Protocol())
            return f"HTTP {response.code}"
        chunks: List[bytes] = []
        size = [0]

        def collect(data: bytes) -> None:
            if size[0] < MAX_ANSWER:
                chunks.append(data)
                size[0] += len(data)

        return treq.collect(response, collect).addCallback(lambda _: check(response, b"".join(chunks)))

    def check(response: Any, body: bytes) -> str:
        if not accept(response.code):
            raise ProbeError(f"HTTP {response.code}, expected {monitor.expected_codes}")
        if monitor.expected_body is not None and monitor.method != "HEAD":
            if monitor.expected_body.lower() not in body.decode("utf-8", "replace").lower():
                raise ProbeError(f"HTTP {response.code}, body lacks {monitor.expected_body!r}")
        return f"HTTP {response.code}"

    return d.addCallback(got)


@implementer(IPolicyForHTTPS)
class _FixedPolicy:
    """
    An HTTPS policy that uses one client TLS options object (verifying the
    configured name) whatever the URL's host.
    """

    def __init__(self, options: Any) -> None:
        self.options = options

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.options


PROBES: Dict[str, Probe] = {
    "tcp": probe_tcp,
    "tls": probe_tls,
    "http": probe_http,
    "https": probe_http,
    "smtp": probe_smtp,
    "udp": probe_udp,
}
