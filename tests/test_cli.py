"""
The real command: C{twistd spectrum} as an operator runs it, in a
subprocess. Plugin discovery, the embedded default config, one clear line
for each kind of bad config, SIGHUP reload and SIGTERM drain.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

import pytest
import yaml

from spectrum.config import default_config_path, load
from spectrum.model import PortRange

from conftest import free_port
from procs import (
    ROOT,
    STOPPED_BY_SIGTERM,
    Client,
    NamedOrigin,
    accepts,
    environment,
    greeting,
    port_is_free,
    run,
    spectrum_command,
    start_twistd,
    tcp_app,
    twistd,
    wait_until,
    write_config,
)

# discovery ----------------------------------------------------------------


def test_python_m_twisted_lists_spectrum_from_the_repo_root() -> None:
    """
    C{python -m twisted --help}, run in the checkout with no PYTHONPATH,
    finds the plugin in C{twisted/plugins/} next to it.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-m", "twisted", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert ["spectrum", "An", "edge", "proxy", "for", "any", "TCP", "or", "UDP", "protocol."] in lines


def test_twistd_help_lists_spectrum_and_its_options() -> None:
    done = run([*twistd(), "--help"])
    assert done.returncode == 0, done.stderr
    assert any(line.split()[:1] == ["spectrum"] for line in done.stdout.splitlines())
    done = run([*twistd(), "spectrum", "--help"])
    assert done.returncode == 0, done.stderr
    assert "--config=" in done.stdout
    assert "--drain-timeout=" in done.stdout


# the embedded default -----------------------------------------------------


def test_default_config_loads() -> None:
    """
    The config used without C{--config}: two loopback apps, SSH on 2222 and
    Redis on 6380, relayed to the local servers.
    """
    config = load(default_config_path())
    apps = {app.name: app for app in config.apps}
    assert set(apps) == {"ssh", "redis"}
    assert apps["ssh"].ips == ("127.0.0.1",)
    assert apps["ssh"].ports[0].edge == PortRange(2222, 2222)
    assert apps["ssh"].ports[0].origin == PortRange(22, 22)
    assert apps["redis"].ips == ("127.0.0.1",)
    assert apps["redis"].ports[0].edge == PortRange(6380, 6380)
    assert apps["redis"].ports[0].origin == PortRange(6379, 6379)


def test_twistd_spectrum_without_config_listens(tmp_path: Any) -> None:
    """
    C{twistd -n spectrum} with no C{--config} listens on 127.0.0.1:2222 and
    :6380. Where another process holds those ports, the same file runs with
    its edge ports moved to free ones (the default itself is still what is
    loaded, through C{--config}).
    """
    if port_is_free(2222) and port_is_free(6380):
        config = None
        ports = {"ssh": 2222, "redis": 6380}
    else:
        with open(default_config_path()) as f:
            data = yaml.safe_load(f)
        ports = {}
        for app in data["apps"]:
            ports[app["name"]] = app["ports"][0]["destination_port"] = free_port()
        config = write_config(tmp_path / "default-moved.json", data)
    proxy = start_twistd(config, tmp_path / "twistd.log", ports.values())
    try:
        for name, port in ports.items():
            proxy.wait_for_log(f"{name}: listening on 127.0.0.1:{port} (tcp)")
        # Loopback only: the default exposes nothing to the network.
        assert proxy.log().count("listening on") == 2
    finally:
        status = proxy.stop()
    assert status == STOPPED_BY_SIGTERM, proxy.log()
    assert proxy.log().rstrip().endswith("Server Shut Down.")
    assert "Traceback" not in proxy.log()


# bad configs --------------------------------------------------------------

EDGE = "edge-port"  # stands for the free edge port of app "a" in each case


def apps(*extra: Dict[str, Any]) -> Dict[str, Any]:
    return {"apps": [tcp_app("a", EDGE, [free_port()]), *extra]}  # type: ignore[arg-type]


