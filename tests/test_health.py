"""
Unit tests for L{spectrum.health}: the schedule, thresholds, timeouts,
retries and jitter on a L{task.Clock}; the probes' dialogues on memory
transports; passive health, drain and reload.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional

import attr
import pytest
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from spectrum.balancer import Balancer
from spectrum.config import ConfigError, parse
from spectrum.config_files import check_files
from spectrum.health import (
    JITTER,
    HealthChecker,
    ProbeError,
    SMTPProbe,
    StreamProbe,
    parse_smtp,
)
from spectrum.health.probes import _Answer
from spectrum.model import Monitor, Origin, Pool


class Probes:
    """
    A probe whose answers the test sets per origin: C{True} passes, C{False}
    fails, C{None} hangs, an exception is raised. Records every call.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.answers: Dict[str, Any] = {}
        self.calls: List[tuple] = []
        self.hanging: List[Deferred] = []

    def __call__(self, reactor: Any, origin: Origin, port: int, monitor: Monitor, address: str) -> Deferred:
        self.calls.append((self.clock.seconds(), origin.name, port))
        answer = self.answers.get(origin.name, True)
        if isinstance(answer, BaseException):
            raise answer
        if answer is True:
            return succeed("ok")
        if answer is False:
            return fail(ProbeError("connection refused"))
        d: Deferred = Deferred()
        self.hanging.append(d)
        return d

    def count(self, name: str) -> int:
        return sum(1 for call in self.calls if call[1] == name)


def make(
    monitor: Optional[Monitor] = None,
    origins: Any = ("a", "b"),
    seed: int = 1,
    when_all_down: str = "refuse",
) -> tuple:
    clock = Clock()
    probes = Probes(clock)
    if origins and isinstance(origins[0], str):
        origins = tuple(Origin(name=name, address="127.0.0.1", port=1000 + i) for i, name in enumerate(origins))
    pool = Pool(name="pool", origins=tuple(origins), monitor=monitor, when_all_down=when_all_down)
    balancer = Balancer(pool)
    checker = HealthChecker(balancer, pool, 9999, reactor=clock, rng=random.Random(seed), probe=probes)
    return clock, probes, balancer, checker


def run(clock: Clock, seconds: float, step: float = 0.05) -> None:
    for _ in range(int(round(seconds / step))):
        clock.advance(step)


def first_probe(clock: Clock) -> float:
    """
    Advance the clock exactly to the next timer (a probe's start); its time.
    """
    due = min(call.getTime() for call in clock.getDelayedCalls())
    clock.advance(due - clock.seconds())
    return clock.seconds()


def rounds(clock: Clock, probes: Probes, count: int = 1, step: float = 0.05) -> None:
    """
    Advance the clock until C{count} more probes have started and finished
    (at most a minute).
    """
    target = len(probes.calls) + count
    for _ in range(int(60 / step)):
        if len(probes.calls) >= target:
            break
        clock.advance(step)
    assert len(probes.calls) >= target


MON = Monitor(interval=10, timeout=2, retries=0, consecutive_up=3, consecutive_down=2)


def test_thresholds() -> None:
    """
    consecutive_down failures in a row mark an origin down, consecutive_up
    passes bring it back; each change is an event with its figures.
    """
    clock, probes, balancer, checker = make(MON, origins=("a",))
    checker.start()
    rounds(clock, probes)
    probes.answers["a"] = False
    rounds(clock, probes)
    assert balancer.is_up("a")  # one failure is not enough
    rounds(clock, probes)
    assert not balancer.is_up("a")
    (down,) = checker.history
    assert (down.origin, down.healthy, down.reason, down.error) == ("a", False, "2 probes failed", "connection refused")
    assert down.latency == 0 and down.time == probes.calls[-1][0]
    probes.answers["a"] = True
    rounds(clock, probes, 2)
    assert not balancer.is_up("a")  # two passes are not enough
    rounds(clock, probes)
    assert balancer.is_up("a")
    assert [(e.healthy, e.reason) for e in checker.history] == [(False, "2 probes failed"), (True, "3 probes passed")]
    (status,) = checker.status()
    assert status["healthy"] and status["consecutive_successes"] == 3 and status["probes"] == 6
    assert status["port"] == 1000


def test_other_origins_unaffected() -> None:
    clock, probes, balancer, checker = make(attr.evolve(MON, consecutive_down=1))
    probes.answers["a"] = False
    checker.start()
    rounds(clock, probes, 2)
    assert not balancer.is_up("a") and balancer.is_up("b")
    assert [o.name for o in balancer.candidates("c", 3)] == ["b"]


