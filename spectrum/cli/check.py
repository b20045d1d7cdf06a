"""
C{spectrum check FILE}: everything C{twistd spectrum} checks before it
binds a port, and nothing it does after: the file (schema and semantic
checks, certificate, CA and GeoIP files), and with an admin, the state
file (its apps must still fit the file) and the configured tokens. No port
is bound and no file is written (a start would generate a token).
"""

from __future__ import annotations

from typing import Optional

from spectrum.config import ConfigError, default_config_path
from spectrum.config_files import load_checked
from spectrum.model import Config


class CheckError(Exception):
    """
    The file would not start; C{str()} is the line a start prints, less
    its C{spectrum: } prefix.
    """


def check(path: Optional[str] = None) -> str:
    """
    Check the config file at C{path} (the built-in default without one) as
    a start does; return the one-line summary C{spectrum check} prints.

    @raise CheckError: a start would refuse it.
    """
    from spectrum.admin.auth import TokenError, resolve
    from spectrum.admin.state import AdminState, StateError, default_state_file

    path = path or default_config_path()
    state = None
    try:
        config = load_checked(path)
        if config.admin is not None:
            # As C{spectrum.tap.Options} and the admin site do at start.
            state = AdminState(config.admin.state_file or default_state_file(path))
            state.load()
            config = state.loader()(path)
            assert config.admin is not None
            resolve(config.admin.tokens)
    except (ConfigError, StateError, TokenError) as e:
        raise CheckError(str(e)) from None
    summary = f"{path}: ok: {describe(config)}"
    if state is not None and (state.apps or state.rules):
        summary += (
            f"; from the state file {state.path}: {_count(len(state.apps), 'app')},"
            f" {_count(len(state.rules), 'access rule')}"
        )
    return summary


def describe(config: Config) -> str:
    """
    C{2 apps, 11 edge ports (1 TCP, 10 UDP), 1 access rule, admin on ...}.
    """
    ports = {(app.protocol, port) for app in config.apps for port in app.edge_ports()}
    tcp = sum(1 for protocol, _ in ports if protocol == "tcp")
    parts = [
        _count(len(config.apps), "app"),
        f"{_count(len(ports), 'edge port')} ({tcp} TCP, {len(ports) - tcp} UDP)",
        _count(len(config.access_rules), "access rule"),
    ]
    if config.admin is not None:
        parts.append(f"admin on {config.admin.listen}")
    return ", ".join(parts)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