def edit(change: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    data = apps()
    change(data)
    return data


# Each: (file name, content: a dict written as JSON or the text itself, the
# one line after "spectrum: ", which starts with the path of the error; FILE
# stands for the file's own path, EDGE for app a's edge port)
BAD_CONFIGS: Dict[str, tuple] = {
    "unknown key": (
        "c.json",
        edit(lambda d: d["apps"][0].update(bogus=1)),
        "apps[0]: unknown key 'bogus'",
    ),
    "wrong type": (
        "c.json",
        edit(lambda d: d["apps"][0].update(ips="127.0.0.1")),
        "apps[0].ips: expected list, got string '127.0.0.1'",
    ),
    "bad range": (
        "c.json",
        edit(lambda d: d["apps"][0]["ports"][0].update(destination_port="EDGE-RANGE", origin_port="40000-40005")),
        "apps[0].ports[0].origin_port: range 40000-40005 has 6 ports, destination has 11",
    ),
    "port over 65535": (
        "c.json",
        edit(lambda d: d["apps"][0]["origin_pool"]["origins"][0].update(port=65536)),
        "apps[0].origin_pool.origins[0].port: must be at most 65535, got 65536",
    ),
    "duplicate name": (
        "c.json",
        apps(tcp_app("a", 1, [1])),
        "apps[1].name: duplicate app name 'a' (also apps[0])",
    ),
    "overlapping ports without SNI": (
        "c.json",
        apps(tcp_app("b", EDGE, [1])),  # type: ignore[arg-type]
        "apps[1].ports[0].destination_port: EDGE on 127.0.0.1 is already used by app 'a'; apps may share an edge"
        " port only when each has distinct hostnames (dns.name, sni)",
    ),
    "missing origin": (
        "c.json",
        edit(lambda d: d["apps"][0].pop("origin_pool")),
        "apps[0]: needs origin_pool or origin_direct or origin_dns",
    ),
    "no origins in the pool": (
        "c.json",
        edit(lambda d: d["apps"][0]["origin_pool"].update(origins=[])),
        "apps[0].origin_pool.origins: needs at least 1 item",
    ),
    "bad origin address": (
        "c.json",
        edit(lambda d: d["apps"][0]["origin_pool"]["origins"][0].update(address="300.1.2.3")),
        "apps[0].origin_pool.origins[0].address: '300.1.2.3' is neither an IP address nor a valid hostname",
    ),
    "bad edge address": (
        "c.json",
        edit(lambda d: d["apps"][0].update(ips=["127.0.0.256"])),
        "apps[0].ips[0]: '127.0.0.256' is not an IP address",
    ),
    "infinite weight (YAML .inf)": (
        "c.yaml",
        "apps:\n  - name: a\n    protocol: tcp/EDGE\n    origin_pool:\n      load_balancing: hash\n"
        "      origins:\n        - {name: o, address: 127.0.0.1, port: 1, weight: .inf}\n",
        "apps[0].origin_pool.origins[0].weight: must be a finite number, got inf",
    ),
    "weight 1e400 in JSON (infinity)": (
        "c.json",
        '{"apps": [{"name": "a", "protocol": "tcp/EDGE", "origin_pool": {"load_balancing": "hash", "origins":'
        ' [{"name": "o", "address": "127.0.0.1", "port": 1, "weight": 1e400}]}}]}',
        "apps[0].origin_pool.origins[0].weight: must be a finite number, got inf",
    ),
    "NaN timeout": (
        "c.yaml",
        "apps:\n  - name: a\n    protocol: tcp/EDGE\n    origin_direct: [tcp://127.0.0.1:1]\n"
        "    timeouts: {connect: .nan}\n",
        "apps[0].timeouts.connect: must be a finite number, got nan",
    ),
    "weight over the maximum": (
        "c.json",
        edit(lambda d: d["apps"][0]["origin_pool"]["origins"][0].update(weight=1e7)),
        "apps[0].origin_pool.origins[0].weight: must be at most 1000000, got 10000000.0",
    ),
    "proxy loop: the origin is the app's own edge": (
        "c.yaml",
        "apps:\n  - name: a\n    protocol: tcp/EDGE\n    ips: [127.0.0.1]\n    origin_direct: [tcp://127.0.0.1:EDGE]\n",
        "apps[0]: its origins lead back to this spectrum's own edge, so a connection would loop:"
        " 'a' port EDGE -> 127.0.0.1:EDGE ('a')",
    ),
    "access rule on an IPv4-mapped IPv6 address": (
        "c.yaml",
        "apps: []\naccess_rules:\n  - {mode: block, configuration: {target: ip6, value: '::ffff:127.0.0.9'}}\n",
        "access_rules[0].configuration.value: '::ffff:127.0.0.9' is an IPv4-mapped address;"
        " clients are matched as 127.0.0.9: use target ip with 127.0.0.9",
    ),
    "access rule on an IPv4-mapped IPv6 range": (
        "c.yaml",
        "apps: []\naccess_rules:\n  - {mode: block, configuration: {target: ip_range, value: '::ffff:10.0.0.0/104'}}\n",
        "access_rules[0].configuration.value: '::ffff:10.0.0.0/104' is an IPv4-mapped range;"
        " clients are matched as IPv4: use target ip_range with 10.0.0.0/8",
    ),
    "access rule on a scoped address": (
        "c.yaml",
        "apps: []\naccess_rules:\n  - {mode: block, configuration: {target: ip6, value: 'fe80::1%eth0'}}\n",
        "access_rules[0].configuration.value: 'fe80::1%eth0' has a zone (%eth0);"
        " clients are matched without one: write fe80::1",
    ),
    "access rule on a scoped range": (
        "c.yaml",
        "apps: []\naccess_rules:\n  - {mode: block, configuration: {target: ip_range, value: 'fe80::%eth0/64'}}\n",
        "access_rules[0].configuration.value: 'fe80::%eth0/64' has a zone (%eth0);"
        " clients are matched without one: write fe80::/64",
    ),
    "YAML syntax error": (
        "c.yaml",
        "apps:\n  - name: a\n    ports: [{destination_port: EDGE\n",
        "FILE: line 4, column 1: expected ',' or '}', but got '<stream end>'",
    ),
    "YAML key given twice": (
        "c.yaml",
        "apps:\n  - name: a\n    name: b\n",
        "FILE: line 3, column 5: duplicate key 'name'",
    ),
    "JSON syntax error": (
        "c.json",
        '{"apps": [}',
        "FILE: line 1, column 11: Expecting value",
    ),
    "missing file": (
        "does-not-exist.yaml",
        None,
        "FILE: cannot read the file: No such file or directory",
    ),
    "unreadable file (a directory)": (
        "a-directory.yaml",
        "DIRECTORY",
        "FILE: cannot read the file: Is a directory",
    ),
    "a FIFO, never waited on": (
        "a-fifo.yaml",
        "FIFO",
        "FILE: cannot read the file: not a regular file (a FIFO)",
    ),
}


def _fill(value: Any, edge: int) -> Any:
    """
    C{value} with the edge port placeholders replaced by C{edge}.
    """
    if value == EDGE:
        return edge
    if value == "EDGE-RANGE":
        return f"{edge}-{edge + 10}"
    if isinstance(value, str):
        return value.replace("EDGE", str(edge))
    if isinstance(value, dict):
        return {k: _fill(v, edge) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, edge) for v in value]
    return value