def test_timeout_is_a_failure_at_the_timeout() -> None:
    """
    A probe that never answers fails exactly at monitor.timeout and is
    cancelled; the next probe still comes.
    """
    monitor = attr.evolve(MON, consecutive_down=1)
    clock, probes, balancer, checker = make(monitor, origins=("a",))
    probes.answers["a"] = None
    checker.start()
    started = first_probe(clock)
    assert probes.calls == [(started, "a", 1000)]
    clock.advance(1.999)
    assert balancer.is_up("a")
    clock.advance(0.002)
    assert not balancer.is_up("a")
    (event,) = checker.history
    assert event.error == "timed out"
    assert event.latency == pytest.approx(2.0, abs=0.002)
    assert probes.hanging[0].called  # cancelled, not left behind
    run(clock, 10)
    assert probes.count("a") == 2


def test_retries_before_a_failure_counts() -> None:
    """
    retries: a failed probe is tried again at once, and only the last
    try's failure counts; a retry that passes is a pass.
    """
    monitor = attr.evolve(MON, retries=2, consecutive_down=1)
    clock, probes, balancer, checker = make(monitor, origins=("a",))
    probes.answers["a"] = None
    checker.start()
    start = first_probe(clock)
    clock.advance(2)
    clock.advance(2)
    clock.advance(1.999)
    assert len(probes.calls) == 3 and balancer.is_up("a")
    assert [round(t - start, 3) for t, _, _ in probes.calls] == [0, 2, 4]
    clock.advance(0.002)
    assert not balancer.is_up("a")
    assert checker.history[0].latency == pytest.approx(2.0, abs=0.002)

    # A failure then a pass in one round: the round passed.
    clock2, probes2, balancer2, checker2 = make(attr.evolve(MON, retries=1, consecutive_down=1), origins=("a",))
    answers = iter([False, True])
    probes2.answers["a"] = None
    original = probes2.__call__

    def flaky(reactor: Any, origin: Origin, port: int, monitor: Monitor, address: str) -> Deferred:
        probes2.answers["a"] = next(answers)
        return original(reactor, origin, port, monitor, address)

    checker2._probe = flaky
    checker2._probe_override = flaky
    checker2.start()
    run(clock2, 10)
    assert len(probes2.calls) == 2
    assert balancer2.is_up("a") and not checker2.history
    assert checker2.status()[0]["consecutive_successes"] == 1


def test_jitter_bounds_and_spread() -> None:
    """
    First probes fall anywhere in the first interval (not all in one tick);
    later ones come between (1 - JITTER) * interval and interval apart.
    """
    origins = tuple(Origin(name=f"o{i}", address="127.0.0.1", port=2000 + i) for i in range(200))
    clock, probes, balancer, checker = make(attr.evolve(MON, interval=1.0), origins=origins, seed=7)
    checker.start()
    run(clock, 10.5, step=0.01)
    by_origin: Dict[str, List[float]] = {}
    for t, name, _ in probes.calls:
        by_origin.setdefault(name, []).append(t)
    firsts = sorted(times[0] for times in by_origin.values())
    assert firsts[0] >= 0 and firsts[-1] <= 1.0 + 1e-9
    # Spread: in 100 slots of 10 ms, 200 first probes fill many of them.
    assert len({round(t, 2) for t in firsts}) > 60
    gaps = [b - a for times in by_origin.values() for a, b in zip(times, times[1:])]
    assert len(gaps) > 1500
    assert min(gaps) >= 1.0 - JITTER - 0.011
    assert max(gaps) <= 1.0 + 0.011
    assert max(gaps) - min(gaps) > 0.05  # jittered, not fixed


def test_a_raising_probe_does_not_stop_the_loop() -> None:
    """
    A probe that raises is a recorded failure; the schedule goes on, and
    nothing is logged as an unhandled error (the conftest fixture).
    """
    clock, probes, balancer, checker = make(attr.evolve(MON, consecutive_down=1), origins=("a",))
    probes.answers["a"] = RuntimeError("probe bug")
    checker.start()
    rounds(clock, probes, 5)
    assert probes.count("a") == 5
    assert not balancer.is_up("a")
    assert checker.status()[0]["error"] == "probe bug"
    assert checker.status()[0]["probes"] == 5
    probes.answers["a"] = True
    rounds(clock, probes, 2)
    assert not balancer.is_up("a")
    rounds(clock, probes)
    assert balancer.is_up("a")


