"""
Real clients and servers through C{twistd spectrum}: OpenSSH (a login, a
command, scp both ways) and Redis (redis-benchmark, redis-cli).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import subprocess
from typing import Any, Iterator, List, Tuple

import pytest

from conftest import free_port, require_program
from procs import STOPPED_BY_SIGTERM, Twistd, start_program, start_twistd, tcp_app, write_config

#: Per command run against a peer; each is well under this on loopback.
COMMAND_TIMEOUT = 60


def _records(log: str, app: str) -> List[Tuple[int, int]]:
    """
    (client_bytes, origin_bytes) of each closed connection of C{app} in a
    twistd log.
    """
    pattern = re.compile(rf"\] {re.escape(app)}: \S+ disconnect status 200 .* client_bytes (\d+) origin_bytes (\d+)")
    return [(int(m.group(1)), int(m.group(2))) for m in pattern.finditer(log)]


def _proxy(tmp_path: Any, name: str, origin_port: int) -> Tuple[Twistd, int]:
    edge = free_port()
    path = write_config(tmp_path / f"{name}.json", {"apps": [tcp_app(name, edge, [origin_port])]})
    return start_twistd(path, tmp_path / f"twistd-{name}.log", [edge]), edge


def _stop_proxy(proxy: Twistd) -> None:
    status = proxy.stop()
    assert status == STOPPED_BY_SIGTERM, proxy.log()
    assert "Traceback" not in proxy.log()


# SSH ----------------------------------------------------------------------


class SSH:
    """
    A real sshd on a free loopback port that lets the current user in with
    a generated key, and the client command line that uses that key.
    """

    def __init__(self, tmp_path: Any) -> None:
        sshd = require_program("sshd")
        keygen = require_program("ssh-keygen")
        self.ssh = require_program("ssh")
        self.scp = require_program("scp")
        self.user = getpass.getuser()
        self.home = tmp_path
        host_key = tmp_path / "host_ed25519"
        self.key = tmp_path / "user_ed25519"
        for key in (host_key, self.key):
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "spectrum-test", "-f", str(key)],
                check=True,
                timeout=COMMAND_TIMEOUT,
            )
        authorized = tmp_path / "authorized_keys"
        authorized.write_bytes((tmp_path / "user_ed25519.pub").read_bytes())
        self.port = free_port()
        config = tmp_path / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {host_key}",
                    f"PidFile {tmp_path / 'sshd.pid'}",
                    "PermitRootLogin yes",
                    f"AuthorizedKeysFile {authorized}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    # scp speaks SFTP by default since OpenSSH 9.0.
                    "Subsystem sftp internal-sftp",
                    "LogLevel VERBOSE",
                ]
            )
            + "\n"
        )
        # The client's own files, so nothing depends on (or writes to) the
        # user's ~/.ssh or a shared /dev/null.
        self.client_config = tmp_path / "ssh_config"
        self.client_config.write_text("")
        self.known_hosts = tmp_path / "known_hosts"
        if os.geteuid() == 0:
            # sshd's privilege separation directory; Debian's package makes
            # it at boot, which a container never had.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.server = start_program([sshd, "-D", "-e", "-f", str(config)], tmp_path / "sshd.log", self.port)

    def options(self) -> List[str]:
        return [
            "-F",
            str(self.client_config),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "LogLevel=ERROR",
        ]

    def run(self, port: int, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.ssh, *self.options(), "-p", str(port), f"{self.user}@127.0.0.1", command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
        )

    def copy(self, port: int, source: str, target: str, *flags: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.scp, *flags, *self.options(), "-P", str(port), source, target],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
        )

    def remote(self, path: Any) -> str:
        return f"{self.user}@127.0.0.1:{path}"

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def ssh(tmp_path: Any) -> Iterator[SSH]:
    server = SSH(tmp_path)
    yield server
    server.stop()


def test_ssh_login_and_command_through_the_proxy(tmp_path: Any, ssh: SSH) -> None:
    proxy, edge = _proxy(tmp_path, "ssh", ssh.port)
    try:
        done = ssh.run(edge, "echo through-spectrum; uname -s")
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().splitlines() == ["through-spectrum", os.uname().sysname]
        assert done.stderr == b""
        proxy.wait_for_log("ssh: 127.0.0.1:")
        # sshd saw the login come from the proxy's side of loopback.
        assert f"Accepted publickey for {ssh.user} from 127.0.0.1" in ssh.server.log()
    finally:
        _stop_proxy(proxy)
    # The one session (start_twistd's readiness probe sent nothing).
    assert [r for r in _records(proxy.log(), "ssh") if r[0]] and all(
        sent > 1000 and received > 1000 for sent, received in _records(proxy.log(), "ssh") if sent
    )


def _sha256(path: Any) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_scp_5mb_both_ways_through_the_proxy(tmp_path: Any, ssh: SSH) -> None:
    """
    scp up (SFTP) and down (the original scp protocol, C{-O}, which ends
    each file on the channel's EOF): the bytes arrive identical.
    """
    size = 5 * 1024 * 1024
    local = tmp_path / "five-mb"
    local.write_bytes(os.urandom(size))
    uploaded = tmp_path / "uploaded"
    downloaded = tmp_path / "downloaded"
    proxy, edge = _proxy(tmp_path, "ssh", ssh.port)
    try:
        done = ssh.copy(edge, str(local), ssh.remote(uploaded))
        assert done.returncode == 0, done.stderr
        done = ssh.copy(edge, ssh.remote(uploaded), str(downloaded), "-O")
        assert done.returncode == 0, done.stderr
        # The checksum the server side computes, read back through the proxy.
        done = ssh.run(edge, f"sha256sum {uploaded}")
        assert done.returncode == 0, done.stderr
        remote_sum = done.stdout.split()[0].decode()
    finally:
        _stop_proxy(proxy)
    assert remote_sum == _sha256(local)
    assert _sha256(uploaded) == _sha256(local)
    assert _sha256(downloaded) == _sha256(local)
    # Three sessions (start_twistd's readiness probe sent nothing); the
    # proxy counted the file each way, plus the SSH overhead.
    records = [r for r in _records(proxy.log(), "ssh") if r[0]]
    assert len(records) == 3, records
    assert [sent > size for sent, _ in records] == [True, False, False]
    assert [received > size for _, received in records] == [False, True, False]


# Redis --------------------------------------------------------------------


@pytest.fixture
def redis(tmp_path: Any) -> Iterator[Tuple[int, str]]:
    """
    A real redis-server on a free loopback port, without persistence.
    """
    server = require_program("redis-server")
    port = free_port()
    program = start_program(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
            "--daemonize",
            "no",
        ],
        tmp_path / "redis.log",
        port,
    )
    yield port, require_program("redis-cli")
    program.stop()


def _commandstats(cli: str, port: int) -> dict:
    done = subprocess.run(
        [cli, "-h", "127.0.0.1", "-p", str(port), "info", "commandstats"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_(\w+):calls=(\d+)", done.stdout)}


def test_redis_benchmark_through_the_proxy(tmp_path: Any, redis: Tuple[int, str]) -> None:
    origin_port, cli = redis
    benchmark = require_program("redis-benchmark")
    proxy, edge = _proxy(tmp_path, "redis", origin_port)
    try:
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(edge), "ping"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        assert (done.returncode, done.stdout, done.stderr) == (0, "PONG\n", "")
        before = _commandstats(cli, origin_port)
        requests = 20000
        done = subprocess.run(
            [benchmark, "-h", "127.0.0.1", "-p", str(edge), "-q", "-n", str(requests), "-c", "50"]
            + ["-t", "set,get,incr,lpush"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "error" not in output.lower(), output
        # -q prints one summary per test, after \r-separated progress.
        results = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r"(?:^|\r|\n)(SET|GET|INCR|LPUSH): ([\d.]+) requests per second", output)
        }
        assert set(results) == {"SET", "GET", "INCR", "LPUSH"}, output
        assert all(rate > 0 for rate in results.values())
        print("redis-benchmark through spectrum:", results)
        after = _commandstats(cli, origin_port)
    finally:
        _stop_proxy(proxy)
    # Every request reached the real server through the proxy.
    for command in ("set", "get", "incr", "lpush"):
        assert after.get(command, 0) - before.get(command, 0) >= requests, (command, before, after)
    assert "Traceback" not in proxy.log()


def test_program_helper_reports_a_server_that_cannot_start(tmp_path: Any) -> None:
    """
    L{start_program} fails with the program's own words instead of waiting
    out its timeout when the program exits at once.
    """
    server = require_program("redis-server")
    with pytest.raises(AssertionError, match="did not start"):
        start_program([server, "--port", "not-a-port"], tmp_path / "bad.log", free_port(), timeout=10)