def make_bad_config(path: Any, content: Any, edge: int) -> None:
    """
    Put one of L{BAD_CONFIGS}' contents at C{path}: a directory, a FIFO,
    nothing, or a document with C{edge} filled in.
    """
    if content == "DIRECTORY":
        path.mkdir()
    elif content == "FIFO":
        os.mkfifo(path)
    elif content is not None:
        write_config(path, _fill(content, edge))


def _one_clear_line(output: str, expected: str) -> str:
    """
    The only line of C{output} that mentions C{spectrum:}; it ends with
    C{expected}, and no traceback is anywhere.
    """
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if "spectrum:" in line]
    assert len(lines) == 1, output
    assert lines[0].endswith(expected), output
    # ...and the error is not told twice in other words (a log line too).
    message = expected.partition(": ")[2]
    assert sum(message in line for line in output.splitlines()) == 1, output
    return lines[0]


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_bad_config_one_line_nonzero_nothing_bound(kind: str, tmp_path: Any) -> None:
    name, content, expected = BAD_CONFIGS[kind]
    edge = free_port()
    path = tmp_path / name
    make_bad_config(path, content, edge)
    done = run(spectrum_command(str(path)))
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    # Config errors are found while parsing options, before twistd starts
    # logging: the line is all there is, on stderr.
    assert done.stdout == ""
    assert done.stderr == "spectrum: " + _fill(expected, edge).replace("FILE", str(path)) + "\n"
    _one_clear_line(output, done.stderr.strip())
    # Nothing was bound: no listener was ever reported, and the edge port is
    # free for the next attempt.
    assert "listening on" not in output
    assert port_is_free(edge)


