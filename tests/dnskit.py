"""
A name server for tests: a real Twisted Names server in its own process on
a free UDP port, answering from a small zone given as JSON, and writing
every question it gets to a log file.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

from conftest import free_port

SERVER = r"""
import json, sys
from twisted.internet import defer, reactor
from twisted.names import dns, error, server

port, zone, log = int(sys.argv[1]), json.loads(sys.argv[2]), open(sys.argv[3], "a", buffering=1)

class Zone:
    def query(self, query, timeout=None):
        name = query.name.name.decode()
        kind = dns.QUERY_TYPES.get(query.type, str(query.type))
        log.write(f"{kind} {name}\n")
        entry = zone.get(name)
        if entry is None:
            return defer.fail(error.DomainError(name))
        if entry == "silent":
            return defer.Deferred()
        ttl = entry.get("ttl", 60)
        records = {"A": dns.Record_A, "AAAA": dns.Record_AAAA}
        answers = [
            dns.RRHeader(name, query.type, dns.IN, ttl, records[kind](address, ttl), auth=True)
            for address in entry.get(kind, [])
        ]
        return defer.succeed((answers, [], []))

factory = server.DNSServerFactory(authorities=[Zone()])
factory.noisy = False
reactor.listenUDP(port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
print("ready", flush=True)
reactor.run()
"""


class NameServer:
    """
    The running server: its port and the questions it got so far.
    """

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log

    def questions(self, kind: str, name: str) -> int:
        """
        How many times it was asked for C{kind} records of C{name}.
        """
        lines: List[str] = self.log.read_text().splitlines() if self.log.exists() else []
        return lines.count(f"{kind} {name}")


@contextlib.contextmanager
def name_server(tmp_path: Any, zone: Dict[str, Any]) -> Iterator[NameServer]:
    """
    Serve C{zone}: each name maps to C{{"A": [...], "AAAA": [...], "ttl": N}},
    or to C{"silent"} for a name that is never answered; any other name does
    not exist (NXDOMAIN).
    """
    port = free_port(kind=socket.SOCK_DGRAM)
    log = Path(tmp_path) / f"dns-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), json.dumps(zone), str(log)], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == b"ready\n"
        yield NameServer(port, log)
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
