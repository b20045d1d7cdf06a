"""
The event log on a full disk: a real C{twistd spectrum} whose event log
lives on a tiny tmpfs the test mounts. Every line in the file is whole (a
write that does not fit is cut back to its last whole line), what could
not be written is counted (C{/metrics} C{spectrum_eventlog_dropped_total}
and a log line), and once there is room again the log carries on.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from typing import Any, Iterator

import pytest

from adminkit import document, echo_app
from conftest import IN_CI, free_port
from procs import NamedOrigin, greeting, start_twistd, wait_until, write_config


@pytest.fixture
def tiny_fs(tmp_path: Any) -> Iterator[Any]:
    """
    A 96 KiB tmpfs mounted at a fresh directory (root only: CI runs as root).
    """
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        message = f"cannot mount a tmpfs: {done.stderr.decode().strip()}"
        if IN_CI:
            pytest.fail(message + " (CI runs as root)")
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def dropped(admin_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("spectrum_eventlog_dropped_total "):
                return float(line.split()[1])
    raise AssertionError("no spectrum_eventlog_dropped_total in /metrics")


def test_a_full_disk_drops_whole_lines_and_counts_them(tmp_path: Any, tiny_fs: Any) -> None:
    # A filler takes a third of the disk, to be deleted once it is full.
    filler = tiny_fs / "filler"
    filler.write_bytes(b"\0" * 32768)
    events = tiny_fs / "events.jsonl"
    admin_port, edge_port = free_port(), free_port()
    origin = NamedOrigin("o")
    data = document([echo_app("echo", edge_port, origin.port)])
    data["admin"]["listen"] = f"tcp:{admin_port}:interface=127.0.0.1"
    data["events"] = {"path": str(events), "flush_interval": 0.05}
    config = write_config(tmp_path / "spectrum.json", data)
    proxy = start_twistd(config, tmp_path / "twistd.log", [admin_port, edge_port])
    try:
        # Connections until the disk is full and events are being dropped.
        def full() -> bool:
            for _ in range(5):
                assert greeting(edge_port) == b"o"
            return dropped(admin_port) > 0

        wait_until(full, timeout=30, interval=0.1, what="the event log to fill the disk")
        proxy.wait_for_log("events dropped")
        os.unlink(filler)
        size = events.stat().st_size
        wait_until(
            lambda: greeting(edge_port) == b"o" and "writing again" in proxy.log(),
            timeout=10,
            interval=0.1,
            what="the event log to carry on once there is room",
        )
        assert events.stat().st_size > size
    finally:
        proxy.stop()
        origin.close()
    text = events.read_bytes()
    assert text.endswith(b"\n")
    for line in text.splitlines():
        assert json.loads(line)["Event"] in ("connect", "disconnect"), line