def test_stop_cancels_and_start_again() -> None:
    clock, probes, balancer, checker = make(MON, origins=("a",))
    probes.answers["a"] = None
    checker.start()
    run(clock, 10)
    assert len(probes.hanging) == 1
    checker.stop()
    assert probes.hanging[0].called
    assert not clock.getDelayedCalls()
    run(clock, 50)
    assert len(probes.calls) == 1
    checker.start()
    run(clock, 10)
    assert len(probes.calls) == 2


def test_no_monitor_means_up_and_unprobed() -> None:
    clock, probes, balancer, checker = make(None)
    checker.start()
    run(clock, 100, step=1)
    assert probes.calls == []
    assert balancer.is_up("a") and balancer.is_up("b")
    assert [s["monitored"] for s in checker.status()] == [False, False]


def test_disabled_origins_are_not_probed() -> None:
    origins = (
        Origin(name="a", address="127.0.0.1", port=1),
        Origin(name="b", address="127.0.0.1", port=2, enabled=False),
    )
    clock, probes, balancer, checker = make(MON, origins=origins)
    checker.start()
    run(clock, 30, step=0.5)
    assert probes.count("a") == 3 and probes.count("b") == 0
    assert [o.name for o in balancer.candidates("x", 3)] == ["a"]


def test_monitor_port_overrides_the_origin_port() -> None:
    origins = (Origin(name="a", address="127.0.0.1", port=1), Origin(name="b", address="127.0.0.1"))
    clock, probes, balancer, checker = make(MON, origins=origins)
    checker.start()
    run(clock, 10)
    assert sorted(port for _, _, port in probes.calls) == [1, 9999]
    clock, probes, balancer, checker = make(attr.evolve(MON, port=6379), origins=origins)
    checker.start()
    run(clock, 10)
    assert sorted(port for _, _, port in probes.calls) == [6379, 6379]


def refused() -> Failure:
    return Failure(ierror.ConnectionRefusedError("Connection refused"))


def test_passive_failures_mark_down_until_a_probe_passes() -> None:
    """
    passive_down real connection failures in a row mark an origin down; a
    connection that worked breaks the run; one passing probe brings the
    origin back even when consecutive_up asks for more.
    """
    clock, probes, balancer, checker = make(attr.evolve(MON, passive_down=3))
    checker.start()
    a = checker.pool.origins[0]
    checker.passive_failure(a, refused())
    checker.passive_failure(a, refused())
    checker.passive_success(a)
    checker.passive_failure(a, refused())
    checker.passive_failure(a, refused())
    assert balancer.is_up("a")
    checker.passive_failure(a, refused())
    assert not balancer.is_up("a")
    (event,) = checker.history
    assert event.reason == "3 connections failed in a row"
    assert event.error == "Connection was refused by other side: Connection refused."
    # A cancelled connect (the client left) is not the origin's fault.
    checker.passive_failure(checker.pool.origins[1], Failure(ierror.UserError()))
    checker.passive_failure(checker.pool.origins[1], Failure(ierror.UserError()))
    checker.passive_failure(checker.pool.origins[1], Failure(ierror.UserError()))
    assert balancer.is_up("b")
    run(clock, 10)
    assert balancer.is_up("a")
    assert checker.history[-1].reason == "probe passed after failed connections"
    assert checker.status()[0]["passive_failures"] == 5


def test_passive_off_and_without_monitor() -> None:
    for monitor in (attr.evolve(MON, passive_down=0), None):
        clock, probes, balancer, checker = make(monitor)
        checker.start()
        for _ in range(10):
            checker.passive_failure(checker.pool.origins[0], refused())
        assert balancer.is_up("a")


def test_when_all_down() -> None:
    """
    refuse (the default): no candidates when every origin is down;
    try_all: every enabled, non-draining origin anyway.
    """
    for setting, expected in (("refuse", []), ("try_all", ["a", "b"])):
        clock, probes, balancer, checker = make(attr.evolve(MON, consecutive_down=1), when_all_down=setting)
        probes.answers.update(a=False, b=False)
        checker.start()
        run(clock, 10)
        assert not balancer.is_up("a") and not balancer.is_up("b")
        assert sorted(o.name for o in balancer.candidates("x", 3)) == expected


def test_drain_from_config_and_by_method() -> None:
    origins = (
        Origin(name="a", address="127.0.0.1", port=1, drain=True),
        Origin(name="b", address="127.0.0.1", port=2),
        Origin(name="c", address="127.0.0.1", port=3, weight=3),
    )
    clock, probes, balancer, checker = make(MON, origins=origins)
    assert balancer.is_draining("a")
    assert checker.drain("b") is True
    assert checker.drain("nope") is False
    picks = [balancer.candidates("x", 1)[0].name for _ in range(6)]
    assert picks == ["c"] * 6
    checker.drain("b", False)
    picks = [balancer.candidates("x", 1)[0].name for _ in range(8)]
    assert picks.count("c") == 6 and picks.count("b") == 2  # weights honoured
    # A reload that changes drain in the config applies it.
    checker.update(attr.evolve(checker.pool, origins=(attr.evolve(origins[0], drain=False),) + origins[1:]))
    assert not balancer.is_draining("a")


