"""
The TLS part of the configuration: what it builds, and the one line an
operator reads when it is wrong.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict

import pytest
import yaml

from spectrum.config import ConfigError, load
from spectrum.config_files import load_checked
from spectrum.model import ClientAuth, OriginTls, TlsOptions
from spectrum.proxy.tls import EdgeTls

from tlskit import ROOT, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: Any) -> str:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def tls_app(**extra: Any) -> Dict[str, Any]:
    app = {
        "name": "t",
        "protocol": "tcp/8443",
        "ips": ["127.0.0.1"],
        "origin_direct": ["tcp://127.0.0.1:8080"],
        "tls": "flexible",
    }
    app.update(extra)
    return app


def write(directory: Any, data: Dict[str, Any]) -> str:
    path = os.path.join(str(directory), "spectrum.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(data, f)
    return path


def error(directory: Any, data: Dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        # The config, then the files it names (the second pass, as a start does).
        load_checked(write(directory, data))
    text = str(info.value)
    assert "\n" not in text
    return text


def test_builds_the_model_with_paths_relative_to_the_file(certs: str, tmp_path: Any) -> None:
    for name in ("localhost.crt", "localhost.key", "ca.crt", "bob.crt", "bob.key"):
        shutil.copy(os.path.join(certs, name), tmp_path / name)
    data = {
        "certificates": [{"certificate": "localhost.crt", "private_key": "localhost.key"}],
        "apps": [
            tls_app(
                tls="strict",
                tls_options={"min_version": 1.3, "ciphers": "ECDHE+AESGCM", "alpn": ["h2", "redis"]},
                client_auth={"ca": "ca.crt"},
                origin_tls={
                    "ca": "ca.crt",
                    "server_name": "Origin.Example",
                    "certificate": "bob.crt",
                    "private_key": "bob.key",
                },
            )
        ],
    }
    config = load(write(tmp_path, data))
    assert config.certificates[0].certificate == str(tmp_path / "localhost.crt")
    app = config.apps[0]
    assert app.tls == "strict"
    assert app.tls_options == TlsOptions(min_version="1.3", ciphers="ECDHE+AESGCM", alpn=("h2", "redis"))
    assert app.client_auth == ClientAuth(ca=str(tmp_path / "ca.crt"))
    assert app.origin_tls == OriginTls(
        ca=str(tmp_path / "ca.crt"),
        server_name="origin.example",
        certificate=str(tmp_path / "bob.crt"),
        private_key=str(tmp_path / "bob.key"),
    )
    assert app.origin_tls_mode == "strict"


def test_yaml_off_and_defaults(tmp_path: Any) -> None:
    path = write(tmp_path, {"apps": [tls_app(tls=False, origin_tls={"server_name": "db.internal"})]})
    app = load(path).apps[0]
    assert app.tls == "off" and not app.terminates_tls
    assert app.tls_options.min_version == "1.2"
    # TLS only towards the origin is verified, as strict.
    assert app.origin_tls_mode == "strict"


@pytest.mark.parametrize(
    "app, expected",
    [
        (tls_app(tls="on"), "apps[0].tls: expected one of 'off', 'flexible', 'full', 'strict'; got 'on'"),
        (
            tls_app(tls_options={"min_version": "1.4"}),
            "apps[0].tls_options.min_version: expected a TLS version '1.0', '1.1', '1.2' or '1.3', got '1.4'",
        ),
        (tls_app(tls_options={"ciphers": "NOPE"}), "apps[0].tls_options.ciphers: OpenSSL knows no cipher in 'NOPE'"),
        (tls_app(tls_options={"alpn": [""]}), "apps[0].tls_options.alpn[0]: "),
        (tls_app(tls_options={"session": 1}), "apps[0].tls_options: unknown key 'session'"),
        (
            tls_app(tls="off", tls_options={"min_version": "1.3"}),
            "apps[0].tls_options: applies only when the edge terminates TLS (tls: flexible, full or strict)",
        ),
        (
            tls_app(tls="off", client_auth={"ca": "/nonexistent"}),
            "apps[0].client_auth: applies only when the edge terminates TLS (tls: flexible, full or strict)",
        ),
        (tls_app(client_auth={}), "apps[0].client_auth: missing key 'ca'"),
        (
            tls_app(client_auth={"ca": "/nonexistent/ca.crt"}),
            "apps[0].client_auth.ca: cannot read client CA file /nonexistent/ca.crt: No such file or directory",
        ),
        (
            tls_app(origin_tls={"server_name": "x.example"}),
            "apps[0].origin_tls: tls flexible speaks plaintext to the origin; use full or strict for TLS to it",
        ),
        (
            tls_app(tls="full", origin_tls={"ca": "/x"}),
            "apps[0].origin_tls.ca: tls full does not verify the origin; use strict to verify it",
        ),
        (
            tls_app(tls="strict", origin_tls={"certificate": "/x.crt"}),
            "apps[0].origin_tls: missing key 'private_key': a client certificate needs both",
        ),
        (
            tls_app(tls="strict", origin_tls={"server_name": "not a name"}),
            "apps[0].origin_tls.server_name: 'not a name' is neither an IP address nor a valid hostname",
        ),
        (
            dict(tls_app(), protocol="udp/53", origin_direct=["udp://127.0.0.1:53"]),
            "apps[0].tls: TLS needs protocol tcp, not udp",
        ),
        (tls_app(sni_default=True), "apps[0].sni_default: applies only on an edge port shared with other apps"),
    ],
)
def test_bad_tls_settings(tmp_path: Any, app: Dict[str, Any], expected: str) -> None:
    assert error(tmp_path, {"apps": [app]}).startswith(expected)


def test_bad_certificate_files(certs: str, tmp_path: Any) -> None:
    crt, key = os.path.join(certs, "localhost.crt"), os.path.join(certs, "localhost.key")
    other_key = os.path.join(certs, "b.example.key")
    apps = [tls_app()]
    assert error(tmp_path, {"certificates": [{"certificate": "/nope.crt", "private_key": key}], "apps": apps}) == (
        "certificates[0].certificate: cannot read certificate file /nope.crt: No such file or directory"
    )
    assert error(tmp_path, {"certificates": [{"certificate": key, "private_key": key}], "apps": apps}) == (
        f"certificates[0].certificate: {key} holds no PEM certificate"
    )
    assert error(tmp_path, {"certificates": [{"certificate": crt, "private_key": crt}], "apps": apps}).startswith(
        f"certificates[0].private_key: {crt} holds no usable unencrypted PEM private key"
    )
    assert error(tmp_path, {"certificates": [{"certificate": crt, "private_key": other_key}], "apps": apps}) == (
        f"certificates[0]: the private key {other_key} does not belong to the certificate {crt}"
    )
    assert error(tmp_path, {"certificates": [{"certificate": crt}], "apps": apps}) == (
        "certificates[0]: missing key 'private_key'"
    )


def test_the_loader_reads_no_file_the_config_names(tmp_path: Any) -> None:
    """
    L{load} reads the config file only: the certificate, CA and GeoIP files
    it names are checked by the second pass, L{load_checked}.
    """
    app = tls_app(tls="strict", client_auth={"ca": "missing-clients.pem"})
    app["origin_tls"] = {"ca": "missing-origin.pem"}
    data = {
        "certificates": [{"certificate": "missing.crt", "private_key": "missing.key"}],
        "apps": [app],
        "geoip": {"country_db": "missing.mmdb"},
    }
    config = load(write(tmp_path, data))
    assert config.certificates[0].certificate == str(tmp_path / "missing.crt")
    assert config.apps[0].client_auth is not None
    assert config.apps[0].client_auth.ca == str(tmp_path / "missing-clients.pem")
    assert config.geoip.country_db == str(tmp_path / "missing.mmdb")
    assert error(tmp_path, data).startswith("certificates[0].certificate: cannot read certificate file")


def test_default_app_per_shared_port(tmp_path: Any) -> None:
    a = tls_app(name="a", dns={"name": "a.example"}, sni_default=True)
    b = tls_app(name="b", dns={"name": "b.example"}, tls="off", sni_default=True)
    assert error(tmp_path, {"apps": [a, b]}) == (
        "apps[1].sni_default: app 'a' is already the default on 127.0.0.1:8443; a port has one default app"
    )
    # One default, and apps of both kinds (passthrough and termination) on
    # one port: the ClientHello routes before any handshake.
    b["sni_default"] = False
    config = load(write(tmp_path, {"apps": [a, b]}))
    assert [app.sni_default for app in config.apps] == [True, False]


def test_tls_example_runs_with_nothing_made_by_hand() -> None:
    config = load(os.path.join(ROOT, "examples", "tls.yaml"))
    assert not config.certificates
    assert any(app.terminates_tls for app in config.apps)
    tls = EdgeTls(reactor=None)
    tls.update(config)
    # A self-signed certificate was made in memory for the TLS apps.
    for app in config.apps:
        if app.terminates_tls:
            assert "localhost" in tls.apps[app.name].certificates[0].names


def test_twistd_options_defaults_and_certificate_check() -> None:
    from twisted.python import usage

    from spectrum.tap import Options, makeService

    options = Options()
    options.parseOptions([])
    # Defaults are numbers (a string default is not coerced by usage.Options).
    assert options["drain-timeout"] == 10.0 and options["certificate-check"] == 2.0
    options = Options()
    options.parseOptions(["--certificate-check", "0.5"])
    assert makeService(options).certificate_check_interval == 0.5
    with pytest.raises(usage.UsageError, match="--certificate-check must be 0 or more seconds"):
        Options().parseOptions(["--certificate-check", "-1"])
