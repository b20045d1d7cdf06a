"""
C{/metrics} on the admin listener of a real C{twistd spectrum}, fetched with
the real curl and read with prometheus_client's own parser; the event log
the same process wrote agrees.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Dict, Tuple

import pytest_twisted
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.internet.utils import getProcessOutputAndValue

from spectrum import __version__

from conftest import free_port, require_program
from edgekit import exchange, wait_until
from relaykit import OriginFactory, listen_origin, sleep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREETING = b"+OK origin\r\n"
# twistd itself (`python -m twisted` is the newer `twist`, without -n or --pidfile).
TWISTD = 'import sys; from twisted.scripts.twistd import run; sys.argv[0] = "twistd"; run()'


class Twistd(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.ended.callback((reason.value.exitCode, reason.value.signal))


Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


async def scrape(curl: str, url: str) -> Tuple[int, Samples]:
    out, err, code = await getProcessOutputAndValue(curl, ["-sS", "--max-time", "5", "-f", url], env=os.environ)
    samples: Samples = {}
    if code == 0:
        for family in text_string_to_metric_families(out.decode("utf-8")):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return code, samples


@pytest_twisted.ensureDeferred
async def test_curl_metrics_from_twistd(tmp_path) -> None:
    curl = require_program("curl")
    origin = OriginFactory(greeting=GREETING)
    listening = listen_origin(origin)
    origin_port = listening.getHost().port
    edge_port, admin_port = free_port(), free_port()
    config = {
        "apps": [
            {
                "name": "mail",
                "protocol": f"tcp/{edge_port}",
                "ips": ["127.0.0.1"],
                "origin_direct": [f"tcp://127.0.0.1:{origin_port}"],
                "limits": {"per_ip_connections": 10, "per_ip_rate": 100},
            }
        ],
        "access_rules": [
            {"mode": "block", "configuration": {"target": "ip", "value": "127.0.0.11"}, "notes": "abuse"},
        ],
        "admin": {"listen": f"tcp:{admin_port}:interface=127.0.0.1"},
        "events": {"path": "events.jsonl", "flush_interval": 0.1},
    }
    path = tmp_path / "spectrum.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, PYTHONPATH=ROOT)
    twistd = Twistd()
    process = reactor.spawnProcess(
        twistd,
        sys.executable,
        [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "spectrum", "--config", str(path)],
        env=env,
        path=ROOT,
    )
    url = f"http://127.0.0.1:{admin_port}/metrics"
    origin_name = f"127.0.0.1:{origin_port}"
    try:
        for _ in range(200):
            code, _samples = await scrape(curl, url)
            if code == 0 or twistd.ended.called:
                break
            await sleep(0.05)
        assert code == 0, twistd.output.decode(errors="replace")

        payloads = [b"a" * 1000, b"b" * 70000]
        for payload in payloads:
            assert await exchange(edge_port, "127.0.0.9", payload) == GREETING + payload
        assert await exchange(edge_port, "127.0.0.11") == b""

        samples: Samples = {}

        async def settled() -> bool:
            nonlocal samples
            _, samples = await scrape(curl, url)
            return samples.get(_key("spectrum_events_total", origin_name, event="disconnect")) == 2

        for _ in range(100):
            if await settled():
                break
            await sleep(0.05)
        assert samples[_key("spectrum_events_total", origin_name, event="connect")] == 2
        assert samples[_key("spectrum_events_total", "", event="clientFiltered")] == 1
        assert samples[_key("spectrum_closed_total", "", status="403")] == 1
        assert samples[_key("spectrum_closed_total", origin_name, status="200")] == 2
        assert samples[_key("spectrum_bytes_ingress_total", origin_name)] == 71000
        assert samples[_key("spectrum_bytes_egress_total", origin_name)] == 71000 + 2 * len(GREETING)
        assert samples[_key("spectrum_connections", origin_name)] == 0
        assert samples[_key("spectrum_connection_duration_seconds_count", origin_name)] == 2
        assert samples[_key("spectrum_connection_duration_seconds_bucket", origin_name, le="+Inf")] == 2
        assert samples[("spectrum_client_ip_version_connections_total", (("app", "mail"), ("ip_version", "4")))] == 3
        assert samples[("spectrum_access_rules", ())] == 1
        assert origin.accepted == 2
        assert samples[("spectrum_store_up", ())] == 1
        assert samples[("spectrum_origin_up", (("app", "mail"), ("monitored", "false"), ("origin", origin_name)))] == 1
        (build,) = [labels for name, labels in samples if name == "spectrum_build_info"]
        assert dict(build)["version"] == __version__

        # Reloads, counted by result: a broken file is refused, the good one taken.
        good = path.read_text()
        for text, result in (("apps: [{name: broken}]\n", "refused"), (good, "ok")):
            path.write_text(text)
            process.signalProcess("HUP")
            for _ in range(100):
                _, samples = await scrape(curl, url)
                if samples.get(("spectrum_reloads_total", (("result", result),))) == 1:
                    break
                await sleep(0.05)
            assert samples.get(("spectrum_reloads_total", (("result", result),))) == 1, result
    finally:
        if not twistd.ended.called:
            process.signalProcess("TERM")
        exit_status = await twistd.ended
        await listening.stopListening()
    # twistd ends a SIGTERM'd run by re-raising the signal, after a clean stop.
    assert exit_status in ((0, None), (None, 15)), twistd.output.decode(errors="replace")
    assert b"Server Shut Down." in twistd.output

    # The process flushed its event log on the way out.
    await wait_until(lambda: (tmp_path / "events.jsonl").exists(), what="the event log")
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [line["Event"] for line in lines].count("disconnect") == 2
    assert sum(line["ClientBytes"] for line in lines if line["Event"] == "disconnect") == 71000
    (refused,) = [line for line in lines if line["Event"] == "clientFiltered"]
    assert (refused["ClientIP"], refused["Status"], refused["ClientMatchedIpFirewall"]) == (
        "127.0.0.11",
        403,
        "BLOCK_IP",
    )


def _key(name: str, origin: str, **labels: str) -> Tuple[str, Tuple[Tuple[str, str], ...]]:
    return name, tuple(sorted(dict(labels, app="mail", origin=origin).items()))


def test_admin_listen_failure_is_one_line() -> None:
    from twisted.web.resource import Resource

    from spectrum.admin.site import AdminListenError, AdminService
    from spectrum.model import AdminSettings

    taken = reactor.listenTCP(0, protocol.Factory(), interface="127.0.0.1")
    port = taken.getHost().port
    service = AdminService(AdminSettings(listen=f"tcp:{port}:interface=127.0.0.1"), Resource(), reactor)
    try:
        try:
            service.startService()
        except AdminListenError as e:
            text = str(e)
        else:
            raise AssertionError("bound a taken port")
        assert text.startswith(f"admin.listen: cannot listen on 'tcp:{port}:interface=127.0.0.1': ")
        assert "\n" not in text and "in use" in text
    finally:
        taken.stopListening()