def test_redis_store_without_the_redis_client_is_one_line(tmp_path: Any) -> None:
    """
    Issue 16, fault 4: C{store: redis://} where the Redis client library
    (txredisapi) cannot be imported was a C{ModuleNotFoundError} traceback.
    A directory ahead on C{PYTHONPATH} makes the import fail as it does
    when the library is not installed.
    """
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "txredisapi.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'txredisapi'\", name='txredisapi')\n"
    )
    edge = free_port()
    path = write_config(tmp_path / "c.json", {"store": "redis://127.0.0.1:6379/0", **_fill(apps(), edge)})
    env = environment()
    env["PYTHONPATH"] = f"{shadow}{os.pathsep}{env['PYTHONPATH']}"
    done = subprocess.run(
        spectrum_command(path), cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr == (
        "spectrum: store: redis:// needs the Redis client library, which is not installed"
        " (No module named 'txredisapi'): pip install 'spectrum-edge[redis]'\n"
    ), done
    assert port_is_free(edge)


def _held_port() -> socket.socket:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    return taken


@pytest.mark.parametrize("runner", ["twistd", "twist"])
def test_port_in_use_at_start(runner: str, tmp_path: Any) -> None:
    """
    App b's edge port is held by another process: one line naming the app
    and the address, status non-zero, and app a's port was not left bound.
    """
    taken = _held_port()
    try:
        busy = taken.getsockname()[1]
        first = free_port()
        path = write_config(
            tmp_path / "c.json",
            {"apps": [tcp_app("a", first, [free_port()]), tcp_app("b", busy, [free_port()])]},
        )
        if runner == "twistd":
            command = spectrum_command(path)
        else:
            # C{python -m twisted} is twist, the other runner.
            command = [sys.executable, "-m", "twisted", "spectrum", "--config", path]
        done = run(command)
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        _one_clear_line(output, f"spectrum: apps[1] (b): cannot listen on 127.0.0.1:{busy}: Address already in use")
        assert "listening on" not in output
        assert port_is_free(first)
    finally:
        taken.close()


# daemon mode (no -n) --------------------------------------------------------


def _daemon_command(config: str, tmp_path: Any) -> List[str]:
    return [*twistd(), f"--logfile={tmp_path / 'd.log'}", f"--pidfile={tmp_path / 'd.pid'}", "spectrum", "--config",
            config]  # fmt: skip


def _kill_daemon(pidfile: Any) -> None:
    """
    SIGTERM the daemon a pidfile names, if there is one, and wait for it.
    """
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 15, what=f"daemon {pid} to exit")
    except ProcessLookupError:
        pass


