"""
Locking an origin down to spectrum's addresses: C{egress} in the config,
C{GET /client/v4/ips} in Cloudflare's shape, and C{spectrum firewall}
rules applied in a network namespace, where they admit the edge and drop
another source.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from typing import Any, Iterator, List, Tuple

import pytest
import yaml

from spectrum.config import parse
from spectrum.egress import listing
from spectrum.model import Egress

from conftest import IN_CI, free_port, require_program
from procs import Client, run, spectrum_cli, start_twistd

TOKEN = "edit-token-0123456789abcdef"


def config_error(data: Any) -> str:
    from spectrum.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse(data)
    return str(caught.value)


def test_egress_config() -> None:
    config = parse({"egress": {"addresses": ["203.0.113.7", "2001:DB8::/64"]}})
    assert config.egress == Egress(networks=("203.0.113.7/32", "2001:db8::/64"), bind=False)
    assert config.egress.source_for(False) is None
    pinned = parse({"egress": {"addresses": ["127.0.0.2", "::1"], "bind": True}}).egress
    assert (pinned.source_for(False), pinned.source_for(True)) == ("127.0.0.2", "::1")
    assert config_error({"egress": {"addresses": ["nowhere"]}}) == (
        "egress.addresses[0]: 'nowhere' is not an address or a CIDR"
    )
    assert config_error({"egress": {"addresses": ["10.0.0.0/8"], "bind": True}}).startswith(
        "egress.addresses[0]: '10.0.0.0/8': with bind, give single addresses"
    )
    assert config_error({"egress": {"addresses": ["10.0.0.1", "10.0.0.2"], "bind": True}}) == (
        "egress.addresses[1]: with bind, one address per family (IPv4 is egress.addresses[0])"
    )
    assert config_error({"egress": {"bind": True}}).startswith("egress.bind: needs egress.addresses")


def test_listing_is_cloudflares_shape() -> None:
    shown = listing(["2001:db8::/64", "192.0.2.9/32", "192.0.2.9", "10.0.0.0/8"])
    assert shown["ipv4_cidrs"] == ["10.0.0.0/8", "192.0.2.9/32"]
    assert shown["ipv6_cidrs"] == ["2001:db8::/64"]
    assert shown["etag"] != listing(["10.0.0.0/8"])["etag"]


def _config(tmp_path: Any, admin_port: int, apps: List[Any], **extra: Any) -> str:
    data = {
        "apps": apps,
        "admin": {
            "listen": f"tcp:{admin_port}:interface=127.0.0.1",
            "tokens": [{"name": "ops", "token": TOKEN, "permissions": "edit"}],
        },
        **extra,
    }
    path = tmp_path / "spectrum.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def _app(edge_port: int, host: str, port: int) -> Any:
    return {
        "name": "origin",
        "protocol": f"tcp/{edge_port}",
        "ips": ["127.0.0.1"],
        "origin_direct": [f"tcp://{host}:{port}"],
    }


def test_bind_pins_the_source_of_origin_connections(tmp_path: Any) -> None:
    """
    With C{egress.bind}, the origin sees the connection come from the
    pinned address (127.0.0.2, not the 127.0.0.1 the route would pick), and
    C{/ips} lists it.
    """
    seen: List[str] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(10)
    admin_port, edge_port = free_port(), free_port()
    config = _config(
        tmp_path,
        admin_port,
        [_app(edge_port, "127.0.0.1", server.getsockname()[1])],
        egress={"addresses": ["127.0.0.2"], "bind": True},
    )
    proxy = start_twistd(config, tmp_path / "twistd.log", [admin_port, edge_port])
    try:
        client = Client(edge_port)
        conn, peer = server.accept()
        seen.append(peer[0])
        conn.close()
        client.close()
        shown = run(
            [
                *spectrum_cli(),
                "firewall",
                "iptables",
                "--port",
                "22",
                "--admin",
                f"http://127.0.0.1:{admin_port}",
                "--token",
                TOKEN,
            ]
        )
        assert shown.returncode == 0, shown.stderr
    finally:
        proxy.kill()
        server.close()
    assert seen == ["127.0.0.2"]
    assert "iptables -A SPECTRUM-ORIGIN -s 127.0.0.2/32 -j ACCEPT" in shown.stdout


# the namespace ------------------------------------------------------------------

ORIGIN_SCRIPT = textwrap.dedent(
    """
    import socket, sys
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((sys.argv[1], int(sys.argv[2])))
    server.listen(16)
    print("ready", flush=True)
    while True:
        conn, peer = server.accept()
        conn.sendall(("origin saw " + peer[0] + "\\n").encode())
        conn.close()
    """
)


def require_netns() -> None:
    require_program("ip")
    if os.geteuid() != 0:
        message = "network namespaces need root"
        if IN_CI:
            pytest.fail(message + " (CI runs as root)")
        pytest.skip(message)


def sh(*command: str) -> str:
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stderr}"
    return done.stdout


@pytest.fixture
def namespace() -> Iterator[Tuple[str, str, str, str]]:
    """
    A network namespace joined to this one by a veth pair: (name, the
    host's address, the namespace's address, another host address).
    """
    require_netns()
    tag = f"{os.getpid() % 10000}"
    name, host_if, ns_if = f"spx{tag}", f"spxh{tag}", f"spxn{tag}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    host, inside, other = f"{subnet}.1", f"{subnet}.2", f"{subnet}.3"
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", name)
        sh("ip", "addr", "add", f"{host}/24", "dev", host_if)
        sh("ip", "addr", "add", f"{other}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", name, "ip", "addr", "add", f"{inside}/24", "dev", ns_if)
        sh("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        sh("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        yield name, host, inside, other
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _connect_from(source: str, host: str, port: int) -> str:
    """
    What the origin says to a connection from C{source}, or how it failed.
    """
    try:
        with socket.create_connection((host, port), timeout=1.5, source_address=(source, 0)) as conn:
            return conn.makefile().readline().strip()
    except socket.timeout:
        # Python 3.9's socket.timeout is not yet TimeoutError
        return "TimeoutError"
    except OSError as e:
        return type(e).__name__


@pytest.mark.parametrize("kind", ["nftables", "iptables"])
def test_printed_rules_admit_the_edge_and_drop_another_source(tmp_path: Any, namespace: Any, kind: str) -> None:
    name, host, inside, other = namespace
    require_program("nft" if kind == "nftables" else "iptables")
    origin_port, admin_port, edge_port = free_port(), free_port(), free_port()
    origin = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, "-c", ORIGIN_SCRIPT, inside, str(origin_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy = None
    try:
        assert origin.stdout is not None and origin.stdout.readline().strip() == "ready"
        config = _config(tmp_path, admin_port, [_app(edge_port, inside, origin_port)])
        proxy = start_twistd(config, tmp_path / "twistd.log", [admin_port, edge_port])
        admin = ["--admin", f"http://127.0.0.1:{admin_port}", "--token", TOKEN]
        ips = run([*spectrum_cli(), "firewall", kind, "--port", str(origin_port), *admin])
        assert ips.returncode == 0, ips.stderr
        # Before: both sources reach the origin.
        assert _connect_from(other, inside, origin_port) == f"origin saw {other}"
        rules = tmp_path / "rules"
        rules.write_text(ips.stdout)
        if kind == "nftables":
            sh("ip", "netns", "exec", name, "nft", "-f", str(rules))
        else:
            sh("ip", "netns", "exec", name, "sh", "-e", str(rules))
        # After: the edge (its source towards the origin is the host's
        # address on the link) still reaches it; the other source is dropped.
        client = Client(edge_port)
        assert client.read_line() == f"origin saw {host}".encode()
        client.close()
        assert _connect_from(other, inside, origin_port) == "TimeoutError"
        # Applied twice, the rules stay one set.
        if kind == "nftables":
            sh("ip", "netns", "exec", name, "nft", "-f", str(rules))
            listed = sh("ip", "netns", "exec", name, "nft", "list", "ruleset")
            assert listed.count("table inet spectrum_origin") == 1
    finally:
        if proxy is not None:
            proxy.kill()
        origin.kill()
        origin.wait(5)


def test_rules_for_every_port_apply_and_apply_again(tmp_path: Any, namespace: Any) -> None:
    """
    Without C{--port}: the nftables rules pass C{nft}'s own check, and the
    iptables ones apply twice to the same rules (loopback, answers and ICMP
    kept open).
    """
    from spectrum.cli.firewall import iptables_rules, nftables_rules

    name = namespace[0]
    require_program("nft")
    require_program("iptables")
    v4, v6 = ["192.0.2.0/24"], ["2001:db8::/64"]
    rules = tmp_path / "rules.nft"
    rules.write_text(nftables_rules(v4, v6, None))
    sh("ip", "netns", "exec", name, "nft", "-c", "-f", str(rules))
    script = tmp_path / "rules.sh"
    script.write_text(iptables_rules(v4, v6, None))
    listed = []
    for _ in range(2):
        sh("ip", "netns", "exec", name, "sh", "-e", str(script))
        listed.append(sh("ip", "netns", "exec", name, "iptables", "-S"))
    assert listed[0] == listed[1]
    assert "-A INPUT -i lo -j ACCEPT" in listed[0] and "-A SPECTRUM-ORIGIN -s 192.0.2.0/24 -j ACCEPT" in listed[0]
