"""
The Redis store when Redis goes away and comes back, over TLS, and its URLs.
"""

from __future__ import annotations

import subprocess
import time
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from spectrum.store.interface import RULES, StoreUnavailable
from spectrum.store.url import StoreURLError, parse_url

from conftest import free_port, require_program
from rediskit import Recorder, RedisServer, until_available
from relaykit import sleep


def test_url_forms() -> None:
    url = parse_url("redis://127.0.0.1:6380/2")
    assert (url.hosts, url.db, url.tls, url.prefix) == ((("127.0.0.1", 6380),), 2, False, "spectrum")
    url = parse_url("rediss://ops:s%40cret@cache.internal/1?ca=/etc/ca.pem&prefix=edge")
    assert (url.hosts, url.username, url.password, url.tls, url.ca, url.prefix) == (
        (("cache.internal", 6379),),
        "ops",
        "s@cret",
        True,
        "/etc/ca.pem",
        "edge",
    )
    url = parse_url("redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/3")
    assert url.hosts == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (url.service, url.db, url.password) == ("mymaster", 3, "pw")
    assert parse_url("redis://[::1]:7000").hosts == (("::1", 7000),)


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://x", "is not memory, redis://, rediss:// or redis+sentinel://"),
        ("redis://h:99999/0", "port '99999' is not a number from 1 to 65535"),
        ("redis://h/zero", "the database must be a number"),
        ("redis://a,b/0", "only redis+sentinel:// takes a list"),
        ("redis+sentinel://h:26379", "names no Sentinel service"),
        ("redis://h/0?pool=3", "unknown parameter 'pool'"),
        ("redis://h/0?ca=/x", "ca= needs rediss://"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StoreURLError) as e:
        parse_url(url)
    assert message in str(e.value)


@pytest_twisted.ensureDeferred
async def test_outage_fails_fast_logs_once_and_resyncs() -> None:
    from spectrum.store.redis import RedisStore

    server = RedisServer().start()
    logged: List[str] = []

    def observer(event: dict) -> None:
        if "store" in str(event.get("log_format", "")):
            from twisted.logger import formatEvent

            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    a = RedisStore(server.url("outage"), node="a", reactor=reactor)
    b = RedisStore(server.url("outage"), node="b", reactor=reactor)
    seen = Recorder()
    b.listen(seen)
    try:
        a.start()
        b.start()
        await until_available(a)
        await until_available(b)
        assert seen.resyncs == 1
        await a.put(RULES, "r1", {"mode": "block"})
        await seen.wait_for(1)

        server.kill()
        deadline = time.monotonic() + 3
        while a.available or b.available:
            assert time.monotonic() < deadline, "the outage went unnoticed"
            await sleep(0.01)
        # Calls fail at once while Redis is away: nothing queues.
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await a.put(RULES, "r2", {"mode": "block"})
        assert time.monotonic() - started < 0.1
        await sleep(1.0)  # several reconnect attempts
        outages = [line for line in logged if "connection lost" in line]
        assert len(outages) == 2, logged  # once per store, not per attempt

        server.start()  # same port, empty (no persistence)
        await until_available(a, timeout=10)
        await until_available(b, timeout=10)
        assert seen.resyncs == 2
        assert b.reconnects == 1
        assert any("reachable again" in line for line in logged)
        # Subscribed again: changes flow after the reconnect.
        await a.put(RULES, "r3", {"mode": "whitelist"})
        await seen.wait_for(2)
        assert seen.changes[-1] == (RULES, "r3", {"mode": "whitelist"})
    finally:
        globalLogPublisher.removeObserver(observer)
        await a.stop()
        await b.stop()
        server.kill()


