"""
An app's TLS settings and the edge certificates, as paths and options
(the files themselves are read by L{spectrum.config_files}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spectrum.config.base import _Part
from spectrum.config.messages import _show
from spectrum.model import CertificateFiles, ClientAuth, OriginTls, TlsOptions

if TYPE_CHECKING:
    from spectrum.config.messages import _Path


class _TlsPart(_Part):
    """
    The builder's part for TLS: the edge certificates, and an app's edge TLS,
    client auth and TLS towards its origins, as paths and options.
    """

    def certificates(self) -> tuple[CertificateFiles, ...]:
        """
        The edge certificates' files (read by L{spectrum.config_files}).
        """
        result = []
        for index, raw in enumerate(self.data.get("certificates", [])):
            where = ("certificates", index)
            files = CertificateFiles(
                certificate=self.file(where + ("certificate",), raw["certificate"]),
                private_key=self.file(where + ("private_key",), raw["private_key"]),
            )
            result.append(files)
        return tuple(result)

    def tls(self, path: _Path, raw: dict[str, Any], protocol: str) -> dict[str, Any]:
        """
        The app's TLS fields: mode, edge options, client auth, origin TLS.
        """
        mode = raw.get("tls", "off") or "off"
        terminates = mode != "off"
        if (terminates or "origin_tls" in raw) and protocol != "tcp":
            key = "tls" if terminates else "origin_tls"
            raise self.fail(path + (key,), f"TLS needs protocol tcp, not {protocol}")
        edge_only = "applies only when the edge terminates TLS (tls: flexible, full or strict)"
        options = TlsOptions()
        if "tls_options" in raw:
            if not terminates:
                raise self.fail(path + ("tls_options",), edge_only)
            spec = raw["tls_options"]
            version = spec.get("min_version", options.min_version)
            if isinstance(version, float):
                version = f"{version:.1f}"
            ciphers = spec.get("ciphers")
            alpn = tuple(spec.get("alpn", ()))
            for index, name in enumerate(alpn):
                if not name.isascii():
                    raise self.fail(path + ("tls_options", "alpn", index), f"{_show(name)} is not ASCII")
            options = TlsOptions(min_version=str(version), ciphers=ciphers, alpn=alpn)
        client_auth = None
        if "client_auth" in raw:
            if not terminates:
                raise self.fail(path + ("client_auth",), edge_only)
            client_auth = ClientAuth(ca=self.file(path + ("client_auth", "ca"), raw["client_auth"]["ca"]))
        origin_tls = None
        if "origin_tls" in raw:
            origin_tls = self.origin_tls(path + ("origin_tls",), raw["origin_tls"], mode)
        starttls = raw.get("starttls")
        if starttls is not None and mode != "flexible":
            raise self.fail(
                path + ("starttls",),
                f"needs tls flexible (the origin speaks {starttls} in plaintext), not {_show(mode)}",
            )
        if "allow_plaintext" in raw and starttls != "postgres":
            raise self.fail(path + ("allow_plaintext",), "applies only with starttls postgres")
        return {
            "starttls": starttls,
            "allow_plaintext": raw.get("allow_plaintext", False),
            "tls": mode,
            "tls_options": options,
            "client_auth": client_auth,
            "origin_tls": origin_tls,
            "sni_default": raw.get("sni_default", False),
        }

    def origin_tls(self, path: _Path, spec: dict[str, Any], mode: str) -> OriginTls:
        if mode == "flexible":
            raise self.fail(path, "tls flexible speaks plaintext to the origin; use full or strict for TLS to it")
        ca = None
        if "ca" in spec:
            if mode == "full":
                raise self.fail(path + ("ca",), "tls full does not verify the origin; use strict to verify it")
            ca = self.file(path + ("ca",), spec["ca"])
        server_name = None
        if "server_name" in spec:
            server_name = self.address(path + ("server_name",), spec["server_name"], names=True)
        certificate = private_key = None
        if ("certificate" in spec) != ("private_key" in spec):
            missing = "private_key" if "certificate" in spec else "certificate"
            raise self.fail(path, f"missing key {_show(missing)}: a client certificate needs both")
        if "certificate" in spec:
            certificate = self.file(path + ("certificate",), spec["certificate"])
            private_key = self.file(path + ("private_key",), spec["private_key"])
        return OriginTls(ca=ca, server_name=server_name, certificate=certificate, private_key=private_key)
