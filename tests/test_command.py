"""
The C{spectrum} command, run as a subprocess the way an operator runs it:
C{spectrum check} on files good and bad (nothing bound, nothing written,
the line a start would print), C{--version} and the start-up log line, a
file holding one app, and C{status}, C{apps list}, C{rules
list|add|delete} against a real C{twistd spectrum} and its admin API.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest
import requests

import spectrum
from spectrum.config import default_config_path, load

from conftest import free_port, require_program
from geokit import write_country_db
from procs import (
    ROOT,
    Client,
    NamedOrigin,
    Twistd,
    environment,
    greeting,
    port_is_free,
    run,
    spectrum_cli,
    start_twistd,
    tcp_app,
    twistd,
    write_config,
)
from test_cli import BAD_CONFIGS, _fill, make_bad_config
from tlskit import MKCERTS

EXAMPLES = sorted(Path(ROOT, "examples").glob("*.yaml")) + sorted(Path(ROOT, "examples").glob("*.json"))
EDIT = "edit-token-0123456789abcdef"
READ = "read-token-0123456789abcdef"
VERSION_LINE = re.compile(r"^spectrum (\S+) \(Twisted (\S+), Python (\S+)\)$")


def cli(*args: Any, env: Optional[Dict[str, str]] = None, home: Any = None) -> subprocess.CompletedProcess:
    """
    Run C{spectrum ARGS}. The admin settings an operator's shell may carry
    are left out unless given in C{env}; C{home} stands for the operator's
    state directory (where the default token file would be).
    """
    environ = {k: v for k, v in environment().items() if k not in ("SPECTRUM_TOKEN", "SPECTRUM_ADMIN")}
    if home is not None:
        environ["XDG_STATE_HOME"] = os.fspath(home)
    environ.update(env or {})
    return subprocess.run(
        [*spectrum_cli(), *map(os.fspath, args)],
        cwd=ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def failed(done: subprocess.CompletedProcess) -> str:
    """
    The one line a failed command printed: status 1, nothing on stdout, one
    line on stderr starting with C{spectrum: }, no traceback.
    """
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("spectrum: ")
    return lines[0]


def table(text: str) -> List[Dict[str, str]]:
    """
    The rows of a plain table (a header of capitalised names, columns
    aligned under them), as header -> cell.
    """
    lines = text.splitlines()
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    rows = []
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [len(line)])]
        rows.append(dict(zip(names, cells)))
    return rows


# --version and the start-up log --------------------------------------------


def test_version_of_the_command_and_of_twistd_spectrum() -> None:
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    match = VERSION_LINE.match(done.stdout.strip())
    assert match, done.stdout
    assert match.group(1) == spectrum.__version__
    assert match.group(2) == metadata.version("twisted")
    # twistd's subcommand says the same (not Twisted's own version line).
    done = run([*twistd(), "spectrum", "--version"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"spectrum {match.group(1)} (Twisted {match.group(2)}, Python {match.group(3)})"


def test_start_up_log_names_the_version_and_the_config_file(tmp_path: Any) -> None:
    edge = free_port()
    with NamedOrigin("o") as origin:
        path = write_config(tmp_path / "spectrum.json", {"apps": [tcp_app("a", edge, [origin.port])]})
        proxy = start_twistd(path, tmp_path / "twistd.log", [edge])
        try:
            line = proxy.wait_for_log(f"spectrum {spectrum.__version__} (Twisted")
            assert line.endswith(f"starting with the config file {path}"), line
        finally:
            proxy.stop()
    # Without --config: the embedded default, named as such (stopped before
    # it binds anything, with its ports held here or by an SSH test).
    proxy = Twistd(None, tmp_path / "default.log")
    try:
        line = proxy.wait_for_log(f"spectrum {spectrum.__version__} (Twisted")
        assert line.endswith(f"starting with the built-in default config ({default_config_path()})"), line
    finally:
        proxy.stop()


def test_start_up_line_is_logged_once_with_workers(tmp_path: Any) -> None:
    """
    With C{--workers 2} the supervisor says it; the workers, started from
    the same file, do not say it again.
    """
    edge = free_port()
    with NamedOrigin("o") as origin:
        path = write_config(tmp_path / "spectrum.json", {"apps": [tcp_app("a", edge, [origin.port])]})
        proxy = start_twistd(path, tmp_path / "twistd.log", [edge], ["--workers", "2"])
        try:
            assert greeting(edge) == b"o"
            proxy.wait_for_log("a: listening on", after=proxy.log().index("a: listening on") + 1)
        finally:
            proxy.stop()
    assert proxy.log().count(f"starting with the config file {path}") == 1, proxy.log()


# check ------------------------------------------------------------------------


def test_examples_cover_the_protocols_operators_bring() -> None:
    names = {path.name for path in EXAMPLES}
    for name in (
        "ssh.yaml",
        "rdp.yaml",
        "postgresql.yaml",
        "mysql.yaml",
        "minecraft-java.yaml",
        "minecraft-bedrock.yaml",
        "smtp-submission.yaml",
        "mqtt.yaml",
    ):
        assert name in names


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_check_passes_every_example(example: Path) -> None:
    done = cli("check", example)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    count = len(load(str(example)).apps)
    assert done.stdout.startswith(f"spectrum: {example}: ok: {count} app{'' if count == 1 else 's'}, ")
    assert len(done.stdout.splitlines()) == 1


def test_check_summary_counts_what_the_file_holds(tmp_path: Any) -> None:
    base = free_port()
    data = {
        "apps": [
            tcp_app("a", base, [1]),
            {
                "name": "b",
                "protocol": "udp",
                "ips": ["127.0.0.1"],
                "ports": [{"destination_port": f"{base}-{base + 9}"}],
                "origin_direct": ["udp://127.0.0.1:5000"],
            },
        ],
        "access_rules": [{"mode": "block", "configuration": {"target": "ip", "value": "198.51.100.4"}}],
        "admin": {
            "listen": f"tcp:{free_port()}:interface=127.0.0.1",
            "tokens": [{"name": "ops", "token": EDIT, "permissions": "edit"}],
        },
    }
    path = write_config(tmp_path / "c.json", data)
    done = cli("check", path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"spectrum: {path}: ok: 2 apps, 11 edge ports (1 TCP, 10 UDP), 1 access rule,"
        f" admin on {data['admin']['listen']}\n"  # type: ignore[index]
    )


def test_check_without_a_file_checks_the_built_in_default() -> None:
    done = cli("check")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"spectrum: {default_config_path()}: ok: 2 apps, 2 edge ports (2 TCP, 0 UDP), 0 access rules\n"
    )


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_check_refuses_each_bad_config_with_the_line_twistd_prints(kind: str, tmp_path: Any) -> None:
    """
    The bad configs of C{test_cli}: the same line C{twistd spectrum} prints
    for each (that test holds twistd to it), status 1, nothing bound.
    """
    name, content, expected = BAD_CONFIGS[kind]
    edge = free_port()
    path = tmp_path / name
    make_bad_config(path, content, edge)
    line = failed(cli("check", path))
    assert line == "spectrum: " + _fill(expected, edge).replace("FILE", str(path))
    assert port_is_free(edge)


def test_check_binds_nothing_and_writes_nothing(tmp_path: Any) -> None:
    """
    Edge and admin ports held by another process do not fail a check (a
    start would: binding is the start's business), and a check makes no
    state file and no token file where a start would.
    """
    held = []
    try:
        for _ in range(2):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            held.append(s)
        edge, admin = (s.getsockname()[1] for s in held)
        path = write_config(
            tmp_path / "spectrum.json",
            {"apps": [tcp_app("a", edge, [1])], "admin": {"listen": f"tcp:{admin}:interface=127.0.0.1"}},
        )
        done = cli("check", path, home=tmp_path / "state")
        assert done.returncode == 0, done.stderr
        assert "ok: 1 app," in done.stdout
        assert sorted(os.listdir(tmp_path)) == ["spectrum.json"]
        # The same file does not start, as the check cannot know.
        started = run([*twistd(), "-n", "--pidfile=", "spectrum", "--config", path])
        assert started.returncode != 0
        assert "Address already in use" in started.stdout + started.stderr
    finally:
        for s in held:
            s.close()


def _state_with(app: Dict[str, Any]) -> Dict[str, Any]:
    entry = {"app": dict(app, id="0123456789abcdef0123456789abcdef"), "created_on": "x", "modified_on": "x"}
    return {"version": 1, "apps": [entry], "access_rules": []}


def _json_error(text: str) -> str:
    """What this Python's json module says of C{text} (PyPy words it otherwise)."""
    try:
        json.loads(text)
    except ValueError as e:
        return str(e)
    raise AssertionError(f"{text!r} is JSON")


def _start_failures(tmp_path: Path, edge: int) -> Dict[str, Any]:
    """
    Files that load but do not start: (config, extra files, the line).
    """
    admin = {"listen": f"tcp:{free_port()}:interface=127.0.0.1"}
    state = str(tmp_path / "spectrum.state.json")
    return {
        "state file is not JSON": (
            {"apps": [tcp_app("a", edge, [1])], "admin": admin},
            {"spectrum.state.json": "{not json"},
            f"{state}: not a JSON state file: {_json_error('{not json')}",
        ),
        "an app of the state file clashes with the file": (
            {"apps": [tcp_app("a", edge, [1])], "admin": admin},
            {"spectrum.state.json": json.dumps(_state_with(tcp_app("made", edge, [2])))},
            f"{state}: app 'made' made through the admin API: ports[0].destination_port: {edge} on 127.0.0.1 is"
            " already used by app 'a'; apps may share an edge port only when each has distinct hostnames"
            " (dns.name, sni)",
        ),
        "a token file that cannot be read": (
            {
                "apps": [tcp_app("a", edge, [1])],
                "admin": dict(
                    admin, tokens=[{"name": "ops", "token_file": "secrets/ops-token", "permissions": "edit"}]
                ),
            },
            {},
            f"admin.tokens[0] (ops): cannot read {tmp_path}/secrets/ops-token: No such file or directory",
        ),
        "a certificate file that is missing": (
            {
                "apps": [tcp_app("a", edge, [1])],
                "certificates": [{"certificate": "edge.crt", "private_key": "edge.key"}],
            },
            {},
            "certificates[0].certificate: cannot read certificate file",
        ),
        "a GeoIP file that is no database": (
            {"apps": [tcp_app("a", edge, [1])], "geoip": {"country_db": "country.mmdb"}},
            {"country.mmdb": "not a MaxMind database"},
            "geoip.country_db: ",
        ),
    }


START_FAILURES = list(_start_failures(Path("/x"), 1))


@pytest.mark.parametrize("kind", START_FAILURES)
def test_check_fails_where_a_start_fails_with_the_same_line(kind: str, tmp_path: Any) -> None:
    """
    State file, tokens, certificate and GeoIP files are checked as a start
    checks them; the line is the one C{twistd spectrum} prints on that file.
    """
    edge = free_port()
    data, files, expected = _start_failures(tmp_path, edge)[kind]
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    path = write_config(tmp_path / "spectrum.json", data)
    line = failed(cli("check", path))
    assert line.startswith("spectrum: " + expected), line
    started = run([*twistd(), "-n", "--pidfile=", "spectrum", "--config", path])
    assert started.returncode != 0
    # twistd's log holds the line it wrote to stderr.
    output = started.stdout + started.stderr
    assert any(entry == line or entry.endswith("] " + line) for entry in output.splitlines()), output
    assert port_is_free(edge)


def test_check_accepts_real_certificate_and_geoip_files(tmp_path: Any) -> None:
    from tlskit import make_certs

    certs = make_certs(str(tmp_path / "certs"))
    write_country_db(str(tmp_path / "country.mmdb"), {"198.51.100.0/24": "FR"})
    data = {
        "apps": [tcp_app("a", free_port(), [1], tls="flexible")],
        "certificates": [{"certificate": f"{certs}/localhost.crt", "private_key": f"{certs}/localhost.key"}],
        "geoip": {"country_db": "country.mmdb"},
        "access_rules": [{"mode": "block", "configuration": {"target": "country", "value": "FR"}}],
    }
    done = cli("check", write_config(tmp_path / "spectrum.json", data))
    assert done.returncode == 0, done.stderr
    assert "1 access rule" in done.stdout


# a file holding one app ---------------------------------------------------------


def test_a_file_holding_one_app_object_runs_as_a_config_with_that_app(tmp_path: Any) -> None:
    """
    The seed's app object on its own, and Cloudflare's shape of one
    (C{protocol: "tcp/PORT"}, C{origin_direct}), each as a whole file.
    """
    edge, other = free_port(), free_port()
    with NamedOrigin("game") as origin:
        seed = {
            "name": "my-game-server",
            "protocol": "TCP",
            "dns": {"type": "CNAME", "name": "game.example.com"},
            "ips": ["127.0.0.1"],
            "ports": [{"destination_port": edge, "origin_port": origin.port}],
            "origin_pool": {
                "name": "game-servers",
                "origins": [{"name": "primary-game-server", "address": "127.0.0.1", "port": origin.port}],
            },
        }
        cloudflare = {
            "name": "my-game-server",
            "protocol": f"tcp/{other}",
            "ips": ["127.0.0.1"],
            "origin_direct": [f"tcp://127.0.0.1:{origin.port}"],
        }
        seed_path = write_config(tmp_path / "seed-app.json", seed)
        yaml_path = tmp_path / "cloudflare-app.yaml"
        yaml_path.write_text(
            "# one app, as Cloudflare's API takes it\n"
            + "".join(f"{key}: {json.dumps(value)}\n" for key, value in cloudflare.items())
        )
        for path in (seed_path, yaml_path):
            done = cli("check", path)
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"spectrum: {path}: ok: 1 app, 1 edge port (1 TCP, 0 UDP)")
            (app,) = load(str(path)).apps
            assert app.name == "my-game-server"
        for path, port in ((seed_path, edge), (yaml_path, other)):
            proxy = start_twistd(str(path), tmp_path / "twistd.log", [port])
            try:
                assert greeting(port) == b"game"
                # A reload reads it the same way.
                mark = len(proxy.log())
                proxy.signal(signal.SIGHUP)
                proxy.wait_for_log(f"reloaded {path}: 1 apps", after=mark)
            finally:
                proxy.stop()
    # An error in such a file names the field as in a config's one app.
    broken = write_config(tmp_path / "broken-app.json", dict(cloudflare, bogus=1))
    assert failed(cli("check", broken)) == "spectrum: apps[0]: unknown key 'bogus'"


