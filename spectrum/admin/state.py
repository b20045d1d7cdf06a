"""
What the admin API changed, kept across restarts: the apps created through
the API (as config documents, so they go through the same checks as the
file's) and the access rules added through it.

The state file is JSON (mode 0600), written whole to an unpredictable
temporary file and renamed over the old one (L{write_atomically}), so a crash leaves either the old or the new state::

    {"version": 1,
     "apps": [{"app": {...config app...}, "created_on": "...", "modified_on": "..."}],
     "access_rules": [{"mode": ..., "configuration": {...}, "notes": ..., "scope": ...,
                       "app": ..., "id": ..., "created_on": ..., "modified_on": ...}]}

The running configuration is the config file's document with the state's
apps appended (L{AdminState.compose}); L{AdminState.loader} gives the
service a loader that does that on start and on every reload.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable, Dict, List, Optional

from spectrum.config import ConfigError, parse, read
from spectrum.fileio import read_regular, write_atomically
from spectrum.model import Config

VERSION = 1


class StateError(Exception):
    """
    The state file cannot be read or written; C{str()} is one line.
    """


def default_state_file(config_source: Optional[str]) -> str:
    """
    Where the state lives when C{admin.state_file} is not given: next to the
    config file (C{spectrum.yaml} -> C{spectrum.state.json}); for the
    embedded default config, in C{$XDG_STATE_HOME/spectrum} (or
    C{~/.local/state/spectrum}).
    """
    from spectrum.config import default_config_path

    if config_source and os.path.abspath(config_source) != os.path.abspath(default_config_path()):
        stem = os.path.splitext(os.path.abspath(config_source))[0]
        return stem + ".state.json"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "spectrum", "default.state.json")


def token_file_for(state_file: str) -> str:
    """
    Where a generated admin token is written: beside the state file
    (C{spectrum.state.json} -> C{spectrum.admin-token}).
    """
    if state_file.endswith(".state.json"):
        return state_file[: -len(".state.json")] + ".admin-token"
    return state_file + ".admin-token"


class AdminState:
    """
    The config file's document, the apps and rules made through the API,
    and the state file that keeps the latter.

    @ivar base: the config file's document as decoded (apps from the file).
    @ivar apps: id -> {"app": document, "created_on", "modified_on"}, in
        creation order.
    @ivar rules: the access rules made through the API, as stored.
    """

    def __init__(self, path: Optional[str], base: Optional[Dict[str, Any]] = None) -> None:
        self.path = path
        self.base: Dict[str, Any] = base if base is not None else {}
        self.apps: Dict[str, Dict[str, Any]] = {}
        self.rules: List[Dict[str, Any]] = []
        #: the config file the base came from
        self.base_source: Optional[str] = None

    # the file ------------------------------------------------------------

    def load(self) -> None:
        """
        Read the state file, if there is one.

        @raise StateError: it cannot be read or is not a state file.
        """
        if self.path is None or not os.path.exists(self.path):
            return
        try:
            data = json.loads(read_regular(self.path).decode("utf-8"))
        except OSError as e:
            raise StateError(f"{self.path}: cannot read the state file: {e.strerror or e}") from None
        except ValueError as e:
            raise StateError(f"{self.path}: not a JSON state file: {e}") from None
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise StateError(f"{self.path}: not a spectrum state file (version {VERSION})")
        apps = data.get("apps", [])
        rules = data.get("access_rules", [])
        if not isinstance(apps, list) or not isinstance(rules, list):
            raise StateError(f"{self.path}: apps and access_rules must be lists")
        self.apps = {}
        for entry in apps:
            if not isinstance(entry, dict) or not isinstance(entry.get("app"), dict) or "id" not in entry["app"]:
                raise StateError(f"{self.path}: an app entry has no app document with an id")
            self.apps[entry["app"]["id"]] = entry
        self.rules = [rule for rule in rules if isinstance(rule, dict)]

    def save(self) -> None:
        """
        Write the state file whole (L{write_atomically}).

        @raise StateError: it cannot be written.
        """
        if self.path is None:
            return
        data = {"version": VERSION, "apps": list(self.apps.values()), "access_rules": self.rules}
        try:
            write_atomically(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
        except OSError as e:
            raise StateError(f"{self.path}: cannot write the state file: {e.strerror or e}") from None

    # the configuration -----------------------------------------------------

    def compose(
        self, apps: Optional[Dict[str, Dict[str, Any]]] = None, base: Optional[Dict[str, Any]] = None
    ) -> Dict[str, Any]:
        """
        The running configuration document: the file's, with the API's apps
        (C{apps}, or the current ones) after the file's own.
        """
        document = copy.deepcopy(self.base if base is None else base)
        entries = self.apps if apps is None else apps
        document["apps"] = list(document.get("apps") or []) + [copy.deepcopy(e["app"]) for e in entries.values()]
        return document

    def build(self, apps: Optional[Dict[str, Dict[str, Any]]] = None) -> Config:
        """
        The L{Config} of L{compose}, checked as a config file is.

        @raise ConfigError: it is not valid, or a file it names cannot be used.
        """
        from spectrum.config_files import check_files

        return check_files(parse(self.compose(apps), source=self.base_source))

    def file_app_count(self) -> int:
        return len(self.base.get("apps") or [])

    def loader(self) -> Callable[[str], Config]:
        """
        A config loader for L{spectrum.service.SpectrumService}: the file at
        the path, plus the API's apps; the file's document is kept as the
        base only once the whole is valid.
        """

        from spectrum.config_files import check_files

        def load(path: str) -> Config:
            raw = read(path)
            if not isinstance(raw, dict):
                # parse() words this error.
                return parse(raw, source=path)
            try:
                config = check_files(parse(self.compose(base=raw), source=path))
            except ConfigError as e:
                raise self._blame(e, len(raw.get("apps") or [])) from None
            self.base = raw
            self.base_source = path
            return config

        return load

    def _blame(self, error: ConfigError, file_apps: int) -> ConfigError:
        """
        A config error in an app the API made, named as such (its place in
        the composed document means nothing to the file's author).
        """
        index = _api_app_index(error.path)
        if index is None or index < file_apps:
            return error
        entries = list(self.apps.values())
        if index - file_apps >= len(entries):
            return error
        name = entries[index - file_apps]["app"].get("name")
        return ConfigError(
            f"{self.path}: app {name!r} made through the admin API",
            describe_error(error, index),
        )


def service_state(service: Any) -> AdminState:
    """
    C{service.admin_state}, made on first use: the config file the service
    was started from (if it reads as a document) is its base.
    """
    state: Optional[AdminState] = getattr(service, "admin_state", None)
    if state is None:
        state = AdminState(None)
        source = service.config.source
        if source:
            try:
                document = read(source)
            except ConfigError:
                document = None
            if isinstance(document, dict):
                state.base = document
                state.base_source = source
        service.admin_state = state
        service.rules.state = state
    return state


def _api_app_index(path: str) -> Optional[int]:
    if not path.startswith("apps["):
        return None
    number = path[5:].split("]", 1)[0]
    return int(number) if number.isdigit() else None


def describe_error(error: ConfigError, index: int) -> str:
    """
    A config error about the app at C{apps[index]} worded for an API body:
    C{apps[3].origin_direct[0]: ...} becomes C{origin_direct[0]: ...}.
    """
    prefix = f"apps[{index}]"
    path = error.path
    if path == prefix:
        return error.message
    if path.startswith(prefix + "."):
        return f"{path[len(prefix) + 1 :]}: {error.message}"
    if path.startswith(prefix + "["):
        return f"{path[len(prefix) :]}: {error.message}"
    return str(error)
