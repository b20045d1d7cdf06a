"""
The builder's common part: its state, and the checks of single values
(hostnames, addresses, port ranges, file names) the other parts use.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from spectrum.config.messages import ConfigError, _format_path, _show
from spectrum.config.names import _is_hostname
from spectrum.model import PortRange

if TYPE_CHECKING:
    from spectrum.config.messages import _Path, _PathPart


_RANGE = re.compile(r"^([0-9]+)(?:-([0-9]+))?$")


class _Bound(NamedTuple):
    """
    An edge address and port range that an app binds.
    """

    protocol: str
    ip: str
    edge: PortRange
    app: str
    hostnames: tuple[str, ...]
    #: what the app takes on a port shared by protocol (C{""}: not shared so)
    sniff: str = ""
    #: the app answers a protocol's own request for TLS (C{starttls})
    starttls: bool = False


class _Part:
    """
    What every part of the builder shares: the document, where it came from,
    what earlier apps bind and are named, and the leaves (hostnames,
    addresses, port ranges, file names).
    """

    def __init__(self, data: dict[str, Any], source: str | None) -> None:
        self.data = data
        self.source = source
        # What earlier apps bind.
        self.bound: list[_Bound] = []
        self.names: dict[str, _Path] = {}
        self.ids: dict[str, _Path] = {}

    def fail(self, path: Sequence[_PathPart], message: str) -> ConfigError:
        return ConfigError(_format_path(path, self.source or "config"), message)

    def relative(self, text: str) -> str:
        """
        A path from the file, made absolute against the file's directory.
        """
        base = os.path.dirname(os.path.abspath(self.source)) if self.source else os.getcwd()
        return os.path.normpath(os.path.join(base, os.path.expanduser(text)))

    def file(self, path: _Path, name: str) -> str:
        """
        A file named in the config, as an absolute path (relative ones are
        relative to the config file).
        """
        name = os.path.expanduser(name)
        if not os.path.isabs(name) and self.source:
            name = os.path.join(os.path.dirname(os.path.abspath(self.source)), name)
        return os.path.abspath(name)

    def hostname(self, path: _Path, name: str, wildcard: bool = False) -> str:
        folded = name.lower().removesuffix(".")
        if not _is_hostname(folded, wildcard):
            raise self.fail(path, f"{_show(name)} is not a valid hostname")
        return folded

    def address(self, path: _Path, text: str, names: bool) -> str:
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
        if names:
            folded = text.lower().removesuffix(".")
            if _is_hostname(folded):
                return folded
            raise self.fail(path, f"{_show(text)} is neither an IP address nor a valid hostname")
        raise self.fail(path, f"{_show(text)} is not an IP address")

    def port_range(self, path: _Path, value: float | str) -> PortRange:
        if isinstance(value, (int, float)):
            port = int(value)
            return PortRange(port, port)
        match = _RANGE.match(value)
        if match is None:
            raise self.fail(path, f"{_show(value)} is not a port or a range like 1000-2000")
        first = int(match.group(1))
        last = int(match.group(2) or first)
        for port in (first, last):
            if not 1 <= port <= 65535:
                raise self.fail(path, f"port {port} is outside 1-65535")
        if first > last:
            raise self.fail(path, f"range {value} is backwards; write {last}-{first}")
        return PortRange(first, last)

    def origin_range(self, path: _Path, value: float | str, edge: PortRange) -> PortRange:
        origin = self.port_range(path, value)
        if len(origin) != len(edge):
            raise self.fail(
                path,
                f"range {origin} has {len(origin)} port{'s' if len(origin) != 1 else ''}, destination has {len(edge)}",
            )
        return origin