@pytest_twisted.ensureDeferred
async def test_hung_redis_trips_the_reply_timeout() -> None:
    from spectrum.store.redis import RedisStore

    server = RedisServer().start()
    store = RedisStore(server.url(), node="a", reactor=reactor, reply_timeout=0.3, heartbeat=0.1)
    try:
        store.start()
        await until_available(store)
        assert server.process is not None
        server.process.send_signal(19)  # SIGSTOP: the socket stays open, nothing answers
        deadline = time.monotonic() + 2
        while store.available:
            assert time.monotonic() < deadline, "a Redis that stopped answering went unnoticed"
            await sleep(0.02)
        server.process.send_signal(18)  # SIGCONT
        await until_available(store, timeout=10)
        await store.put(RULES, "after", {"ok": True})
        assert await store.documents(RULES) == {"after": {"ok": True}}
    finally:
        await store.stop()
        server.kill()


@pytest_twisted.ensureDeferred
async def test_reconnects_after_a_stall_longer_than_the_reconnect_select() -> None:
    """
    Redis stalls long enough that the reconnection's own C{SELECT} times
    out (issue 16, fault 1: txredisapi then stopped trying for good). The
    store comes back once Redis answers again, resyncs its listeners, and
    a later empty restart of Redis is noticed and resynced too.
    """
    from spectrum.store.redis import RedisStore

    server = RedisServer(debug=True).start()
    store = RedisStore(server.url("stall"), node="a", reactor=reactor, reply_timeout=0.3, heartbeat=0.1)
    seen = Recorder()
    store.listen(seen)
    try:
        store.start()
        await until_available(store)
        assert seen.resyncs == 1
        # With a 0.3 s reply timeout, 3 s is several reconnect attempts whose
        # SELECT goes unanswered (8 s with the default 2 s).
        server.stall(3)
        stalled = time.monotonic()
        deadline = stalled + 2
        while store.available:
            assert time.monotonic() < deadline, "the stall went unnoticed"
            await sleep(0.02)
        await until_available(store, timeout=10)
        assert time.monotonic() - stalled >= 2.5
        assert seen.resyncs == 2
        await store.put(RULES, "after-stall", {"ok": True})
        assert await store.documents(RULES) == {"after-stall": {"ok": True}}

        server.kill()
        deadline = time.monotonic() + 3
        while store.available:
            assert time.monotonic() < deadline, "the kill went unnoticed"
            await sleep(0.02)
        server.start()  # empty
        await until_available(store, timeout=10)
        assert seen.resyncs == 3
        assert await store.documents(RULES) == {}
    finally:
        await store.stop()
        server.kill()


