"""
The schema and its messages: L{ConfigError}, one line naming the place in
the file, and the wording of what L{schema.json <spectrum>} refuses.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any

import jsonschema
from jsonschema.exceptions import ValidationError

if TYPE_CHECKING:
    # Where a value sits in the document: keys and list indexes.
    _PathPart = str | int
    _Path = tuple[_PathPart, ...]


class ConfigError(Exception):
    """
    A configuration that cannot be used.

    C{str(error)} is one line, C{"<path>: <message>"}, where the path names
    the place in the file (C{apps[1].ports[0].origin_port}) or, for problems
    with the file as a whole, the file itself.

    @ivar path: where the problem is.
    @ivar message: what it is.
    """

    def __init__(self, path: str, message: str) -> None:
        # One line, whatever the wording underneath produced.
        self.path = " ".join(path.split())
        self.message = " ".join(message.split())
        super().__init__(f"{self.path}: {self.message}")

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _refuse_non_finite(value: object, path: list[_PathPart], top: str) -> None:
    """
    @raise ConfigError: a number in C{value} is infinite or not a number
        (YAML's C{.inf} and C{.nan}; JSON's C{Infinity}, C{NaN}, or C{1e400},
        which reads as infinity), which no check by range can catch.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(_format_path(path, top), f"must be a finite number, got {_show(value)}")
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_non_finite(item, path + [key], top)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_non_finite(item, path + [index], top)


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    schema = json.loads(resources.files("spectrum").joinpath("schema.json").read_text("utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


_TYPE_NAMES = {
    "object": "mapping",
    "array": "list",
    "string": "string",
    "integer": "integer",
    "number": "number",
    "boolean": "boolean",
    "null": "null",
}


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def _show(value: object) -> str:
    """
    A short rendering of a value from the file, as its author wrote it.
    """
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return "'" + text.replace("\n", "\\n") + "'"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "a " + _type_name(value)


def _got(value: object) -> str:
    if isinstance(value, (str, bool, int, float)):
        return f"{_type_name(value)} {_show(value)}"
    return _show(value)


def _format_path(parts: Iterable[_PathPart], top: str) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif text:
            text += f".{part}"
        else:
            text = str(part)
    return text or top


def _describe(error: ValidationError) -> str:
    keyword = error.validator
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}

    if keyword in ("type", "pattern", "anyOf", "enum", "not"):
        # A hint in the schema says it better than the keyword can.
        hinted: ValidationError | None = error
        while hinted is not None:
            if isinstance(hinted.schema, dict) and "x-message" in hinted.schema:
                return str(hinted.schema["x-message"]).format(value=_show(value))
            hinted = hinted.parent

    if keyword == "additionalProperties":
        known = list(schema.get("properties", {}))
        extra = [key for key in value if key not in known]
        if len(extra) == 1:
            close = difflib.get_close_matches(str(extra[0]), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            return f"unknown key {_show(extra[0])}{hint}"
        return "unknown keys " + ", ".join(_show(key) for key in extra)
    if keyword == "required":
        missing = [key for key in error.validator_value if key not in value]
        return "missing key " + ", ".join(_show(key) for key in missing)
    if keyword == "oneOf" and all(set(branch) == {"required"} for branch in error.validator_value):
        keys = [key for branch in error.validator_value for key in branch["required"]]
        if error.context:
            return "needs " + " or ".join(keys)
        return "give only one of " + ", ".join(keys)
    if keyword == "type":
        expected = error.validator_value
        if isinstance(expected, str):
            expected = [expected]
        names = " or ".join(_TYPE_NAMES.get(t, t) for t in expected)
        return f"expected {names}, got {_got(value)}"
    if keyword == "enum":
        choices = ", ".join(_show(choice) for choice in error.validator_value)
        return f"expected one of {choices}; got {_show(value)}"
    if keyword == "minimum":
        return f"must be at least {error.validator_value}, got {_show(value)}"
    if keyword == "maximum":
        return f"must be at most {error.validator_value}, got {_show(value)}"
    if keyword == "exclusiveMinimum":
        return f"must be more than {error.validator_value}, got {_show(value)}"
    if keyword == "minItems":
        count = error.validator_value
        return f"needs at least {count} item{'s' if count != 1 else ''}"
    if keyword == "minLength":
        return "must not be empty"
    if keyword == "pattern":
        return f"{_show(value)} is not in the expected form"
    return str(error.message)
