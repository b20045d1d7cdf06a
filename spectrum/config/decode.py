"""
Reading a config file: JSON by extension, else YAML, a key given twice
refused in either.
"""

from __future__ import annotations

import json
import os
from typing import Any

import yaml

from spectrum.config.messages import ConfigError, _show
from spectrum.fileio import read_regular


def read(path: str) -> object:
    """
    The decoded document in the file C{path} (JSON by extension, else YAML),
    not yet checked: what L{load} hands to L{parse}. A file holding one app
    object (C{{"name": ..., "protocol": "tcp/22", ...}}, as Cloudflare
    shows an app) reads as a config with that one app.

    @raise ConfigError: the file cannot be read or decoded.
    """
    name = os.fspath(path)
    try:
        raw = read_regular(name)
    except OSError as e:
        raise ConfigError(name, f"cannot read the file: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(name, f"not UTF-8 text (byte {e.start})") from None
    if os.path.splitext(name)[1].lower() == ".json":
        document = _decode_json(name, text)
    else:
        document = _decode_yaml(name, text)
    # "protocol" is an app's key, never a config's.
    if isinstance(document, dict) and "protocol" in document and "apps" not in document:
        return {"apps": [document]}
    return document


class _UniqueKeyLoader(yaml.SafeLoader):
    """
    A safe loader that refuses a key given twice in one mapping, which
    plain YAML would settle silently by keeping the last.
    """

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {_show(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _decode_yaml(name: str, text: str) -> object:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(name, f"{where}{problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(name, f"invalid YAML: {e}") from None


def _decode_json(name: str, text: str) -> object:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise ConfigError(name, f"duplicate key {_show(key)}")
            result[key] = value
        return result

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(name, f"line {e.lineno}, column {e.colno}: {e.msg}") from None