@pytest_twisted.ensureDeferred
async def test_a_connection_the_client_library_gave_up_on_is_started_again() -> None:
    """
    Whatever makes txredisapi stop retrying (here its own C{stopTrying},
    called past the store's guard), the heartbeat notices a connection
    that is neither up nor being retried and starts a fresh one.
    """
    import txredisapi

    from spectrum.store.redis import RedisStore

    server = RedisServer().start()
    store = RedisStore(server.url(), node="a", reactor=reactor, heartbeat=0.1)
    seen = Recorder()
    store.listen(seen)
    logged: List[str] = []

    def observer(event: dict) -> None:
        from twisted.logger import formatEvent

        if "store" in str(event.get("log_format", "")):
            logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        store.start()
        await until_available(store)
        command = store._factories[0]
        await txredisapi.RedisFactory.stopTrying(command)
        store._command.transport.abortConnection()
        deadline = time.monotonic() + 2
        while store.available:
            assert time.monotonic() < deadline, "the lost connection went unnoticed"
            await sleep(0.01)
        await until_available(store, timeout=5)
        assert seen.resyncs == 2
        assert store._factories[0] is not command
        assert any("stopped retrying; starting it again" in line for line in logged), logged
        await store.put(RULES, "again", {"ok": True})
        assert await store.documents(RULES) == {"again": {"ok": True}}
    finally:
        globalLogPublisher.removeObserver(observer)
        await store.stop()
        server.kill()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: Any) -> Any:
    openssl = require_program("openssl")
    d = tmp_path_factory.mktemp("redis-tls")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
         "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", str(d / "server.key"), "-out", str(d / "server.csr")],
        check=True, capture_output=True,
    )  # fmt: skip
    (d / "ext").write_text("subjectAltName=DNS:localhost\n")
    subprocess.run(
        [openssl, "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
         str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext"),
         "-out", str(d / "server.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return d


@pytest_twisted.ensureDeferred
async def test_rediss_verifies_the_server(tls_files: Any) -> None:
    from spectrum.store.redis import RedisStore

    program = require_program("redis-server")
    port = free_port()
    process = subprocess.Popen(
        [program, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
         "no", "--tls-cert-file", str(tls_files / "server.pem"), "--tls-key-file", str(tls_files / "server.key"),
         "--tls-ca-cert-file", str(tls_files / "ca.pem"), "--tls-auth-clients", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    good = RedisStore(f"rediss://localhost:{port}/0?ca={tls_files / 'ca.pem'}", node="a", reactor=reactor)
    # The system trust store does not know our CA: never available.
    bad = RedisStore(f"rediss://localhost:{port}/0", node="b", reactor=reactor)
    try:
        await sleep(0.3)
        assert process.poll() is None, "redis-server has no TLS support"
        good.start()
        bad.start()
        await until_available(good)
        await good.put(RULES, "tls", {"over": "tls"})
        assert await good.documents(RULES) == {"tls": {"over": "tls"}}
        await sleep(0.5)
        assert not bad.available
    finally:
        await good.stop()
        await bad.stop()
        process.kill()
        process.wait()


@pytest_twisted.ensureDeferred
async def test_sentinel_finds_the_master(tmp_path: Any) -> None:
    """
    C{redis+sentinel://}: the store asks a real Sentinel for the master.
    """
    from spectrum.store.redis import RedisStore

    program = require_program("redis-server")
    master = RedisServer().start()
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds mymaster 1000\n"
    )
    sentinel = subprocess.Popen(
        [program, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    a = RedisStore(f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0", node="a", reactor=reactor)
    b = RedisStore(f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0", node="b", reactor=reactor)
    seen = Recorder()
    b.listen(seen)
    try:
        await sleep(0.3)
        a.start()
        b.start()
        await until_available(a, timeout=10)
        await until_available(b, timeout=10)
        await a.put(RULES, "via-sentinel", {"mode": "block"})
        await seen.wait_for(1)
        # It really is the master's data.
        assert b"via-sentinel" in master.command("HKEYS", "spectrum:docs:rules")
    finally:
        await a.stop()
        await b.stop()
        sentinel.kill()
        sentinel.wait()
        master.kill()


@pytest_twisted.ensureDeferred
async def test_password(tmp_path: Any) -> None:
    from spectrum.store.redis import RedisStore

    program = require_program("redis-server")
    port = free_port()
    process = subprocess.Popen(
        [program, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", "s3cret-pass"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    logged: List[str] = []

    def observer(event: dict) -> None:
        from twisted.logger import formatEvent

        logged.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    good = RedisStore(f"redis://:s3cret-pass@127.0.0.1:{port}/0", node="a", reactor=reactor)
    bad = RedisStore(f"redis://:wrong@127.0.0.1:{port}/0", node="b", reactor=reactor)
    try:
        await sleep(0.3)
        good.start()
        bad.start()
        await until_available(good)
        await good.put(RULES, "auth", {"ok": True})
        await sleep(0.5)
        assert not bad.available
        refused = [line for line in logged if "connection not usable" in line]
        assert refused and all("127.0.0.1" in line and "wrong" not in line for line in refused)
        # The password never reaches the log.
        assert not any("s3cret-pass" in line for line in logged)
    finally:
        globalLogPublisher.removeObserver(observer)
        await good.stop()
        await bad.stop()
        process.kill()
        process.wait()