@pytest.mark.parametrize("what", ["edge", "admin"])
@pytest.mark.parametrize("mode", ["daemon", "-n"])
def test_start_failure_exits_1_with_one_line_and_no_pidfile(mode: str, what: str, tmp_path: Any) -> None:
    """
    Issue 16, fault 2: without C{-n}, a port that cannot be bound made
    twistd's parent wait forever for the daemon's start status and left a
    pidfile naming a dead process. Either way it is now one line, told
    once, exit status 1, and no pidfile.
    """
    taken = _held_port()
    busy = taken.getsockname()[1]
    data: Dict[str, Any] = {"apps": [tcp_app("a", busy if what == "edge" else free_port(), [free_port()])]}
    if what == "admin":
        token = {"name": "t", "token": "x" * 32, "permissions": "read"}
        data["admin"] = {"listen": f"tcp:{busy}:interface=127.0.0.1", "tokens": [token]}
    expected = {
        "edge": f"spectrum: apps[0] (a): cannot listen on 127.0.0.1:{busy}: Address already in use",
        "admin": f"spectrum: admin.listen: cannot listen on 'tcp:{busy}:interface=127.0.0.1': Address already in use",
    }[what]
    path = write_config(tmp_path / "c.json", data)
    pidfile = tmp_path / "d.pid"
    command = _daemon_command(path, tmp_path)
    if mode == "-n":
        command.insert(command.index("spectrum"), "-n")
    try:
        done = run(command, timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("twistd did not return within 15 s of a start failure")
    finally:
        taken.close()
        _kill_daemon(pidfile)
    assert done.returncode == 1, done
    # Found before twistd writes its pidfile, forks or starts its log: the
    # line is all there is, on the terminal's stderr.
    assert (done.stdout, done.stderr) == ("", expected + "\n"), done
    assert not pidfile.exists()


def test_daemon_starts_serves_and_stops(tmp_path: Any, origins: Callable[[str], NamedOrigin]) -> None:
    """
    Daemon mode that starts: twistd returns 0 at once, the daemon the
    pidfile names relays (its ports were bound before the fork), and
    SIGTERM stops it and removes the pidfile. The log has every line of
    the start, though the ports were bound before logging began (Twisted
    buffers only 200 events until then): here 250, one per edge port.
    """
    from conftest import free_port_range

    origin = origins("one")
    base = free_port_range(250)
    app = tcp_app("a", base, [origin.port])
    app["ports"] = [{"destination_port": f"{base}-{base + 249}"}]
    path = write_config(tmp_path / "c.json", {"apps": [app]})
    pidfile = tmp_path / "d.pid"
    try:
        done = run(_daemon_command(path, tmp_path), timeout=20)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
        pid = int(pidfile.read_text())
        assert os.path.exists(f"/proc/{pid}")
        wait_until(lambda: accepts(base + 249), 10, what="the daemon's edge ports")
        assert greeting(base) == b"one" and greeting(base + 249) == b"one"
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 15, what="the daemon to exit")
        assert not pidfile.exists()
        log = (tmp_path / "d.log").read_text()
        assert "Traceback" not in log, log
        listening = re.findall(r"a: listening on 127\.0\.0\.1:(\d+) \(tcp\)", log)
        assert sorted(map(int, listening)) == list(range(base, base + 250)), log
    finally:
        _kill_daemon(pidfile)


# reload and drain ---------------------------------------------------------


@pytest.fixture
def origins() -> Any:
    made: List[NamedOrigin] = []

    def make(name: str) -> NamedOrigin:
        origin = NamedOrigin(name)
        made.append(origin)
        return origin

    yield make
    for origin in made:
        origin.close()


