"""
TLS for the edge and towards origins: certificates picked by SNI, one
OpenSSL context per app and certificate, mutual TLS, the origin modes
(C{full}: encrypted, not verified; C{strict}: verified with
service-identity), and reloading certificates without a restart.

Files are read when a configuration is applied or the files change, never
during a handshake: the data plane only picks among contexts built earlier.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet import ssl as tssl
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from zope.interface import implementer

from spectrum.fileio import read_regular
from spectrum.model import App, CertificateFiles, Config
from spectrum.proxy import direct

VERSIONS = {
    "1.0": SSL.TLS1_VERSION,
    "1.1": SSL.TLS1_1_VERSION,
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}

# Cloudflare's values for ClientTlsStatus / OriginTlsStatus.
TLS_OK = "OK"
TLS_UNKNOWN = "UNKNOWN"
TLS_HANDSHAKE_FAILED = "HANDSHAKE_FAILED"
TLS_INVALID_SNI = "INVALID_SNI"


class TlsFileError(ValueError):
    """
    A certificate, key or CA file that cannot be used; the text says why in
    one line.
    """


# Files


class LoadedCertificate:
    """
    A certificate chain and its key, read into memory, and the names the
    leaf is valid for.
    """

    def __init__(self, chain: Sequence[x509.Certificate], key: Any, files: Optional[CertificateFiles]) -> None:
        self.chain = tuple(chain)
        self.key = key
        self.files = files
        self.names = certificate_names(chain[0])

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    def matches(self, name: str) -> bool:
        return any(_name_matches(pattern, name) for pattern in self.names)


def _read(path: str, what: str) -> bytes:
    try:
        return read_regular(path)
    except OSError as e:
        raise TlsFileError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_certificates(path: str, what: str = "certificate file") -> List[x509.Certificate]:
    """
    Every certificate in the PEM file C{path}, in order.

    @raise TlsFileError: unreadable, or no certificate in it.
    """
    data = _read(path, what)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TlsFileError(f"{path} holds no PEM certificate")
    return certificates


def load_certificate(files: CertificateFiles) -> LoadedCertificate:
    """
    Read a certificate (chain) and its private key, checking they belong
    together.

    @raise TlsFileError: a file is unreadable or wrong.
    """
    chain = read_certificates(files.certificate)
    key = load_private_key(files.private_key)
    _check_pair(chain[0], key, files.certificate, files.private_key)
    return LoadedCertificate(chain, key, files)


def load_private_key(path: str) -> Any:
    data = _read(path, "private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise TlsFileError(f"{path} holds no usable unencrypted PEM private key ({e})") from None


def _check_pair(certificate: x509.Certificate, key: Any, cert_path: str, key_path: str) -> None:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if certificate.public_key().public_bytes(enc, fmt) != key.public_key().public_bytes(enc, fmt):
        raise TlsFileError(f"the private key {key_path} does not belong to the certificate {cert_path}")


def certificate_names(certificate: x509.Certificate) -> Tuple[str, ...]:
    """
    The DNS names and IP addresses a certificate is for (its SANs, or its
    common name when it has none), lower case.
    """
    names: List[str] = []
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names.extend(name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName))
        names.extend(str(ip) for ip in san.get_values_for_type(x509.IPAddress))
    else:
        for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            value = attribute.value
            if isinstance(value, str):
                names.append(value.lower().rstrip("."))
    return tuple(names)


def _name_matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def ephemeral_certificate(names: Iterable[str]) -> LoadedCertificate:
    """
    A self-signed certificate for C{names} (plus localhost and 127.0.0.1),
    made in memory, so that a TLS app runs before anyone has made
    certificates. Clients must be told to skip verification or trust it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    wanted = ["localhost"] + [n for n in names if n != "localhost"]
    alternatives: List[x509.GeneralName] = [x509.DNSName(n) for n in wanted]
    alternatives.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spectrum self-signed")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return LoadedCertificate([certificate], key, None)


