"""
Tests for L{spectrum.analytics} and L{spectrum.eventlog}: figures after a
known set of connections with known byte counts agree exactly with what was
sent and with the event log; percentiles stay within one histogram bucket;
per-minute buckets keep their window; the log rotates between lines.
"""

from __future__ import annotations

import json
import math
import os

import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock

from spectrum.analytics import BOUNDS, Analytics, Durations, bucket_index
from spectrum.eventlog import EventLog
from spectrum.firewall import make_rule
from spectrum.model import Config, EventLogSettings, GeoIPFiles, Origin
from spectrum.record import CONNECT, DISCONNECT, ConnectionRecord

from conftest import free_port
from edgekit import EdgeProxy, exchange, origin_at, start_client, wait_until
from geokit import write_country_db
from relaykit import OriginFactory, listen_origin, make_app, sleep

GREETING = b"hello from the origin\n"


def true_quantile(values: list, q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 200000, allow_nan=False), min_size=1, max_size=300))
def test_quantiles_in_the_true_values_bucket(values) -> None:
    durations = Durations()
    for value in values:
        durations.add(value)
    for q in (0.5, 0.9, 0.99):
        assert bucket_index(durations.quantile(q)) == bucket_index(true_quantile(values, q))
    assert durations.count == len(values)
    assert math.isclose(durations.mean, sum(values) / len(values), rel_tol=1e-9, abs_tol=1e-12)


def test_histogram_is_bounded() -> None:
    durations = Durations()
    for i in range(100000):
        durations.add(i * 0.37)
    assert len(durations.counts) == len(BOUNDS) + 1
    assert sum(durations.counts) == 100000


def record_at(clock: Clock, app: str = "a", ip: str = "192.0.2.1", origin: str = "o") -> ConnectionRecord:
    record = ConnectionRecord(app, app, ip, 40000, "127.0.0.1", 22, clock.seconds())
    record.origin_name = origin
    return record


def test_per_minute_buckets_keep_their_window() -> None:
    clock = Clock()
    analytics = Analytics(clock, window=3)
    for minute in range(6):
        clock.advance(60)
        for _ in range(minute + 1):
            record = record_at(clock)
            analytics(CONNECT, record)
            record.client_bytes, record.origin_bytes = 10, 20
            record.disconnect_time = clock.seconds()
            analytics(DISCONNECT, record)
    minutes = analytics.snapshot()["a"]["minutes"]
    # Only the last three minutes, oldest first, each with its own counts.
    assert [m["minute"] for m in minutes] == [240, 300, 360]
    assert [m["events"] for m in minutes] == [{"connect": n, "disconnect": n} for n in (4, 5, 6)]
    assert [m["bytes_ingress"] for m in minutes] == [40, 50, 60]
    # The totals are not windowed.
    assert analytics.snapshot()["a"]["total"]["events"] == {"connect": 21, "disconnect": 21}


def test_breakdowns_and_current() -> None:
    clock = Clock()
    analytics = Analytics(clock)
    open_records = []
    for ip, country in (("192.0.2.1", "DE"), ("2001:db8::1", "JP"), ("192.0.2.2", None)):
        record = record_at(clock, ip=ip)
        if country:
            record.extra["ClientCountry"] = country
        analytics(CONNECT, record)
        open_records.append(record)
    totals = analytics.snapshot()["a"]["total"]
    assert totals["current"] == 3
    for record in open_records:
        record.disconnect_time = clock.seconds()
        analytics(DISCONNECT, record)
    snapshot = analytics.snapshot()["a"]
    assert snapshot["total"]["current"] == 0
    assert {c: v["events"] for c, v in snapshot["countries"].items()} == {
        "DE": {"disconnect": 1},
        "JP": {"disconnect": 1},
        "XX": {"disconnect": 1},
    }
    assert {v: c["events"]["disconnect"] for v, c in snapshot["ip_versions"].items()} == {4: 2, 6: 1}


def test_event_log_rotates_between_lines(tmp_path) -> None:
    clock = Clock()
    path = str(tmp_path / "events.jsonl")
    log = EventLog(EventLogSettings(path=path, max_bytes=4096, max_files=3, flush_interval=1.0), clock)
    log.startService()
    for i in range(200):
        record = record_at(clock, ip=f"192.0.2.{i % 250}")
        record.client_port = i
        log(CONNECT, record)
    # Nothing is written until the timer fires.
    assert os.path.getsize(path) == 0
    clock.advance(1.0)
    files = [path] + [f"{path}.{n}" for n in (1, 2, 3)]
    assert all(os.path.exists(f) for f in files) and not os.path.exists(f"{path}.4")
    ports = []
    for name in reversed(files):
        data = open(name, "rb").read()
        assert 0 < len(data) <= 4096 and data.endswith(b"\n")
        ports += [json.loads(line)["ClientPort"] for line in data.splitlines()]
    # The newest lines, in order, none lost between the files kept.
    assert ports == list(range(200 - len(ports), 200))
    log.stopService()
    # After the stop (a drain), events are written at once.
    log(CONNECT, record_at(clock))
    assert json.loads(open(path, "rb").read().splitlines()[-1])["Event"] == "connect"
    log.close()


