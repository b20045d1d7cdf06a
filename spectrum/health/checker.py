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

The probe kinds are in L{spectrum.health.probes}.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any, Deque, Dict, List, Optional

import attr
from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from spectrum.balancer import Balancer
from spectrum.health.probes import PROBES, Probe, describe, is_literal
from spectrum.model import Monitor, Origin, Pool
from spectrum.resolver import Resolver, shared_resolver

#: How much earlier than its interval a probe may start (a fraction).
JITTER = 0.1
#: Probes start on multiples of this many seconds (of the reactor's clock), so
#: the reactor wakes once for the few origins due in one tick rather than once
#: per origin; the jitter still spreads origins over an interval's ticks.
TICK = 0.01
#: State changes kept per checker.
HISTORY = 256


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
        resolver: Optional[Resolver] = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        #: origin names to addresses, as the relay resolves them
        self.resolver = resolver if resolver is not None else shared_resolver(reactor)
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
        origin = health.origin
        d: Deferred[Any]
        if is_literal(origin.address):
            try:
                d = probe(reactor, origin, health.port, monitor, origin.address)
            except Exception:
                # A probe that raises is a failed probe, not a dead loop.
                d = fail()
        else:
            # The first address, as the relay dials first (a raise fails the probe).
            d = self.resolver.resolve(origin.address, monitor.timeout)
            d.addCallback(lambda addresses: probe(reactor, origin, health.port, monitor, addresses[0]))
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
        timed_out = reason.check(ierror.TimeoutError)
        if not timed_out and reason.check(ierror.UserError, ierror.ConnectingCancelledError, CancelledError):
            # The client left while we were connecting: not the origin's fault
            # (a connect timeout is a UserError too, and is the origin's).
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
