"""
An app's place on an edge port shared by protocol (C{sniff}), and the
checks across the apps of such a port.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from spectrum.config.base import _Bound, _Part
from spectrum.config.messages import _show
from spectrum.config.names import _share_a_port
from spectrum.model import App

if TYPE_CHECKING:
    from spectrum.config.messages import _Path

#: the protocols whose apps are told apart by hostname
_NAMED = ("tls", "minecraft")


class _SniffPart(_Part):
    """
    The builder's part for C{sniff}: an app's own settings, whether two
    apps on one port can be told apart, and what the apps of a port must
    agree on.
    """

    def sniff(self, path: _Path, raw: dict[str, Any], protocol: str) -> dict[str, Any]:
        """
        The app's C{sniff} fields, checked against its other settings.
        """
        sniff = raw.get("sniff")
        if sniff is not None and protocol != "tcp":
            raise self.fail(path + ("sniff",), f"tells TCP protocols apart; it applies to tcp apps, not {protocol}")
        tls = raw.get("tls", "off") or "off"
        if sniff not in (None, "tls") and tls != "off":
            raise self.fail(
                path + ("tls",), f"terminates TLS, so its clients start with TLS: use sniff tls, not {_show(sniff)}"
            )
        if sniff is not None and "starttls" in raw:
            raise self.fail(path + ("starttls",), "cannot be told apart on a port shared by protocol; remove sniff")
        if sniff is not None and raw.get("sni_default") and sniff not in _NAMED:
            raise self.fail(path + ("sni_default",), f"sniff {sniff} routes by no hostname; only tls and minecraft do")
        wait = raw.get("sniff_wait")
        if wait is not None:
            if sniff != "any":
                raise self.fail(path + ("sniff_wait",), "applies only with sniff any")
            if math.isnan(wait):
                raise self.fail(path + ("sniff_wait",), "expected seconds, got nan")
        message = raw.get("minecraft_unknown_message")
        if message is not None and sniff != "minecraft":
            raise self.fail(path + ("minecraft_unknown_message",), "applies only with sniff minecraft")
        fields: dict[str, Any] = {"sniff": sniff}
        if wait is not None:
            fields["sniff_wait"] = float(wait)
        if message is not None:
            fields["minecraft_unknown_message"] = message
        return fields

    @staticmethod
    def sniff_clash(used: str, sniff: str, hostnames: tuple[str, ...], other: _Bound) -> str | None:
        """
        Why an app taking C{sniff} cannot share a port with C{other}, if it
        cannot; L{None} when the hostnames must decide.
        """
        if not sniff or not other.sniff:
            return f"{used}; apps sharing an edge port by protocol each set sniff"
        if sniff != other.sniff:
            return ""
        if sniff not in _NAMED:
            return f"{used}, which also takes {sniff}; only tls and minecraft apps share a protocol (by hostname)"
        if not hostnames or not other.hostnames:
            return f"{used}, which also takes {sniff}; apps taking {sniff} on one port each need distinct hostnames"
        return None

    def sniff_ports(self, apps: tuple[App, ...]) -> None:
        """
        The C{minecraft} apps of a port agree on the message for a name
        none of them has.
        """
        for index, app in enumerate(apps):
            if app.sniff != "minecraft":
                continue
            for other in apps[:index]:
                if other.sniff != "minecraft" or other.minecraft_unknown_message == app.minecraft_unknown_message:
                    continue
                if _share_a_port(app, other):
                    raise self.fail(
                        ("apps", index, "minecraft_unknown_message"),
                        f"differs from that of app {_show(other.name)}, which shares an edge port with it",
                    )
