"""
Read a configuration file (YAML or JSON), check it, and build the model.

Checking happens in two passes: L{schema.json <spectrum>} first (shapes,
types, unknown keys), then the checks a schema cannot express (port ranges,
address literals, edge ports shared between apps).  Every problem is raised
as one L{ConfigError} whose text names the place in the file::

    apps[1].ports[0].origin_port: range 40000-40010 has 11 ports, destination has 10

Like the PROXY protocol and SNI parsers, this is pure: no reactor, no I/O
beyond reading the file named to L{load}, and no import of the data plane.
The files a config names (certificates, CA files, GeoIP databases, the event
log's directory) are checked after parsing, by L{spectrum.config_files}.

The parts: L{messages <spectrum.config.messages>} (the error, the schema and
its wording), L{decode <spectrum.config.decode>} (YAML and JSON),
L{build <spectrum.config.build>} (the top level), L{apps
<spectrum.config.apps>}, L{origins <spectrum.config.origins>}, L{tls
<spectrum.config.tls>}, L{base <spectrum.config.base>} (single values),
L{names <spectrum.config.names>} and L{loops <spectrum.config.loops>}.
"""

from __future__ import annotations

import os

from jsonschema.exceptions import best_match

from spectrum.config.apps import DEFAULT_IPS
from spectrum.config.build import _Builder
from spectrum.config.decode import read
from spectrum.config.loops import find_loop
from spectrum.config.messages import ConfigError, _describe, _format_path, _got, _refuse_non_finite, _validator
from spectrum.model import Config

__all__ = ["DEFAULT_IPS", "ConfigError", "default_config_path", "find_loop", "load", "parse", "read"]


def default_config_path() -> str:
    """
    The path of the configuration that ships with the package, used when
    none is given: two loopback apps (SSH and Redis).
    """
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package, "default.yaml")


def load(path: str) -> Config:
    """
    Read, check and build the configuration in the file C{path}.

    C{.json} files are read as JSON; anything else as YAML (which JSON is
    nearly a subset of).

    @raise ConfigError: the file cannot be read or decoded, or what it holds
        is not a valid configuration.
    """
    name = os.fspath(path)
    return parse(read(name), source=name)


def parse(data: object, source: str | None = None) -> Config:
    """
    Check and build the configuration from an already decoded object (a
    mapping as JSON or YAML would give).

    @param source: where C{data} came from, kept on the L{Config} and used
        as the path of problems with the whole document.

    @raise ConfigError: C{data} is not a valid configuration.
    """
    top = source or "config"
    if data is None:
        raise ConfigError(top, "the configuration is empty")
    if not isinstance(data, dict):
        raise ConfigError(top, f"expected a mapping at the top, got {_got(data)}")
    _refuse_non_finite(data, [], top)
    validator = _validator()
    error = best_match(validator.iter_errors(data))
    if error is not None:
        raise ConfigError(_format_path(error.absolute_path, top), _describe(error))
    return _Builder(data, source).build()