# the admin API from the shell -------------------------------------------------------


class Running:
    """
    A C{twistd spectrum} with an admin, one app in front of a named origin.
    """

    def __init__(self, path: str, url: str, edge: int, origin: NamedOrigin, proxy: Twistd) -> None:
        self.path = path
        self.url = url
        self.edge = edge
        self.origin = origin
        self.proxy = proxy

    def api(self, path: str) -> Any:
        response = requests.get(self.url + "/client/v4" + path, headers={"Authorization": f"Bearer {READ}"}, timeout=10)
        body = response.json()
        assert body["success"], body
        return body["result"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: Any) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("admin")
    edge, admin = free_port(), free_port()
    with NamedOrigin("origin") as origin:
        data = {
            "zone": {"id": "local", "name": "example.com"},
            "apps": [tcp_app("game", edge, [origin.port])],
            "access_rules": [
                {"mode": "block", "configuration": {"target": "ip", "value": "198.51.100.9"}, "notes": "from the file"}
            ],
            "admin": {
                "listen": f"tcp:{admin}:interface=127.0.0.1",
                "tokens": [
                    {"name": "ops", "token": EDIT, "permissions": "edit"},
                    {"name": "viewer", "token": READ, "permissions": "read"},
                ],
            },
        }
        path = write_config(tmp / "spectrum.json", data)
        proxy = start_twistd(path, tmp / "twistd.log", [edge, admin])
        try:
            yield Running(path, f"http://127.0.0.1:{admin}", edge, origin, proxy)
        finally:
            proxy.stop()