def check_ciphers(ciphers: str) -> None:
    """
    @raise TlsFileError: OpenSSL knows none of C{ciphers}.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    try:
        context.set_cipher_list(ciphers.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise TlsFileError(f"OpenSSL knows no cipher in {ciphers!r}") from None


# Transports


class _TlsTransport(BufferingTLSTransport):
    """
    Twisted's TLS transport, closing cleanly when the relay asks: the relay
    keeps the other leg registered as producer, which would otherwise hold
    the close_notify back forever, and TLS has no half-close, so a
    half-close closes.
    """

    def makeConnection(self, transport: Any) -> None:
        # The handshake's flights go straight to the socket too, not through
        # a write-readiness round of the loop each.
        direct.attach(transport)
        super().makeConnection(transport)

    def loseConnection(self) -> None:
        super().loseConnection()
        self.unregisterProducer()

    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        # How the TCP connection under TLS ended: a peer that closes TCP
        # without close_notify reaches the relay as a lost connection, and
        # only this tells it from a reset. A peer that sent close_notify and
        # closed at once (libpq does) resets the close_notify we answer
        # with, yet it ended cleanly.
        handle = getattr(self, "_tlsConnection", None)
        self.tcp_closed_cleanly = (reason is not None and bool(reason.check(ConnectionDone))) or bool(
            handle is not None and handle.get_shutdown() & SSL.RECEIVED_SHUTDOWN
        )
        super().connectionLost(reason)


class TlsWrapperFactory(TLSMemoryBIOFactory):
    """
    A TLS factory whose transports close cleanly under the relay.
    """

    protocol = _TlsTransport
    noisy = False


# Edge contexts


@implementer(IOpenSSLServerConnectionCreator)
class AppTls:
    """
    The TLS state of one app: a server context per certificate (the
    certificate picked by SNI during the handshake) and client creators for
    its origins.
    """

    def __init__(self, app: App, certificates: Sequence[LoadedCertificate], reactor: Any) -> None:
        self.app = app
        self.certificates = tuple(certificates)
        self.contexts: List[SSL.Context] = []
        self._origin_creators: Dict[Tuple[str, Optional[bytes]], Any] = {}
        self._origin_material: Optional[Tuple[Any, Any]] = None
        if app.terminates_tls:
            for certificate in certificates:
                self.contexts.append(self._server_context(certificate))
            default = self._default_index()
            self.context = self.contexts[default]
            if default != 0:
                self.contexts.insert(0, self.contexts.pop(default))
                self.certificates = (certificates[default],) + tuple(
                    c for i, c in enumerate(certificates) if i != default
                )
            self.context.set_tlsext_servername_callback(self._pick_certificate)
            inner = Factory()
            inner.noisy = False
            self.server_factory = TlsWrapperFactory(self, False, inner, clock=reactor)
        if app.origin_tls_mode != "off":
            self._origin_material = self._load_origin_material()
            # Build the origin contexts now (loading the trust store reads
            # files), not on a client's first connection.
            for origin in app.pool.origins:
                self.origin_creator(origin.address, None)

    def _default_index(self) -> int:
        # The first certificate valid for one of the app's names, else the
        # first.
        for index, certificate in enumerate(self.certificates):
            if any(certificate.matches(name) or name in certificate.names for name in self.app.hostnames):
                return index
        return 0

    def _server_context(self, certificate: LoadedCertificate) -> SSL.Context:
        app = self.app
        options = app.tls_options
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(VERSIONS[options.min_version])
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION)
        if options.ciphers:
            context.set_cipher_list(options.ciphers.encode("ascii"))
        elif VERSIONS[options.min_version] < SSL.TLS1_2_VERSION:
            # OpenSSL 3 refuses TLS 1.0/1.1 at its default security level.
            context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        context.use_certificate(certificate.leaf)
        for extra in certificate.chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(certificate.key)
        context.check_privatekey()
        context.set_session_id(("spectrum-" + app.id)[:32].encode("ascii", "replace"))
        if options.alpn:
            preference = [name.encode("ascii") for name in options.alpn]

            def select(connection: SSL.Connection, offered: List[bytes]) -> Any:
                for name in preference:
                    if name in offered:
                        return name
                return SSL.NO_OVERLAPPING_PROTOCOLS

            context.set_alpn_select_callback(select)
        if app.client_auth is not None:
            context.load_verify_locations(app.client_auth.ca)
            context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verified)
        return context

    def _pick_certificate(self, connection: SSL.Connection) -> None:
        name = connection.get_servername()
        if not name or len(self.contexts) == 1:
            return
        text = name.decode("ascii", "replace").lower().rstrip(".")
        for index, certificate in enumerate(self.certificates):
            if certificate.matches(text):
                if index:
                    connection.set_context(self.contexts[index])
                return

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        return SSL.Connection(self.context, None)

    # origins

    def _load_origin_material(self) -> Tuple[Any, Any]:
        settings = self.app.origin_tls
        client = None
        trust = None
        if settings is not None and settings.certificate and settings.private_key:
            loaded = load_certificate(CertificateFiles(settings.certificate, settings.private_key))
            client = loaded
        if self.app.origin_tls_mode == "strict":
            if settings is not None and settings.ca:
                trust = tssl.trustRootFromCertificates(
                    [
                        tssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM))
                        for c in read_certificates(settings.ca, "origin CA file")
                    ]
                )
            else:
                trust = tssl.platformTrust()
        return trust, client

    def origin_creator(self, address: str, alpn: Optional[bytes]) -> Any:
        """
        The client connection creator for an origin at C{address}, offering
        C{alpn} (the protocol the client chose at the edge) if any; cached.
        """
        settings = self.app.origin_tls
        name = (settings.server_name if settings is not None else None) or address
        key = (name, alpn)
        creator = self._origin_creators.get(key)
        if creator is None:
            creator = self._origin_creators[key] = self._make_origin_creator(name, alpn)
        return creator

    def _make_origin_creator(self, name: str, alpn: Optional[bytes]) -> Any:
        assert self._origin_material is not None
        trust, client = self._origin_material
        protocols = [alpn] if alpn else None
        if self.app.origin_tls_mode == "strict":
            client_certificate = None
            if client is not None:
                client_certificate = tssl.PrivateCertificate.loadPEM(
                    client.leaf.public_bytes(serialization.Encoding.PEM)
                    + client.key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    )
                )
            return tssl.optionsForClientTLS(
                name,
                trustRoot=trust,
                clientCertificate=client_certificate,
                acceptableProtocols=protocols,
                extraCertificateOptions={"raiseMinimumTo": tssl.TLSVersion.TLSv1_2},
            )
        return _UnverifiedClient(name, client, protocols)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClient:
    """
    C{full}: TLS to the origin without checking its certificate.
    """

    def __init__(self, name: str, client: Optional[LoadedCertificate], protocols: Optional[List[bytes]]) -> None:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_verify(SSL.VERIFY_NONE, lambda *args: True)
        if client is not None:
            context.use_certificate(client.leaf)
            for extra in client.chain[1:]:
                context.add_extra_chain_cert(extra)
            context.use_privatekey(client.key)
        if protocols:
            context.set_alpn_protos(protocols)
        self.context = context
        self.server_name: Optional[bytes] = None
        if not _is_ip(name):
            self.server_name = name.encode("idna")

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        if self.server_name:
            connection.set_tlsext_host_name(self.server_name)
        connection.set_connect_state()
        return connection


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _verified(connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
    return bool(ok)


def peer_subject(connection: SSL.Connection) -> Optional[str]:
    """
    The subject of the client's certificate (RFC 4514), if it sent one.
    """
    certificate = connection.get_peer_certificate(as_cryptography=True)
    if certificate is None:
        return None
    return certificate.subject.rfc4514_string()


def describe_tls_error(reason: Any) -> str:
    """
    One line for a failed TLS handshake, from the Failure Twisted reports.
    """
    value = reason.value
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [str(item[2]) for item in value.args[0] if isinstance(item, tuple) and len(item) >= 3]
        if parts:
            return "; ".join(parts)
    return reason.getErrorMessage() or type(value).__name__


def is_verification_error(reason: Any) -> bool:
    """
    Whether a failed origin handshake failed because the origin's
    certificate did not verify: its name (service-identity) or its chain.
    """
    from service_identity import VerificationError

    if reason.check(VerificationError):
        return True
    return "certificate verify failed" in describe_tls_error(reason)


# The store


class EdgeTls:
    """
    The edge's certificates and every app's TLS state, replaced whole when
    a configuration is applied or a certificate file changes; listeners
    look an app's state up per connection, so new handshakes use the new
    certificates while established sessions carry on.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.apps: Dict[str, AppTls] = {}
        self.config: Optional[Config] = None
        self._ephemeral: Optional[Tuple[Tuple[str, ...], LoadedCertificate]] = None
        self._stamps: Dict[str, Tuple[int, int]] = {}
        self._watcher: Optional[LoopingCall] = None

    def prepare(self, config: Config) -> Tuple[Config, Dict[str, AppTls], Dict[str, Tuple[int, int]]]:
        """
        Read every file C{config} names and build the apps' TLS state,
        without using it yet.

        @raise TlsFileError: a file is unreadable or wrong.
        """
        wanted = [app for app in config.apps if app.terminates_tls or app.origin_tls_mode != "off"]
        stamps = {path: _stamp(path) for path in files_of(config)}
        certificates: List[LoadedCertificate] = [load_certificate(files) for files in config.certificates]
        if not certificates and any(app.terminates_tls for app in wanted):
            certificates = [self._self_signed(config)]
        apps = {app.name: AppTls(app, certificates, self.reactor) for app in wanted}
        return config, apps, stamps

    def commit(self, prepared: Tuple[Config, Dict[str, AppTls], Dict[str, Tuple[int, int]]]) -> None:
        self.config, self.apps, self._stamps = prepared

    def update(self, config: Config) -> None:
        """
        Prepare and use C{config}'s TLS state at once.
        """
        self.commit(self.prepare(config))

    def _self_signed(self, config: Config) -> LoadedCertificate:
        names = tuple(sorted({name for app in config.apps if app.terminates_tls for name in app.hostnames}))
        if self._ephemeral is None or self._ephemeral[0] != names:
            self.log.warn(
                "no certificates configured: TLS apps use a self-signed certificate for {names}"
                " made at start (see certs/mkcerts.sh to make real ones)",
                names=", ".join(("localhost",) + names),
            )
            self._ephemeral = (names, ephemeral_certificate(names))
        return self._ephemeral[1]

    # watching files

    def watch(self, interval: float = 2.0) -> None:
        """
        Check the certificate files every C{interval} seconds and reload them
        when one changed.
        """
        if self._watcher is not None:
            return
        self._watcher = LoopingCall(self.check_files)
        self._watcher.clock = self.reactor
        self._watcher.start(interval, now=False)

    def stop(self) -> None:
        if self._watcher is not None and self._watcher.running:
            self._watcher.stop()
        self._watcher = None

    def check_files(self) -> bool:
        """
        Reload the TLS state if a file changed; a bad file is logged and the
        running state stays.

        @return: whether it was reloaded.
        """
        if self.config is None or not self._stamps:
            return False
        try:
            if all(_stamp(path) == stamp for path, stamp in self._stamps.items()):
                return False
            self.update(self.config)
        except (TlsFileError, SSL.Error, ValueError) as e:
            self.log.error("certificate reload refused, old certificates kept: {error}", error=str(e))
            return False
        self.log.info("certificate files changed: reloaded")
        return True


def files_of(config: Config) -> List[str]:
    """
    Every certificate, key and CA file that C{config} names.
    """
    paths: List[str] = []
    for files in config.certificates:
        paths += [files.certificate, files.private_key]
    for app in config.apps:
        if app.client_auth is not None:
            paths.append(app.client_auth.ca)
        settings = app.origin_tls
        if settings is not None:
            paths += [p for p in (settings.ca, settings.certificate, settings.private_key) if p]
    return paths


def _stamp(path: str) -> Tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return (-1, -1)
    return (info.st_mtime_ns, info.st_size)