def test_reload_keeps_an_unchanged_pool() -> None:
    """
    An unchanged pool keeps its states and timers; a changed origin starts
    up again; a removed one stops being probed; removing the monitor marks
    everything up.
    """
    clock, probes, balancer, checker = make(attr.evolve(MON, consecutive_down=1))
    probes.answers.update(a=False, b=False)
    checker.start()
    run(clock, 10)
    assert not balancer.is_up("a") and not balancer.is_up("b")
    timers = sorted(c.getTime() for c in clock.getDelayedCalls())
    pool = checker.pool
    same = Pool(name=pool.name, origins=tuple(attr.evolve(o) for o in pool.origins), monitor=pool.monitor)
    balancer.update(same)
    checker.update(same)
    assert not balancer.is_up("a") and not balancer.is_up("b")
    assert sorted(c.getTime() for c in clock.getDelayedCalls()) == timers

    moved = attr.evolve(same, origins=(attr.evolve(same.origins[0], port=5000),))
    balancer.update(moved)
    checker.update(moved)
    assert balancer.is_up("a")
    assert checker.history[-1].reason == "origin changed"
    before = probes.count("b")
    run(clock, 30)
    assert probes.count("b") == before
    assert [p for _, n, p in probes.calls if n == "a"][-1] == 5000

    bare = attr.evolve(moved, monitor=None)
    balancer.update(bare)
    checker.update(bare)
    assert balancer.is_up("a")
    assert not clock.getDelayedCalls()


# The probes' dialogues, on memory transports


def test_stream_probe_send_expect() -> None:
    probe = StreamProbe(b"PING\r\n", _Answer(b"+PONG", None))
    transport = StringTransport()
    probe.makeConnection(transport)
    assert transport.value() == b"PING\r\n"
    assert not probe.result.called
    probe.dataReceived(b"+PO")
    assert not probe.result.called
    probe.dataReceived(b"NG\r\n")
    assert probe.result.result == "answer matched"
    assert transport.disconnecting


def test_stream_probe_regex_and_mismatch() -> None:
    probe = StreamProbe(None, _Answer(None, rb"^SSH-2\.0-"))
    probe.makeConnection(StringTransport())
    probe.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert probe.result.result == "answer matched"

    probe = StreamProbe(b"PING\r\n", _Answer(b"+PONG", None))
    probe.makeConnection(StringTransport())
    probe.dataReceived(b"-NOAUTH Authentication required.\r\n")
    probe.connectionLost(Failure(ierror.ConnectionDone()))
    errors: List[Failure] = []
    probe.result.addErrback(errors.append)
    assert str(errors[0].value) == "expected b'+PONG', got b'-NOAUTH Authentication required.\\r\\n'"


def test_stream_probe_tls_waits_for_the_handshake() -> None:
    probe = StreamProbe(None, _Answer(None, None), tls=True)
    probe.makeConnection(StringTransport())
    assert not probe.result.called
    probe.handshakeCompleted()
    assert probe.result.result == "handshake done"


def test_parse_smtp() -> None:
    assert parse_smtp(b"220 mx ready\r\n250-mx\r\n250-SIZE 1\r\n250 HELP\r\n22") == (
        [(220, "mx ready"), (250, "mx SIZE 1 HELP")],
        b"22",
    )
    with pytest.raises(ProbeError, match="not an SMTP reply"):
        parse_smtp(b"SSH-2.0-OpenSSH\r\n")


def test_smtp_probe_dialogue() -> None:
    probe = SMTPProbe()
    transport = StringTransport()
    probe.makeConnection(transport)
    probe.dataReceived(b"220 mx.example ESMTP\r\n")
    assert transport.value() == b"HELO spectrum-health\r\n"
    transport.clear()
    probe.dataReceived(b"250 mx.example\r\n")
    assert transport.value() == b"QUIT\r\n"
    probe.dataReceived(b"221 bye\r\n")
    assert probe.result.result == "221 bye"

    probe = SMTPProbe()
    transport = StringTransport()
    probe.makeConnection(transport)
    probe.dataReceived(b"554 no service\r\n")
    errors: List[Failure] = []
    probe.result.addErrback(errors.append)
    assert str(errors[0].value) == "expected 220, got 554 no service"


