"""
A reload never waits on the config file: a SIGHUP while the config path is
a FIFO nobody writes (or any file that is not a regular file) is refused
with one line, and relaying carries on meanwhile. Real C{twistd spectrum}.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from adminkit import document, echo_app
from conftest import free_port
from procs import Client, NamedOrigin, start_twistd, write_config


def test_a_reload_from_a_fifo_is_refused_and_relaying_carries_on(tmp_path: Any) -> None:
    edge_port = free_port()
    origin = NamedOrigin("o")
    data = document([echo_app("echo", edge_port, origin.port)])
    del data["admin"]
    config = write_config(tmp_path / "spectrum.json", data)
    proxy = start_twistd(config, tmp_path / "twistd.log", [edge_port])
    client = Client(edge_port, timeout=2.0)
    try:
        assert client.read_line() == b"o"
        assert client.exchange(b"before") == b"before"
        os.unlink(config)
        os.mkfifo(config)
        proxy.signal(signal.SIGHUP)
        line = proxy.wait_for_log("reload of")
        assert line.endswith(f"{config}: cannot read the file: not a regular file (a FIFO)"), line
        for n in range(5):
            started = time.monotonic()
            assert client.exchange(b"during %d" % n) == b"during %d" % n
            assert time.monotonic() - started < 1.0
    finally:
        client.close()
        try:
            # Let a reader stuck on the FIFO go, so the process can stop.
            os.close(os.open(config, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        proxy.stop()
        origin.close()
