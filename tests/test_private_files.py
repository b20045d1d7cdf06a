"""
Files spectrum writes whole (the generated admin token, the admin state
file) go through a temporary file that a local user who can write the
directory can neither predict nor plant: a symlink or a world-readable file
left at C{NAME.tmp} is not written through, and the result is mode 0600.
"""

from __future__ import annotations

import json
import os
import stat
import urllib.request
from typing import Any

from adminkit import document, echo_app
from conftest import free_port
from procs import start_twistd, wait_until, write_config


def planted(tmp_path: Any) -> Any:
    """
    What a local user leaves in the directory: C{spectrum.admin-token.tmp}
    a symlink to a file root should never write, C{spectrum.state.json.tmp}
    a world-writable file they keep open to read what lands in it.
    """
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, tmp_path / "spectrum.admin-token.tmp")
    trap = tmp_path / "spectrum.state.json.tmp"
    trap.write_text("")
    os.chmod(trap, 0o666)
    return victim, trap


def test_token_and_state_are_not_written_through_planted_files(tmp_path: Any) -> None:
    victim, trap = planted(tmp_path)
    admin_port = free_port()
    data = document([echo_app("echo", free_port(), 9)])
    data["admin"] = {"listen": f"tcp:{admin_port}:interface=127.0.0.1"}
    config = write_config(tmp_path / "spectrum.json", data)
    proxy = start_twistd(config, tmp_path / "twistd.log", [admin_port])
    try:
        token_file = tmp_path / "spectrum.admin-token"
        token = wait_until(lambda: token_file.exists() and token_file.read_text().strip(), what="the token")
        body = json.dumps({"mode": "block", "configuration": {"target": "ip", "value": "192.0.2.1"}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{admin_port}/client/v4/user/firewall/access_rules/rules",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
    finally:
        proxy.stop()
    assert victim.read_text() == "precious\n"
    assert os.path.islink(tmp_path / "spectrum.admin-token.tmp")
    assert trap.read_text() == ""
    state_file = tmp_path / "spectrum.state.json"
    assert "192.0.2.1" in state_file.read_text()
    for written in (token_file, state_file):
        info = os.lstat(written)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600, written
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(
        [
            "victim",
            "spectrum.admin-token.tmp",
            "spectrum.state.json.tmp",
            "spectrum.json",
            "twistd.log",
            "spectrum.admin-token",
            "spectrum.state.json",
        ]
    )
