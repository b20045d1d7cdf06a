"""
The second pass of a config check: the files a valid config names, and
what this machine's OpenSSL accepts.

L{spectrum.config} reads only the config file itself and imports nothing of
the data plane; what it builds names certificates, CA files, GeoIP databases
and the event log's directory. Whatever starts or reloads a config (C{twistd
spectrum}, a SIGHUP, the admin API's app changes, the cluster, C{spectrum
check}) passes it through L{check_files} after parsing: a problem is the
same one-line L{ConfigError}, naming the place in the file that named the
file::

    certificates[0].certificate: cannot read certificate file '/etc/edge.crt': ...

Files are checked in the order the file names them: the edge certificates,
then each app's (its monitor's CA, its ciphers, its client CA, its origin
TLS), then the GeoIP databases and the event log.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from spectrum.config import ConfigError, load
from spectrum.config.messages import _format_path, _show
from spectrum.geo import GeoIPError, open_database
from spectrum.model import App, CertificateFiles, Config
from spectrum.proxy import tls

#: where a value sits in the file: keys and list indexes
Path = tuple[Any, ...]
_Fail = Callable[[Path, str], ConfigError]


def load_checked(path: str) -> Config:
    """
    L{spectrum.config.load}, then L{check_files}: what a start and a reload
    read.

    @raise ConfigError: the file, or a file it names, cannot be used.
    """
    return check_files(load(path))


def check_files(config: Config) -> Config:
    """
    Check the files C{config} names (and its ciphers against OpenSSL).

    @return: C{config}, unchanged.

    @raise ConfigError: the first problem, named by its place in the file.
    """
    top = config.source or "config"

    def fail(path: Path, message: str) -> ConfigError:
        return ConfigError(_format_path(path, top), message)

    for index, files in enumerate(config.certificates):
        _check_certificate(("certificates", index), files, fail)
    for index, app in enumerate(config.apps):
        _check_app(("apps", index), app, fail)
    for key in ("country_db", "asn_db"):
        name = getattr(config.geoip, key)
        if name is not None:
            try:
                open_database(name).close()
            except GeoIPError as e:
                raise fail(("geoip", key), str(e)) from None
    if config.events is not None:
        name = config.events.path
        directory = os.path.dirname(name)
        if not os.path.isdir(directory):
            raise fail(("events", "path"), f"directory '{directory}' does not exist")
        if os.path.isdir(name):
            raise fail(("events", "path"), f"'{name}' is a directory; name a file")
    return config


def _check_certificate(where: Path, files: CertificateFiles, fail: _Fail) -> None:
    try:
        chain = tls.read_certificates(files.certificate)
    except tls.TlsFileError as e:
        raise fail(where + ("certificate",), str(e)) from None
    try:
        key = tls.load_private_key(files.private_key)
    except tls.TlsFileError as e:
        raise fail(where + ("private_key",), str(e)) from None
    try:
        tls._check_pair(chain[0], key, files.certificate, files.private_key)
    except tls.TlsFileError as e:
        raise fail(where, str(e)) from None


def _check_app(path: Path, app: App, fail: _Fail) -> None:
    monitor = app.pool.monitor
    if monitor is not None and monitor.ca is not None and not os.path.isfile(monitor.ca):
        raise fail(path + ("origin_pool", "monitor", "ca"), f"{_show(monitor.ca)} is not a readable file")
    ciphers = app.tls_options.ciphers
    if ciphers is not None:
        try:
            tls.check_ciphers(ciphers)
        except tls.TlsFileError as e:
            raise fail(path + ("tls_options", "ciphers"), str(e)) from None
    if app.client_auth is not None:
        try:
            tls.read_certificates(app.client_auth.ca, "client CA file")
        except tls.TlsFileError as e:
            raise fail(path + ("client_auth", "ca"), str(e)) from None
    origin = app.origin_tls
    if origin is None:
        return
    where = path + ("origin_tls",)
    if origin.ca is not None:
        try:
            tls.read_certificates(origin.ca, "origin CA file")
        except tls.TlsFileError as e:
            raise fail(where + ("ca",), str(e)) from None
    if origin.certificate is not None and origin.private_key is not None:
        try:
            tls.load_certificate(CertificateFiles(origin.certificate, origin.private_key))
        except tls.TlsFileError as e:
            raise fail(where + ("certificate",), str(e)) from None
