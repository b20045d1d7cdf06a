"""
Direct writes on the normal relay path (spectrum.proxy.direct): a chunk goes
straight to the other leg's socket when nothing waits in its buffer, and the
rest keeps Twisted's buffering, order and backpressure.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from spectrum.model import Origin
from spectrum.proxy import splice

from relaykit import OriginFactory, Proxy, connect_client, listen_origin, make_app, sha, sleep


def origin_at(port: int) -> Origin:
    return Origin(name="o", address="127.0.0.1", port=port)


def edge_protocols(proxy: Proxy) -> list:
    # Each open connection's relay: the leg that holds it now.
    return [c.leg for runtime in proxy.service.all_runtimes() for c in runtime.connections if c.leg is not None]


@pytest.fixture(autouse=True)
def normal_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice, "ENABLED", False)


@pytest_twisted.ensureDeferred
async def test_chunk_leaves_without_a_loop_round() -> None:
    origin = OriginFactory(echo=False)
    port = listen_origin(origin)
    proxy = Proxy(make_app("direct", [origin_at(port.getHost().port)]))
    try:
        client = await connect_client(proxy.port())
        client.transport.write(b"first")
        await sleep(0.2)
        [edge] = edge_protocols(proxy)
        # As a read from the client would: the bytes are in the origin's
        # socket before this returns, none wait in the proxy.
        edge.dataReceived(b"x" * 1000)
        assert edge.buffered() == 0
        await sleep(0.2)
        assert bytes(origin.connections[0].received) == b"first" + b"x" * 1000
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_full_socket_keeps_order_and_pauses_the_reader() -> None:
    origin = OriginFactory(echo=False)
    port = listen_origin(origin)
    proxy = Proxy(make_app("direct", [origin_at(port.getHost().port)]))
    try:
        client = await connect_client(proxy.port())
        await sleep(0.2)
        origin_side = origin.connections[0]
        origin_side.transport.pauseProducing()
        payload = bytes(range(256)) * (32 * 1024)  # 8 MiB, position-dependent
        client.transport.write(payload)
        await sleep(0.5)
        [edge] = edge_protocols(proxy)
        # The origin's socket filled: what it did not take waits in the
        # buffer (bounded), and the client leg stopped reading.
        assert 0 < edge.buffered() <= 256 * 1024
        assert edge.received < len(payload)
        origin_side.transport.resumeProducing()
        client.transport.loseWriteConnection()
        for _ in range(100):
            if len(origin_side.received) == len(payload):
                break
            await sleep(0.05)
        assert sha(bytes(origin_side.received)) == sha(payload)
        await sleep(0.2)
        event = proxy.events[-1][1]
        assert event["ClientBytes"] == len(payload)
    finally:
        await proxy.stop()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_reads_switch_between_scratch_and_bulk_and_keep_every_byte(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small writes are read into the shared buffer and copied out; a burst
    # that fills reads moves the transport to plain recv(), and small ones
    # move it back. Bytes stay in order both ways through all the switches.
    from spectrum.proxy import scratch

    origin = OriginFactory()
    port = listen_origin(origin)
    proxy = Proxy(make_app("direct", [origin_at(port.getHost().port)]))
    try:
        client = await connect_client(proxy.port())
        await sleep(0.1)
        [edge] = edge_protocols(proxy)
        sent = bytearray()
        modes = []
        small = scratch.SMALL
        for round_ in range(3):
            for size in (1, 100, 513, 4000):
                chunk = bytes([(round_ * 16 + size) % 251]) * size
                client.transport.write(chunk)
                sent += chunk
                await sleep(0.02)
            modes.append(edge.transport._bulk)
            # While the burst is read, only an empty read would switch back,
            # so where the burst ends does not matter; small reads after it
            # do switch back (at the real threshold).
            monkeypatch.setattr(scratch, "SMALL", 1)
            burst = bytes(range(256)) * 4096  # 1 MiB at once
            client.transport.write(burst)
            sent += burst
            await sleep(0.3)
            monkeypatch.setattr(scratch, "SMALL", small)
            modes.append(edge.transport._bulk)
        client.transport.loseWriteConnection()
        received = await client.done
        assert sha(received) == sha(bytes(sent))
        assert modes == [False, True] * 3
        assert scratch.SIZE >= edge.transport.bufferSize
    finally:
        await proxy.stop()
        await port.stopListening()
