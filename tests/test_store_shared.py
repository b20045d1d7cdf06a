"""
The workers' shared store when the supervisor's end goes away and comes
back: calls fail at once meanwhile, and the worker resyncs after.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from spectrum.store.interface import RULES, StoreUnavailable
from spectrum.store.memory import MemoryStore
from spectrum.store.shared import SharedStore, StoreServerFactory

from rediskit import Recorder, until_available
from relaykit import sleep


@pytest_twisted.ensureDeferred
async def test_shared_store_outage_and_resync(tmp_path: Any) -> None:
    path = str(tmp_path / "store.sock")
    held = MemoryStore(node="supervisor", reactor=reactor)
    server = reactor.listenUNIX(path, StoreServerFactory(held))
    worker = SharedStore(path, node="w1", reactor=reactor)
    seen = Recorder()
    worker.listen(seen)
    try:
        worker.start()
        await until_available(worker)
        assert seen.resyncs == 1
        await held.put(RULES, "r1", {"mode": "block"})
        await seen.wait_for(1)

        await server.stopListening()
        for protocol in list(held._listeners):
            protocol.transport.loseConnection()
        deadline = time.monotonic() + 2
        while worker.available:
            assert time.monotonic() < deadline
            await sleep(0.01)
        with pytest.raises(StoreUnavailable):
            await worker.documents(RULES)

        server = reactor.listenUNIX(path, StoreServerFactory(held))
        await until_available(worker, timeout=5)
        assert seen.resyncs == 2
        assert await worker.documents(RULES) == {"r1": {"mode": "block"}}
    finally:
        await worker.stop()
        await server.stopListening()