def test_status_shows_apps_listening_origins_and_open_connections(running: Running) -> None:
    client = Client(running.edge)
    try:
        assert client.read_line() == b"origin"
        done = cli("status", "--admin", running.url, "--token", READ)
        assert done.returncode == 0, done.stderr
        first, *rest = done.stdout.splitlines()
        assert first == (
            f"spectrum at {running.url}, zone local (example.com): 1 app, 1 listening, 1 open connection;"
            " origins: 1 not monitored"
        )
        (row,) = table("\n".join(rest))
        assert row["APP"] == "game"
        assert row["PROTOCOL"] == "tcp"
        assert row["LISTENING"] == f"127.0.0.1:{running.edge}"
        assert row["ORIGINS"] == "1 not monitored"
        assert row["OPEN"] == "1"
        done = cli("status", "--admin", running.url, "--token", READ, "--json")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["admin"] == running.url
        assert shown["zone"]["id"] == "local"
        (app,) = shown["apps"]
        assert app["name"] == "game"
        assert app["connections"] == 1
        assert app["listening"] == [{"protocol": "tcp", "ip": "127.0.0.1", "port": running.edge}]
        assert [o["name"] for o in app["origins"]] == ["game-0"]
    finally:
        client.close()


def test_apps_list_as_a_table_and_as_the_apis_json(running: Running) -> None:
    done = cli("apps", "list", "--admin", running.url, "--token", READ)
    assert done.returncode == 0, done.stderr
    (row,) = table(done.stdout)
    (app,) = running.api("/zones/local/spectrum/apps")
    assert row == {
        "ID": app["id"],
        "NAME": "game",
        "PROTOCOL": "tcp",
        "LISTENING": f"127.0.0.1:{running.edge}",
        "ORIGINS": f"127.0.0.1:{running.origin.port}",
        "SOURCE": "config",
    }
    done = cli("apps", "list", "--admin", running.url, "--token", READ, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [app]


def test_rules_add_list_delete(running: Running) -> None:
    """
    With the token in C{SPECTRUM_TOKEN}: a block rule for every app (the
    target told from the value), a whitelist range for one app, both listed
    with the file's rule, then deleted; the file's rule cannot be.
    """
    env = {"SPECTRUM_TOKEN": EDIT}
    admin = ("--admin", running.url)
    done = cli("rules", "add", "block", "198.51.100.4", "--notes", "abuse", *admin, env=env)
    assert done.returncode == 0, done.stderr
    (added,) = table(done.stdout)
    assert (added["MODE"], added["TARGET"], added["VALUE"], added["APP"], added["NOTES"]) == (
        "block",
        "ip",
        "198.51.100.4",
        "*",
        "abuse",
    )
    done = cli("rules", "add", "whitelist", "2001:db8::/32", "--app", "game", *admin, "--json", env=env)
    assert done.returncode == 0, done.stderr
    ranged = json.loads(done.stdout)
    assert ranged["configuration"] == {"target": "ip_range", "value": "2001:db8::/32"}
    assert ranged["app"] == "game"

    done = cli("rules", "list", *admin, env=env)
    assert done.returncode == 0, done.stderr
    rows = table(done.stdout)
    assert [(r["MODE"], r["VALUE"], r["APP"], r["SOURCE"]) for r in rows] == [
        ("block", "198.51.100.9", "*", "config"),
        ("block", "198.51.100.4", "*", "api"),
        ("whitelist", "2001:db8::/32", "game", "api"),
    ]
    assert rows[0]["NOTES"] == "from the file"
    done = cli("rules", "list", "--app", "game", *admin, "--json", env=env)
    assert [r["id"] for r in json.loads(done.stdout)] == [ranged["id"]]
    listed = cli("rules", "list", *admin, "--json", env=env)
    assert [r["configuration"]["value"] for r in json.loads(listed.stdout)] == [
        "198.51.100.9",
        "198.51.100.4",
        "2001:db8::/32",
    ]

    for rule_id in (added["ID"], ranged["id"]):
        done = cli("rules", "delete", rule_id, *admin, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"deleted access rule {rule_id}\n"
    done = cli("rules", "list", *admin, env=env)
    assert [r["VALUE"] for r in table(done.stdout)] == ["198.51.100.9"]
    file_rule = table(done.stdout)[0]["ID"]
    line = failed(cli("rules", "delete", file_rule, *admin, env=env))
    assert line == (
        f"spectrum: {running.url} answered 409: access rule {file_rule} is defined in the config file; change it there"
    )
    line = failed(cli("rules", "delete", "no-such-rule", *admin, env=env))
    assert line == "spectrum: no access rule has id 'no-such-rule'"


def test_refusals_are_one_line_each(running: Running, tmp_path: Any) -> None:
    admin = ("--admin", running.url)
    line = failed(cli("apps", "list", *admin, "--token", "wrong-token-0123456789"))
    assert line == f"spectrum: {running.url} answered 401: Authentication error: invalid token"
    line = failed(cli("rules", "add", "block", "198.51.100.5", *admin, "--token", READ))
    assert line == f"spectrum: {running.url} answered 403: Authentication error: token 'viewer' may only read"
    line = failed(cli("rules", "add", "block", "not-an-address", *admin, "--token", EDIT))
    assert line == "spectrum: 'not-an-address': give --target (ip, ip6, ip_range, asn or country)"
    line = failed(cli("rules", "add", "block", "999.1.1.1", "--target", "ip", *admin, "--token", EDIT))
    assert line.startswith(f"spectrum: {running.url} answered 400: configuration.value: ")
    # No token anywhere: the message says where one may come from.
    line = failed(cli("status", *admin, home=tmp_path))
    token_file = tmp_path / "spectrum" / "default.admin-token"
    assert line == (
        f"spectrum: no admin token: give --token, set SPECTRUM_TOKEN, or --config FILE of a spectrum"
        f" that generated its token (no token file at {token_file})"
    )
    # Nothing listening there.
    closed = f"http://127.0.0.1:{free_port()}"
    line = failed(cli("status", "--admin", closed, "--token", READ))
    assert line == f"spectrum: cannot reach {closed}: Connection refused"


def test_generated_token_and_admin_address_from_the_config_file(tmp_path: Any) -> None:
    """
    An admin without configured tokens writes one to its token file; with
    C{--config} the command finds the admin's address and that token.
    """
    edge, admin = free_port(), free_port()
    with NamedOrigin("o") as origin:
        path = write_config(
            tmp_path / "edge.json",
            {
                "apps": [tcp_app("game", edge, [origin.port])],
                "admin": {"listen": f"tcp:{admin}:interface=127.0.0.1", "state_file": "state/edge.state.json"},
            },
        )
        proxy = start_twistd(path, tmp_path / "twistd.log", [edge, admin])
        try:
            token_file = tmp_path / "state" / "edge.admin-token"
            proxy.wait_for_log(f"an edit token was written to {token_file}")
            done = cli("rules", "add", "block", "AS64500", "--config", path)
            # No geoip.asn_db: refused by the server, having read the token.
            assert failed(done) == (
                f"spectrum: http://127.0.0.1:{admin} answered 400: configuration.target: asn rules need"
                " geoip.asn_db in the config"
            )
            done = cli("apps", "list", "--config", path)
            assert done.returncode == 0, done.stderr
            assert [r["NAME"] for r in table(done.stdout)] == ["game"]
            # An explicit --admin wins over the file's; the token still comes from it.
            done = cli("status", "--config", path, "--admin", f"http://localhost:{admin}")
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"spectrum at http://localhost:{admin}, zone local: 1 app")
        finally:
            proxy.stop()


def test_an_admin_on_ssl_is_reached_over_https(tmp_path: Any) -> None:
    """
    C{admin.listen: ssl:...}: the command goes to https, verifies the
    admin's certificate against C{--cacert} (or, with C{--insecure}, not at
    all) and refuses one it cannot verify.
    """
    require_program("openssl")
    subprocess.run([MKCERTS, "-d", str(tmp_path), "server", "localhost", "127.0.0.1"], check=True, capture_output=True)
    edge, admin = free_port(), free_port()
    with NamedOrigin("o") as origin:
        path = write_config(
            tmp_path / "spectrum.json",
            {
                "apps": [tcp_app("game", edge, [origin.port])],
                "admin": {
                    "listen": f"ssl:{admin}:interface=127.0.0.1:certKey={tmp_path}/localhost.crt"
                    f":privateKey={tmp_path}/localhost.key",
                    "tokens": [{"name": "ops", "token": EDIT, "permissions": "edit"}],
                },
            },
        )
        proxy = Twistd(path, tmp_path / "twistd.log")
        try:
            proxy.wait_for_ports(edge, admin)
            url = f"https://127.0.0.1:{admin}"
            done = cli("status", "--config", path, "--token", EDIT, "--cacert", tmp_path / "ca.crt")
            assert done.returncode == 0, done.stderr
            assert done.stdout.startswith(f"spectrum at {url}, zone local: 1 app, 1 listening")
            line = failed(cli("status", "--config", path, "--token", EDIT))
            assert line.startswith(f"spectrum: cannot reach {url}: [SSL: CERTIFICATE_VERIFY_FAILED]"), line
            done = cli("apps", "list", "--config", path, "--token", EDIT, "--insecure")
            assert done.returncode == 0, done.stderr
        finally:
            proxy.stop()