def test_sighup_reload_and_sigterm_drain(tmp_path: Any, origins: Callable[[str], NamedOrigin]) -> None:
    """
    One twistd, driven by signals the way an operator would:

      1. apps A and B; a long-lived connection through B;
      2. the file now has A (with a new origin) and C, no B; SIGHUP: C
         accepts within a second, B's port refuses, the open connection
         through B still relays both ways, A goes to its new origin;
      3. a broken file; SIGHUP: the process keeps the previous config and
         logs that the reload was refused, naming the path of the error;
      4. SIGTERM with the B connection still open: listeners close, the
         connection keeps relaying until the client finishes, then the
         process exits cleanly well before the drain deadline.
    """
    old_a, new_a, origin_b, origin_c = (origins(n) for n in ("old-A", "new-A", "B", "C"))
    edge_a, edge_b, edge_c = free_port(), free_port(), free_port()
    path = write_config(
        tmp_path / "spectrum.json",
        {"apps": [tcp_app("A", edge_a, [old_a.port]), tcp_app("B", edge_b, [origin_b.port])]},
    )
    drain_timeout = 10
    proxy = start_twistd(path, tmp_path / "twistd.log", [edge_a, edge_b], ["--drain-timeout", str(drain_timeout)])
    client = None
    try:
        assert greeting(edge_a) == b"old-A"
        client = Client(edge_b)
        assert client.read_line() == b"B"
        assert client.exchange(b"before reload") == b"before reload"

        # 2. remove B, add C, move A
        write_config(
            path,
            {"apps": [tcp_app("A", edge_a, [new_a.port]), tcp_app("C", edge_c, [origin_c.port])]},
        )
        mark = len(proxy.log())
        sent = time.monotonic()
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: accepts(edge_c, timeout=0.2), timeout=1.0, what="C to accept within a second")
        took = time.monotonic() - sent
        assert took < 1.0
        proxy.wait_for_log(f"reloaded {path}: 2 apps", after=mark)
        assert greeting(edge_c) == b"C"
        assert not accepts(edge_b)
        assert client.exchange(b"after reload") == b"after reload"
        assert greeting(edge_a) == b"new-A"

        # 3. a broken file: refused, the running config stays
        write_config(
            path,
            {"apps": [tcp_app("A", 70000, [new_a.port]), tcp_app("C", edge_c, [origin_c.port])]},
        )
        mark = len(proxy.log())
        proxy.signal(signal.SIGHUP)
        line = proxy.wait_for_log("refused", after=mark)
        assert f"reload of {path} refused, old config kept" in line
        assert "apps[0].ports[0].destination_port: must be at most 65535, got 70000" in line
        assert proxy.poll() is None
        assert greeting(edge_a) == b"new-A"
        assert greeting(edge_c) == b"C"
        assert client.exchange(b"after refused reload") == b"after refused reload"

        # 4. SIGTERM: drain the open connection, then exit 0
        mark = len(proxy.log())
        stopped = time.monotonic()
        proxy.signal(signal.SIGTERM)
        # The held connection, plus any probe of the checks above still
        # closing when the signal came.
        line = proxy.wait_for_log("open connections for up to", after=mark)
        assert int(re.search(r"draining (\d+) open connections", line).group(1)) >= 1
        assert not accepts(edge_a)
        assert not accepts(edge_c)
        assert client.exchange(b"while draining") == b"while draining"
        assert proxy.poll() is None
        # Half-close through the proxy: the origin answers EOF, then closes.
        assert client.finish() == b"bye\n"
        status = proxy.wait(timeout=drain_timeout)
        assert time.monotonic() - stopped < drain_timeout / 2
        assert status == STOPPED_BY_SIGTERM, proxy.log()
        log = proxy.log()
        assert log.rstrip().endswith("Server Shut Down.")
        assert "Traceback" not in log
        assert "closing" not in log[mark:]  # nothing was cut at a deadline
    finally:
        if client is not None:
            client.close()
        proxy.kill()


def test_sigterm_closes_what_is_left_at_the_drain_deadline(
    tmp_path: Any, origins: Callable[[str], NamedOrigin]
) -> None:
    """
    A connection that does not finish is closed at the drain deadline and
    the process still shuts down cleanly.
    """
    origin = origins("O")
    edge = free_port()
    path = write_config(tmp_path / "spectrum.json", {"apps": [tcp_app("A", edge, [origin.port])]})
    proxy = start_twistd(path, tmp_path / "twistd.log", [edge], ["--drain-timeout", "0.5"])
    client = Client(edge)
    try:
        assert client.read_line() == b"O"
        stopped = time.monotonic()
        status = proxy.stop(timeout=10)
        assert status == STOPPED_BY_SIGTERM, proxy.log()
        assert time.monotonic() - stopped < 5
        assert "closing 1 connections still open at the drain deadline" in proxy.log()
        client.sock.settimeout(5)
        # Closed: a reset when the abort's close ran before the process
        # exited (it does when the store holds the reactor for its last
        # push), an orderly end when the exit came first.
        try:
            assert client.sock.recv(100) == b""
        except ConnectionResetError:
            pass
    finally:
        client.close()
        proxy.kill()
