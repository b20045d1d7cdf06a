"""
Heap trimming: freed memory goes back to the system, once a minute.
"""

from __future__ import annotations

import gc

import pytest
from twisted.internet.task import Clock

from spectrum import memory


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_trim_returns_fragmented_free_memory() -> None:
    if not memory.available():
        pytest.skip("no malloc_trim in this C library")
    memory.trim()
    # 40 MiB in 4 KiB..60 KiB blocks (below the mmap threshold, so on the
    # heap); freeing every other one leaves holes no top-of-heap trim frees.
    blocks = [bytearray(4096 + (i * 7919) % 57344) for i in range(1300)]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    held = _rss_kib()
    del blocks[::2]
    gc.collect()  # PyPy frees at its next collection, CPython at once
    before = _rss_kib()
    assert memory.trim() is True
    after = _rss_kib()
    freed = sum(4096 + (i * 7919) % 57344 for i in range(0, 1300, 2)) // 1024
    assert held - before < freed // 4, "glibc gave the holes back by itself"
    assert before - after > freed // 2, (before, after, freed)
    del blocks


def test_trimmer_trims_every_interval() -> None:
    clock = Clock()
    trimmer = memory.Trimmer(clock, interval=60)
    trimmer.startService()
    assert trimmer.trims == 1
    clock.advance(60)
    clock.advance(60)
    assert trimmer.trims == 3
    trimmer.stopService()
    clock.advance(600)
    assert trimmer.trims == 3


def test_the_service_trims(tmp_path) -> None:
    from spectrum import tap

    config = tmp_path / "spectrum.yaml"
    config.write_text("apps: []\n")
    options = tap.Options()
    options.parseOptions(["--config", str(config)])
    service = tap.makeService(options)
    assert [s for s in service if isinstance(s, memory.Trimmer)]
