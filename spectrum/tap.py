"""
C{twistd spectrum}: command-line options and the service they make.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.python import usage

from spectrum.config import ConfigError, default_config_path, load
from spectrum.model import Config


class Options(usage.Options):
    """
    Options of C{twistd spectrum}.
    """

    synopsis = "[--config FILE]"
    longdesc = (
        "Run the spectrum edge proxy. Without --config it runs the embedded "
        "default config (loopback ports, in-memory store)."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (YAML or JSON)."],
        ["drain-timeout", None, 10.0, "Seconds open connections get to finish at stop.", float],
        ["workers", None, None, "Processes sharing the edge ports (overrides workers: in the config).", int],
        ["worker", None, None, "(internal) Run as worker N of a supervisor.", int],
        ["store-socket", None, None, "(internal) The supervisor's store socket, for a worker."],
        [
            "certificate-check",
            None,
            2.0,
            "Seconds between checks of the certificate files for changes (0: only reload on SIGHUP).",
            float,
        ],
    ]

    config: Optional[Config] = None
    #: the admin API's state (apps and rules it made), when there is an admin
    admin_state: Any = None

    def opt_version(self) -> None:
        """
        Display spectrum's version (and Twisted's and Python's) and exit.
        """
        from spectrum import version_line

        print(version_line())
        raise SystemExit(0)

    def _with_admin_state(self, path: str, config: Config) -> Config:
        """
        The config with the apps the admin API made (kept in its state file)
        added to the file's.
        """
        from spectrum.admin.state import AdminState, StateError, default_state_file

        assert config.admin is not None
        state = AdminState(config.admin.state_file or default_state_file(path))
        try:
            state.load()
        except StateError as e:
            raise SystemExit(f"spectrum: {e}") from None
        self.admin_state = state
        return state.loader()(path)

    def postOptions(self) -> None:
        path = self["config"] or default_config_path()
        try:
            self.config = load(path)
            if self.config.admin is not None:
                self.config = self._with_admin_state(path, self.config)
        except ConfigError as e:
            # One line naming the place in the file; nothing has been bound.
            raise SystemExit(f"spectrum: {e}") from None
        if self["drain-timeout"] < 0:
            raise usage.UsageError("--drain-timeout must be 0 or more seconds")
        if self["workers"] is not None and not 1 <= self["workers"] <= 256:
            raise usage.UsageError("--workers must be a number from 1 to 256")
        if self["certificate-check"] < 0:
            raise usage.UsageError("--certificate-check must be 0 or more seconds")


def makeService(options: Options) -> Any:
    """
    The service for C{options}: a L{spectrum.service.SpectrumService}.
    """
    from spectrum.service import SpectrumService

    assert options.config is not None
    config = options.config
    if options["worker"] is None:
        _log_start(options["config"])
    workers = options["workers"] or config.workers
    if options["worker"] is None and workers > 1:
        from spectrum.supervisor import make_supervisor

        return make_supervisor(
            config, workers, options["drain-timeout"], extra=["--certificate-check", str(options["certificate-check"])]
        )
    if options["worker"]:
        config = _worker_config(config, options["worker"])
    service = SpectrumService(
        config,
        drain_timeout=options["drain-timeout"],
        handle_sighup=True,
        **_admin_arguments(options),
    )
    _add_store(service, config, options)
    from spectrum.memory import Trimmer

    Trimmer(service.reactor).setServiceParent(service)
    service.certificate_check_interval = options["certificate-check"]
    return service


def _log_start(path: Optional[str]) -> None:
    from twisted.logger import Logger

    from spectrum import version_line

    what = f"the config file {path}" if path else f"the built-in default config ({default_config_path()})"
    Logger().info("{version} starting with {what}", version=version_line(), what=what)


def _worker_config(config: Config, worker: int) -> Config:
    """
    Worker N > 0 of C{workers: N}: the admin site runs in worker 0 only,
    and each worker writes an event log of its own (C{events.w1.jsonl}).
    """
    import os

    import attr

    events = config.events
    if events is not None:
        stem, ext = os.path.splitext(events.path)
        events = attr.evolve(events, path=f"{stem}.w{worker}{ext}")
    return attr.evolve(config, admin=None, events=events)


def _add_store(service: Any, config: Config, options: Options) -> None:
    from spectrum.cluster import Cluster, node_name
    from spectrum.store import make_store

    worker = options["worker"]
    node = node_name(config, worker)
    if worker is not None:
        from spectrum.workers import ParentWatch

        service.reuse_port = True
        ParentWatch(service.reactor).setServiceParent(service)
    if options["store-socket"]:
        from spectrum.store.shared import SharedStore

        store = SharedStore(options["store-socket"], node=node, reactor=service.reactor)
    else:
        store = make_store(config.store, node=node, reactor=service.reactor)
    Cluster(store, reactor=service.reactor).attach(service)


def _admin_arguments(options: Options) -> Any:
    state = options.admin_state
    if state is None:
        return {}
    return {"admin_state": state, "loader": state.loader()}
