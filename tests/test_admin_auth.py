"""
Admin tokens: how they are configured (bad configs name the path), read,
generated when none is configured, and checked; the state file's errors; and
what C{twistd spectrum} says when a token cannot be read.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Dict

import pytest
import pytest_twisted

from spectrum.admin.auth import Authenticator, AuthError, Token, TokenError, generate, resolve
from spectrum.admin.state import AdminState, StateError, default_state_file, token_file_for
from spectrum.config import ConfigError, parse
from spectrum.model import AdminToken

from adminkit import Admin, document, echo_app
from conftest import free_port
from procs import run, spectrum_command, write_config

SECRET = "s3cret-token-0123456789"


def config_error(admin: Dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        parse({"apps": [], "admin": admin}, source="/etc/spectrum/spectrum.yaml")
    return str(caught.value)


def test_bad_token_configs_name_the_path() -> None:
    assert config_error({"tokens": [{"name": "a", "permissions": "edit"}]}) == (
        "admin.tokens[0]: needs token or token_env or token_file"
    )
    assert config_error({"tokens": [{"name": "a", "permissions": "edit", "token": SECRET, "token_env": "X"}]}) == (
        "admin.tokens[0]: give only one of token, token_env, token_file"
    )
    assert config_error({"tokens": [{"name": "a", "permissions": "write", "token": SECRET}]}) == (
        "admin.tokens[0].permissions: expected one of 'read', 'edit'; got 'write'"
    )
    assert config_error({"tokens": [{"name": "a", "permissions": "read", "token": "short"}]}) == (
        "admin.tokens[0].token: a token needs at least 16 characters"
    )
    assert (
        config_error(
            {
                "tokens": [
                    {"name": "a", "permissions": "read", "token": SECRET},
                    {"name": "a", "permissions": "edit", "token_env": "T"},
                ]
            }
        )
        == "admin.tokens[1].name: duplicate token name 'a'"
    )
    assert config_error({"tokens": [{"name": "a", "permissions": "read", "token": SECRET, "colour": 1}]}) == (
        "admin.tokens[0]: unknown key 'colour'"
    )
    assert config_error({"state_file": 7}) == "admin.state_file: expected string, got integer 7"
    assert config_error({"tokens": {"name": "a"}}) == "admin.tokens: expected list, got a mapping"


def test_admin_listens_on_loopback_by_default() -> None:
    config = parse({"apps": [], "admin": {}})
    assert config.admin is not None
    assert config.admin.listen == "tcp:8080:interface=127.0.0.1"
    assert config.admin.tokens == ()


def test_token_paths_are_relative_to_the_config_file() -> None:
    config = parse(
        {
            "apps": [],
            "admin": {
                "tokens": [{"name": "f", "permissions": "read", "token_file": "secrets/t"}],
                "state_file": "state/s.json",
            },
        },
        source="/etc/spectrum/spectrum.yaml",
    )
    assert config.admin is not None
    assert config.admin.tokens == (AdminToken(name="f", permissions="read", token_file="/etc/spectrum/secrets/t"),)
    assert config.admin.state_file == "/etc/spectrum/state/s.json"


def test_tokens_are_read_from_config_environment_and_files(tmp_path: Any) -> None:
    (tmp_path / "t").write_text(SECRET + "-file\n")
    specs = (
        AdminToken(name="inline", permissions="edit", token=SECRET),
        AdminToken(name="env", permissions="read", token_env="SPECTRUM_TEST_TOKEN"),
        AdminToken(name="file", permissions="read", token_file=str(tmp_path / "t"), email="a@example.com"),
    )
    tokens = resolve(specs, {"SPECTRUM_TEST_TOKEN": SECRET + "-env"})
    assert [(t.name, t.secret, t.permissions) for t in tokens] == [
        ("inline", SECRET, "edit"),
        ("env", SECRET + "-env", "read"),
        ("file", SECRET + "-file", "read"),
    ]
    assert SECRET not in repr(tokens)
    with pytest.raises(
        TokenError, match=r"admin.tokens\[1\] \(env\): environment variable SPECTRUM_TEST_TOKEN is not set"
    ):
        resolve(specs, {})
    with pytest.raises(TokenError, match=r"admin.tokens\[0\] \(f\): cannot read .*missing: No such file"):
        resolve([AdminToken(name="f", token_file=str(tmp_path / "missing"))], {})
    with pytest.raises(TokenError, match="at least 16 characters"):
        resolve([AdminToken(name="e", token_env="E")], {"E": "short"})


def test_generated_token_is_random_private_and_edits(tmp_path: Any) -> None:
    path = str(tmp_path / "dir" / "spectrum.admin-token")
    first = generate(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert f.read().strip() == first.secret
    assert len(first.secret) >= 40 and first.can_edit
    assert generate(path).secret != first.secret
    assert token_file_for("/srv/spectrum.state.json") == "/srv/spectrum.admin-token"
    assert default_state_file("/srv/edge.yaml") == "/srv/edge.state.json"


def test_authenticator() -> None:
    auth = Authenticator([Token("ops", SECRET, "edit", "Ops@Example.com"), Token("ro", SECRET + "-ro", "read")])
    assert auth.authenticate({"authorization": f"Bearer {SECRET}"}, mutation=True).name == "ops"
    assert auth.authenticate({"authorization": f"bearer  {SECRET}-ro "}, mutation=False).name == "ro"
    assert auth.authenticate({"x-auth-key": SECRET, "x-auth-email": "ops@example.com"}, mutation=True).name == "ops"
    # A token without an email takes any email.
    assert auth.authenticate({"x-auth-key": SECRET + "-ro", "x-auth-email": "x@y.z"}, mutation=False).name == "ro"
    for headers, mutation, status in [
        ({}, False, 401),
        ({"authorization": "Bearer nope"}, False, 401),
        ({"authorization": SECRET}, False, 401),
        ({"x-auth-key": SECRET}, False, 401),
        ({"x-auth-key": SECRET, "x-auth-email": "other@example.com"}, False, 401),
        ({"authorization": f"Bearer {SECRET}-ro"}, True, 403),
        ({"authorization": f"Bearer {SECRET}x"}, False, 401),
        ({"authorization": "Bearer \udcff"}, False, 401),
    ]:
        with pytest.raises(AuthError) as caught:
            auth.authenticate(headers, mutation=mutation)
        assert caught.value.status == status, headers


def test_state_file_errors_are_one_line(tmp_path: Any) -> None:
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(StateError, match=r"s.json: not a JSON state file"):
        AdminState(str(path)).load()
    path.write_text('{"version": 99}')
    with pytest.raises(StateError, match=r"not a spectrum state file"):
        AdminState(str(path)).load()
    path.write_text('{"version": 1, "apps": [{"app": {"name": "x"}}]}')
    with pytest.raises(StateError, match=r"no app document with an id"):
        AdminState(str(path)).load()
    state = AdminState(str(tmp_path / "no" / "dir" / "s.json"))
    state.save()
    assert (tmp_path / "no" / "dir" / "s.json").exists()


@pytest_twisted.ensureDeferred
async def test_without_tokens_one_is_generated_beside_the_state_file(tmp_path: Any) -> None:
    data = document([echo_app("echo", free_port(), 9)])
    del data["admin"]["tokens"]
    admin = Admin.from_document(tmp_path, data)
    try:
        token_file = tmp_path / "spectrum.admin-token"
        token = token_file.read_text().strip()
        status, answer = await admin.call("GET", "/client/v4/zones", token=token)
        assert status == 200 and answer["result"][0]["id"] == "local"
        status, answer = await admin.call(
            "POST",
            "/client/v4/user/firewall/access_rules/rules",
            {"mode": "block", "configuration": {"target": "ip", "value": "192.0.2.1"}},
            token=token,
        )
        assert status == 200, answer
        status, answer = await admin.call("GET", "/client/v4/zones", token="edit-token-0123456789abcdef")
        assert status == 401
    finally:
        await admin.stop()


def test_twistd_refuses_to_start_when_a_token_cannot_be_read(tmp_path: Any) -> None:
    admin_port = free_port()
    data = document([echo_app("echo", free_port(), 9)])
    data["admin"] = {
        "listen": f"tcp:{admin_port}:interface=127.0.0.1",
        "tokens": [{"name": "ops", "permissions": "edit", "token_env": "SPECTRUM_NO_SUCH_VARIABLE"}],
    }
    config = write_config(tmp_path / "spectrum.json", data)
    result = run(spectrum_command(config))
    assert result.returncode == 1, result
    out = result.stdout + result.stderr
    assert "spectrum: admin.tokens[0] (ops): environment variable SPECTRUM_NO_SUCH_VARIABLE is not set" in out
    assert "Traceback" not in out


def test_twistd_names_a_state_app_that_no_longer_fits(tmp_path: Any) -> None:
    port = free_port()
    data = document([echo_app("echo", port, 9)])
    config = write_config(tmp_path / "spectrum.json", data)
    state = AdminState(str(tmp_path / "spectrum.state.json"))
    state.apps = {"a" * 32: {"app": dict(echo_app("made", port, 9), id="a" * 32), "created_on": "", "modified_on": ""}}
    state.save()
    result = run(spectrum_command(config))
    assert result.returncode == 1, result
    out = result.stdout + result.stderr
    assert (
        f"spectrum.state.json: app 'made' made through the admin API: protocol: {port} on 127.0.0.1"
        " is already used by app 'echo'" in out
    )
    assert "Traceback" not in out


@pytest_twisted.ensureDeferred
async def test_credentials_that_are_not_utf8_are_refused_not_an_error(tmp_path: Any) -> None:
    """Header bytes that are not UTF-8 are wrong credentials: a 401, never a 500."""
    admin = Admin.from_document(tmp_path, document([echo_app("echo", free_port(), 9)]))
    try:
        for headers in (
            {"Authorization": b"Bearer \x80\xff"},
            {"X-Auth-Key": b"\x80\xff", "X-Auth-Email": b"ops\xc3@example.com"},
        ):
            status, answer = await admin.call("GET", "/client/v4/zones", token=None, headers=headers)
            assert status == 401, answer
    finally:
        await admin.stop()
