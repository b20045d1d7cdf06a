"""
The admin port against an attacker: repeated wrong credentials are slowed
down per source address (bounded memory), tokens never reach the log, and
static files cannot be escaped with C{..} however it is spelled.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Iterator, Tuple

import pytest
import requests
from twisted.internet.task import Clock

from spectrum.admin.auth import Backoff

from adminkit import EDIT, READ, document, echo_app
from conftest import free_port
from procs import ON_PYPY, NamedOrigin, Twistd, start_twistd, write_config

WRONG = "wrong-token-0123456789abcdef"


def test_backoff_doubles_after_the_free_failures_and_forgets_on_success() -> None:
    clock = Clock()
    backoff = Backoff(clock.seconds, free=3, base=1.0, ceiling=8.0)
    for _ in range(3):
        assert backoff.retry_after("192.0.2.1") == 0
        backoff.failed("192.0.2.1")
    assert backoff.retry_after("192.0.2.1") == 0
    backoff.failed("192.0.2.1")
    assert backoff.retry_after("192.0.2.1") == 1.0
    assert backoff.retry_after("192.0.2.2") == 0, "another address is not slowed down"
    clock.advance(1.0)
    assert backoff.retry_after("192.0.2.1") == 0
    waits = []
    for _ in range(5):
        backoff.failed("192.0.2.1")
        waits.append(backoff.retry_after("192.0.2.1"))
    assert waits == [2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.succeeded("192.0.2.1")
    assert backoff.retry_after("192.0.2.1") == 0


def test_backoff_memory_is_bounded() -> None:
    clock = Clock()
    backoff = Backoff(clock.seconds, free=0, max_sources=100)
    for i in range(10000):
        backoff.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(backoff) == 100
    # the most recent failures are the ones remembered
    assert backoff.retry_after("10.0.39.15") > 0
    assert backoff.retry_after("10.0.0.0") == 0


@pytest.fixture(scope="module")
def admin(tmp_path_factory: Any) -> Iterator[Tuple[str, Twistd]]:
    tmp = tmp_path_factory.mktemp("security")
    origin = NamedOrigin("origin")
    admin_port, edge = free_port(), free_port()
    data = document([echo_app("echo", edge, origin.port)])
    data["admin"]["listen"] = f"tcp:{admin_port}:interface=127.0.0.1"
    config = write_config(tmp / "spectrum.json", data)
    proxy = start_twistd(config, tmp / "twistd.log", ports=[admin_port, edge])
    try:
        yield f"http://127.0.0.1:{admin_port}", proxy
    finally:
        proxy.stop()
        origin.close()


def raw_get(url: str, target: str) -> bytes:
    """
    Send C{GET target} exactly as written (no client normalises the dots
    away) and return the whole answer.
    """
    host, port = url.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


@pytest.mark.parametrize(
    "target",
    [
        "/../../etc/passwd",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2f..%2fetc%2fpasswd",
        "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/static/....//....//etc/passwd",
        "/static/%252e%252e/%252e%252e/etc/passwd",
        "/static/..\\..\\..\\etc\\passwd",
        "/static/%00/../../etc/passwd",
        "/%2e%2e/%2e%2e/spectrum/admin/auth.py",
        "/static/../api.py",
        "/static/%2e%2e/api.py",
    ],
)
def test_static_files_cannot_be_escaped(admin: Tuple[str, Twistd], target: str) -> None:
    url, proxy = admin
    answer = raw_get(url, target)
    status = answer.split(b"\r\n", 1)[0]
    assert b"root:" not in answer
    assert b"def " not in answer and b"import " not in answer, "python source must not be served"
    assert status.split()[1] in (b"400", b"404"), status
    assert proxy.poll() is None


def test_static_files_are_still_served(admin: Tuple[str, Twistd]) -> None:
    url, _ = admin
    answer = raw_get(url, "/static/style.css")
    assert answer.startswith(b"HTTP/1.1 200")


def test_brute_force_is_slowed_down_and_tokens_never_logged(admin: Tuple[str, Twistd]) -> None:
    url, proxy = admin
    zones = url + "/client/v4/zones"
    before = len(proxy.log())
    assert requests.get(zones, headers={"Authorization": f"Bearer {EDIT}"}, timeout=5).status_code == 200
    assert requests.get(zones, headers={"Authorization": f"Bearer {READ}"}, timeout=5).status_code == 200
    statuses = []
    for i in range(23):
        answer = requests.get(zones, headers={"Authorization": f"Bearer {WRONG}{i}"}, timeout=5)
        statuses.append(answer.status_code)
    # twenty free failures, one more that starts the wait, then the source
    # is refused without a check
    assert statuses[:21] == [401] * 21
    assert statuses[21:] == [429, 429]
    refused = requests.get(zones, headers={"Authorization": f"Bearer {EDIT}"}, timeout=5)
    assert refused.status_code == 429, "even the right token waits: the guesser cannot tell"
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["success"] is False
    key = requests.get(zones, headers={"X-Auth-Email": "ops@example.com", "X-Auth-Key": WRONG}, timeout=5)
    assert key.status_code == 429
    proxy.wait_for_log("failed authentication from 127.0.0.1", after=before)
    log = proxy.log()
    for secret in (EDIT, READ, WRONG):
        assert secret not in log, f"a token ({secret[:6]}...) reached the log"
    # The refusal ends: after the wait the right token works again.
    import time

    time.sleep(float(refused.headers["Retry-After"]) + 0.1)
    assert requests.get(zones, headers={"Authorization": f"Bearer {EDIT}"}, timeout=5).status_code == 200


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


#: How far the proxy's RSS may grow while 64 MiB stream through and are
#: dropped (on PyPy the chunks float until its next collection: still well
#: under the body's size).
GARBAGE_BOUND = (32 if ON_PYPY else 8) * 1024 * 1024


@pytest.mark.parametrize("token", [None, EDIT])
@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_admin_bodies_are_neither_kept_nor_spooled(
    admin: Tuple[str, Twistd], token: Any, chunked: bool
) -> None:
    """
    64 MiB sent to the admin port, with or without a token, declared or
    chunked: the proxy keeps at most 1 MiB of it (no temporary file, no
    memory growth) and answers 401 or 413.
    """
    url, proxy = admin
    host, port = url.rsplit("/", 1)[-1].split(":")
    fds = len(os.listdir(f"/proc/{proxy.pid}/fd"))
    before = _rss(proxy.pid)
    size = 64 * 1024 * 1024
    head = "POST /client/v4/user/firewall/access_rules/rules HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    chunk = b"x" * 65536
    peak_fds = fds
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode())
        for i in range(size // len(chunk)):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            if i % 128 == 0:
                peak_fds = max(peak_fds, len(os.listdir(f"/proc/{proxy.pid}/fd")))
        if chunked:
            s.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = s.recv(65536)
            if not data:
                break
            answer += data
    status = answer.split(b"\r\n", 1)[0]
    assert status.split()[1] == (b"413" if token else b"401"), status
    assert peak_fds <= fds + 1, "the body was spooled to a file"
    grown = _rss(proxy.pid) - before
    assert grown < GARBAGE_BOUND, f"RSS grew {grown / 1024 / 1024:.1f} MiB"
    assert proxy.poll() is None
