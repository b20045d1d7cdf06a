"""
An example of C{examples/} run as an operator would run it, with only its
ports moved to free ones and its certificate given: C{examples/mqtt.yaml}
in front of a real Mosquitto, with the real clients.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Dict, List

import yaml

from conftest import free_port, require_program
from procs import ROOT, Program, run, spectrum_cli, start_program, start_twistd, write_config
from tlskit import MKCERTS


def _moved(example: str, ports: Dict[str, int], origin: str) -> Dict[str, Any]:
    """
    The example's document with each app's edge port moved (C{ports}: app
    name -> port) and its origin replaced by C{origin}.
    """
    data: Dict[str, Any] = yaml.safe_load(Path(ROOT, "examples", example).read_text())
    for app in data["apps"]:
        kind = app["protocol"].split("/")[0]
        app["protocol"] = f"{kind}/{ports[app['name']]}"
        app["origin_direct"] = [f"{kind}://{origin}"]
    return data


def test_the_mqtt_example_relays_between_real_mosquitto_clients(tmp_path: Any) -> None:
    """
    A message published in plaintext through the LAN app (admitted from
    this host by the example's rules) reaches a subscriber that came in
    over TLS through the MQTTS app; plaintext MQTT to the MQTTS app gets
    nowhere.
    """
    mosquitto = require_program("mosquitto")
    require_program("mosquitto_pub")
    require_program("mosquitto_sub")
    require_program("openssl")
    subprocess.run([MKCERTS, "-d", str(tmp_path), "server", "localhost", "127.0.0.1"], check=True, capture_output=True)
    broker_port, tls_port, lan_port = free_port(), free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    data = _moved("mqtt.yaml", {"mqtts": tls_port, "mqtt-lan": lan_port}, f"127.0.0.1:{broker_port}")
    data["certificates"] = [{"certificate": "localhost.crt", "private_key": "localhost.key"}]
    path = write_config(tmp_path / "mqtt.json", data)
    done = run([*spectrum_cli(), "check", path])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"spectrum: {path}: ok: 2 apps, 2 edge ports (2 TCP, 0 UDP), 3 access rules\n"

    broker: Program = start_program([mosquitto, "-c", str(conf)], tmp_path / "mosquitto.log", broker_port)
    proxy = start_twistd(path, tmp_path / "twistd.log", [tls_port, lan_port])
    try:
        lan = ["-h", "127.0.0.1", "-p", str(lan_port)]
        tls = ["-h", "127.0.0.1", "-p", str(tls_port), "--cafile", str(tmp_path / "ca.crt")]

        def client(*argv: str) -> subprocess.CompletedProcess:
            return subprocess.run(list(argv), capture_output=True, text=True, timeout=30)

        # Retained, so the subscriber gets it whenever it subscribes.
        done = client("mosquitto_pub", *lan, "-t", "sensors/t1", "-m", "21.5", "-r")
        assert done.returncode == 0, done.stderr
        done = client("mosquitto_sub", *tls, "-t", "sensors/#", "-C", "1", "-W", "10")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "21.5\n"
        # The MQTTS app really is TLS: a plaintext client gets nowhere.
        refused: List[str] = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(tls_port), "-t", "x", "-m", "y"]
        assert client(*refused).returncode != 0
    finally:
        proxy.stop()
        broker.stop()
    assert "Traceback" not in proxy.log()