@pytest_twisted.ensureDeferred
async def test_figures_and_event_log_agree_with_what_was_sent(tmp_path) -> None:
    country_db = write_country_db(str(tmp_path / "country.mmdb"), {"127.0.0.9/32": "DE"})
    events_path = str(tmp_path / "events.jsonl")
    origin = OriginFactory(greeting=GREETING)
    listening = listen_origin(origin)
    counted = make_app("counted", [origin_at(listening, "main")])
    dead = make_app("dead", [Origin(name="gone", address="127.0.0.1", port=free_port())])
    config = Config(
        apps=(counted, dead),
        access_rules=(make_rule("block", "ip", "127.0.0.11"),),
        geoip=GeoIPFiles(country_db=country_db),
        events=EventLogSettings(path=events_path, flush_interval=0.05),
    )
    proxy = EdgeProxy(config)
    port = proxy.port("counted")
    count = 40
    sent = {}

    async def one(i: int) -> None:
        client = start_client(port, "127.0.0.9" if i % 2 else "127.0.0.10")
        await client.ready
        payload = bytes([i]) * (1000 * i + 7)
        sent[client.transport.getHost().port] = payload
        client.transport.write(payload)
        # Durations spread from 0 to about 0.4 s.
        await sleep(0.01 * i)
        client.transport.loseWriteConnection()
        assert await client.done == GREETING + payload

    try:
        await defer.DeferredList([defer.ensureDeferred(one(i)) for i in range(count)], fireOnOneErrback=True)
        for _ in range(3):
            assert await exchange(port, "127.0.0.11") == b""
        for _ in range(2):
            assert await exchange(proxy.port("dead"), "127.0.0.9") == b""
        await wait_until(lambda: len(proxy.of_kind("disconnect")) == count, what="every disconnect")
        proxy.service.event_log.flush()
        lines = [json.loads(line) for line in open(events_path)]
    finally:
        await proxy.stop()
        await listening.stopListening()

    snapshot = proxy.service.analytics.snapshot()
    total = snapshot["counted"]["total"]
    ingress = sum(len(p) for p in sent.values())
    egress = sum(len(GREETING) + len(p) for p in sent.values())

    # The analytics, against what was sent.
    assert total["events"] == {"connect": count, "disconnect": count, "clientFiltered": 3}
    assert (total["bytes_ingress"], total["bytes_egress"], total["current"]) == (ingress, egress, 0)
    main = snapshot["counted"]["origins"]["main"]
    assert (main["bytes_ingress"], main["bytes_egress"], main["statuses"]) == (ingress, egress, {200: count})
    assert snapshot["counted"]["origins"][""]["statuses"] == {403: 3}
    assert snapshot["dead"]["total"]["events"] == {"originError": 2}
    assert snapshot["dead"]["total"]["statuses"] == {521: 2}
    countries = snapshot["counted"]["countries"]
    assert countries["DE"]["events"] == {"disconnect": count // 2}
    assert countries["XX"]["events"] == {"disconnect": count // 2, "clientFiltered": 3}
    assert countries["DE"]["bytes_ingress"] == sum(len(p) for p in sent.values() if p[0] % 2)
    assert snapshot["counted"]["ip_versions"][4]["events"] == {"disconnect": count, "clientFiltered": 3}
    minutes = snapshot["counted"]["minutes"]
    assert sum(m["bytes_ingress"] for m in minutes) == ingress
    assert sum(m["events"].get("disconnect", 0) for m in minutes) == count

    # The event log, line by line, against what was sent and the analytics.
    assert [line["Event"] for line in lines].count("connect") == count
    closes = [line for line in lines if line["Event"] == "disconnect"]
    assert len(closes) == count
    for line in closes:
        payload = sent[line["ClientPort"]]
        assert (line["ClientBytes"], line["OriginBytes"], line["Status"]) == (
            len(payload),
            len(GREETING) + len(payload),
            200,
        )
        assert line["Application"] == "counted" and line["OriginIP"] == "127.0.0.1"
        assert line["ClientCountry"] == ("DE" if line["ClientIP"] == "127.0.0.9" else "XX")
    assert sum(line["ClientBytes"] for line in closes) == total["bytes_ingress"]
    assert sum(line["OriginBytes"] for line in closes) == total["bytes_egress"]
    filtered = [line for line in lines if line["Event"] == "clientFiltered"]
    assert [(f["ClientIP"], f["Status"], f["ClientMatchedIpFirewall"]) for f in filtered] == [
        ("127.0.0.11", 403, "BLOCK_IP")
    ] * 3
    errors = [line for line in lines if line["Event"] == "originError"]
    assert [(e["Application"], e["Status"]) for e in errors] == [("dead", 521)] * 2

    # Durations: the log's exact values against the histogram's estimates.
    durations = [line["DisconnectTimestamp"] - line["ConnectTimestamp"] for line in closes]
    summary = main["duration"]
    assert summary["count"] == count
    assert math.isclose(summary["avg"], sum(durations) / count, rel_tol=1e-9)
    assert max(durations) > 0.35
    for q, key in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
        assert abs(bucket_index(summary[key]) - bucket_index(true_quantile(durations, q))) <= 1
