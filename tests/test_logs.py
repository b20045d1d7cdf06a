"""
The log an operator reads: spectrum's own line when the store cannot be
reached, no Twisted factory start/stop lines, one form of "listening" line,
no C{origin None}, a refused reload in the main log with workers, and a
warning for an admin reachable beyond loopback without TLS.
"""

from __future__ import annotations

import re
import signal
import subprocess
from typing import Any, Dict, List

import yaml
from twisted.logger import formatEvent, globalLogPublisher

from spectrum.record import CLIENT_FILTERED, ConnectionRecord, Recorders
from spectrum.workers import TWISTD

from conftest import free_port
from procs import ROOT, NamedOrigin, environment, start_twistd, wait_until

LISTENING = re.compile(r"\] (\S+): listening on (\S+):(\d+) \((tcp|udp|http|https)\)$")


def _app(name: str, edge: int, origin: int, **extra: Any) -> Dict[str, Any]:
    app = {
        "name": name,
        "protocol": f"tcp/{edge}",
        "ips": ["127.0.0.1"],
        "origin_pool": {"origins": [{"name": f"{name}-origin", "address": "127.0.0.1", "port": origin}]},
    }
    app.update(extra)
    return app


def test_a_store_never_reached_has_its_own_line(tmp_path: Any) -> None:
    edge, admin, redis_port = free_port(), free_port(), free_port()
    origin = NamedOrigin("origin")
    config = tmp_path / "spectrum.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store": f"redis://127.0.0.1:{redis_port}",
                "apps": [_app("echo", edge, origin.port)],
                "admin": {"listen": f"tcp:{admin}:interface=127.0.0.1"},
            }
        )
    )
    proxy = start_twistd(str(config), tmp_path / "twistd.log", [edge, admin])
    try:
        line = proxy.wait_for_log(f"store redis://127.0.0.1:{redis_port}/0: cannot be reached", timeout=10)
        assert "[spectrum.store" in line and "retrying with backoff" in line
        log = proxy.log()
    finally:
        proxy.kill()
        origin.close()
    # The admin on loopback: no warning; both listening lines in one form.
    assert "without TLS" not in log
    listening = [LISTENING.search(line) for line in log.splitlines() if "listening on" in line]
    assert [m.group(1, 4) for m in listening if m] == [("echo", "tcp"), ("admin", "http")]
    assert len(listening) == 2


def test_workers_log_quietly_and_a_bad_reload_is_in_the_main_log(tmp_path: Any) -> None:
    """
    With C{--workers 2}, health probes over HTTP and the admin on every
    address: no factory start/stop lines, a warning about the admin, and a
    reload of a broken file refused in the supervisor's own log file.
    """
    edge, admin = free_port(), free_port()
    origin = NamedOrigin("origin")
    monitor = {"type": "http", "interval": 0.2, "timeout": 0.2}
    app = _app("web", edge, origin.port)
    app["origin_pool"]["monitor"] = monitor
    config = tmp_path / "spectrum.yaml"
    config.write_text(yaml.safe_dump({"apps": [app], "admin": {"listen": f"tcp:{admin}"}}))
    main_log = tmp_path / "main.log"
    command = [*TWISTD, "-n", "--pidfile=", f"--logfile={main_log}", "spectrum", "--config", str(config)]
    process = subprocess.Popen([*command, "--workers", "2"], cwd=ROOT, env=environment())
    worker_log = tmp_path / "main.log.w0"
    try:
        wait_until(lambda: worker_log.exists() and "probe" in worker_log.read_text(), 15, what="probes to run")
        wait_until(lambda: main_log.exists() and "all 2 workers started" in main_log.read_text(), 15)
        config.write_text("apps: [{name: broken}]\n")
        process.send_signal(signal.SIGHUP)
        refused = f"reload of {config} refused, old config kept: apps[0]: missing key 'protocol'"
        wait_until(lambda: refused in main_log.read_text(), 10, what="the refusal in the main log")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        origin.close()
    logs = {path.name: path.read_text() for path in tmp_path.glob("main.log*")}
    assert set(logs) == {"main.log", "main.log.w0", "main.log.w1"}
    for name, text in logs.items():
        assert "Starting factory" not in text and "Stopping factory" not in text, name
    warning = f"admin: 0.0.0.0:{admin} is reachable beyond this host without TLS"
    assert warning in logs["main.log.w0"]
    listening = [line for line in logs["main.log.w0"].splitlines() if "listening on" in line]
    assert [LISTENING.search(line).group(1, 4) for line in listening] == [("web", "tcp"), ("admin", "http")]


def test_a_refused_connection_logs_no_origin_none() -> None:
    seen: List[str] = []

    def observe(event: Dict[str, Any]) -> None:
        if event.get("log_namespace") == "spectrum.record.Recorders":
            seen.append(formatEvent(event))

    record = ConnectionRecord("game", "game", "192.0.2.1", 40000, "127.0.0.1", 27015, 0.0)
    record.status = 403
    globalLogPublisher.addObserver(observe)
    try:
        Recorders()(CLIENT_FILTERED, record)
    finally:
        globalLogPublisher.removeObserver(observe)
    (line,) = seen
    assert " origin - " in line and "None" not in line
