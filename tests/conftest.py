"""
Shared fixtures: a test fails if anything logged an unhandled error, and
programs the tests need fail the run in CI rather than skip it.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Iterator, List

import pytest
from twisted.logger import LogLevel, globalLogPublisher

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The suite tests the userspace admission path unless a test asks for the
# kernel filter (kernel_filter: on, tests/test_kernel.py): with `auto` (the
# default) a blocked client's SYN would be dropped in the kernel instead of
# refused after accept. Inherited by every twistd the tests start.
os.environ["SPECTRUM_KERNEL_FILTER"] = "off"


def require_program(name: str) -> str:
    """
    The path of program C{name}; skip without it, but fail in CI, where
    C{.ci/run} installs it.
    """
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
        None,
    )
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(message + " (CI must install it: see .ci/run)")
        pytest.skip(message)
    return path


#: Test ports come from below the kernel's ephemeral range (32768 and up on
#: Linux), so the outgoing connections of a busy test run cannot take a port
#: between the moment a test picks it and the moment it binds it.
TEST_PORTS = (10000, 32000)


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """
    A port that was free a moment ago, outside the ephemeral range.
    """
    import random

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(*TEST_PORTS)
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def free_port_range(count: int, host: str = "127.0.0.1") -> int:
    """
    The first of C{count} consecutive ports that were all free a moment ago.
    """
    import random

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(TEST_PORTS[0], TEST_PORTS[1] - count)
        socks: List[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


@pytest.fixture(autouse=True)
def no_logged_errors() -> Iterator[List[dict]]:
    """
    Fail any test during which something logged a critical error or an
    unhandled failure (an exception nobody handled in a callback).
    """
    errors: List[dict] = []

    def observer(event: dict) -> None:
        if event.get("log_level") is LogLevel.critical or (
            "log_failure" in event and event.get("log_level") in (LogLevel.error, LogLevel.critical)
        ):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield errors
    finally:
        globalLogPublisher.removeObserver(observer)
    if errors:
        from twisted.logger import formatEvent

        lines = []
        for event in errors:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            lines.append(text)
        pytest.fail("errors were logged:\n" + "\n".join(lines))