# Configuration


def app_with(monitor: Any, **pool: Any) -> dict:
    return {
        "apps": [
            {
                "name": "a",
                "protocol": "tcp/22",
                "origin_pool": {
                    "origins": [{"name": "x", "address": "127.0.0.1", "port": 2222}],
                    "monitor": monitor,
                    **pool,
                },
            }
        ]
    }


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as caught:
        # The config, then the files it names (the second pass, as a start does).
        check_files(parse(data))
    return str(caught.value)


def test_config_builds_the_monitor() -> None:
    cfg = parse(
        app_with(
            {
                "type": "https",
                "interval": 5,
                "timeout": 2,
                "retries": 1,
                "consecutive_up": 2,
                "consecutive_down": 3,
                "port": 8443,
                "path": "/health",
                "method": "HEAD",
                "expected_codes": "2xx,301",
                "expected_body": "ok",
                "header": {"Host": "app.example", "X-Probe": ["1", "2"]},
                "allow_insecure": True,
            },
            when_all_down="try_all",
        )
    )
    pool = cfg.apps[0].pool
    assert pool.when_all_down == "try_all"
    assert pool.monitor == Monitor(
        type="https",
        interval=5.0,
        timeout=2.0,
        retries=1,
        consecutive_up=2,
        consecutive_down=3,
        port=8443,
        path="/health",
        method="HEAD",
        expected_codes="2xx,301",
        expected_body="ok",
        header=(("Host", ("app.example",)), ("X-Probe", ("1", "2"))),
        allow_insecure=True,
    )
    redis = parse(app_with({"send": "PING\r\n", "expect": "+PONG"})).apps[0].pool.monitor
    assert (redis.type, redis.send, redis.expect) == ("tcp", b"PING\r\n", b"+PONG")
    assert parse(app_with({})).apps[0].pool.monitor == Monitor()


@pytest.mark.parametrize(
    "monitor, message",
    [
        (
            {"type": "icmp"},
            ".type: expected one of 'tcp', 'tls', 'http', 'https', 'smtp', 'udp'; got 'icmp'",
        ),
        ({"interval": 0}, ".interval: must be more than 0, got 0"),
        ({"interval": 5, "timeout": 10}, ".timeout: 10 is longer than interval 5"),
        ({"consecutive_down": 0}, ".consecutive_down: must be at least 1, got 0"),
        ({"retries": -1}, ".retries: must be at least 0, got -1"),
        (
            {"type": "tcp", "path": "/"},
            ".path: does not apply to a tcp monitor (only to http, https)",
        ),
        (
            {"type": "http", "send": "x"},
            ".send: does not apply to a http monitor (only to tcp, tls, udp)",
        ),
        (
            {"type": "http", "expected_codes": "20"},
            '.expected_codes: expected a code like "200" or "2xx" (comma-separated for several), got \'20\'',
        ),
        (
            {"type": "http", "path": "health"},
            ".path: expected a path starting with '/', got 'health'",
        ),
        (
            {"expect": "a", "expect_regex": "b"},
            ".expect_regex: give only one of expect, expect_regex",
        ),
        (
            {"expect_regex": "("},
            ".expect_regex: not a valid regular expression: missing ), unterminated subpattern at position 0",
        ),
        (
            {"type": "udp", "send": "x"},
            ": a udp monitor needs send, and expect or expect_regex",
        ),
        (
            {"type": "tls", "ca": "/nonexistent.pem"},
            ".ca: '/nonexistent.pem' is not a readable file",
        ),
        ({"intervall": 5}, ": unknown key 'intervall' (did you mean 'interval'?)"),
        (
            {"type": "http", "header": {"Host": 1}},
            ".header.Host: expected a header value or a list of them, got 1",
        ),
    ],
)
def test_config_bad_monitor(monitor: dict, message: str) -> None:
    assert config_error(app_with(monitor)) == "apps[0].origin_pool.monitor" + message


def test_config_bad_pool_settings() -> None:
    assert (
        config_error(app_with({}, when_all_down="fail_open"))
        == "apps[0].origin_pool.when_all_down: expected one of 'refuse', 'try_all'; got 'fail_open'"
    )
    data = app_with({})
    data["apps"][0]["origin_pool"]["origins"][0]["drain"] = "yes"
    assert config_error(data) == "apps[0].origin_pool.origins[0].drain: expected boolean, got string 'yes'"
    data["apps"][0]["origin_pool"]["origins"][0]["drain"] = True
    assert parse(data).apps[0].pool.origins[0].drain is True
