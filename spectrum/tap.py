"""
C{twistd spectrum}: command-line options and the service they make.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, NoReturn, Optional

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python import usage
from zope.interface import implementer

from spectrum.config import ConfigError, default_config_path
from spectrum.model import Config


def _workers_option(value: str) -> int:
    """C{--workers}: a count, or C{auto} for one per core."""
    if value == "auto":
        from spectrum.config.build import usable_cores

        return usable_cores()
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"--workers must be a number from 1 to 256 or auto, got {value!r}") from None


_workers_option.coerceDoc = "A number from 1 to 256, or auto."  # type: ignore[attr-defined]


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
        [
            "workers",
            None,
            None,
            "Processes sharing the edge ports, or auto for one per core (overrides workers: in the config).",
            _workers_option,
        ],
        ["worker", None, None, "(internal) Run as worker N of a supervisor.", int],
        ["store-socket", None, None, "(internal) The supervisor's store socket, for a worker."],
        ["ready-fd", None, None, "(internal) Where a worker tells its supervisor that it started.", int],
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
            self.fail(f"spectrum: {e}")
        self.admin_state = state
        return state.loader()(path)

    def fail(self, line: str) -> NoReturn:
        """
        Exit with status 1 and C{line}: a worker tells its supervisor, which
        reports it once for all; otherwise it is the message on stderr.
        """
        fd = self["ready-fd"]
        if fd is not None:
            from spectrum.workers import report

            report(fd, f"failed {line}")
            raise SystemExit(1)
        raise SystemExit(line)

    def postOptions(self) -> None:
        from spectrum.config_files import load_checked

        path = self["config"] or default_config_path()
        try:
            self.config = load_checked(path)
            if self.config.admin is not None:
                self.config = self._with_admin_state(path, self.config)
        except ConfigError as e:
            # One line naming the place in the file; nothing has been bound.
            self.fail(f"spectrum: {e}")
        if self["drain-timeout"] < 0:
            raise usage.UsageError("--drain-timeout must be 0 or more seconds")
        if self["workers"] is not None and not 1 <= self["workers"] <= 256:
            raise usage.UsageError("--workers must be a number from 1 to 256 or auto")
        if self["certificate-check"] < 0:
            raise usage.UsageError("--certificate-check must be 0 or more seconds")


def makeService(options: Options) -> Any:
    """
    The service for C{options}: a L{spectrum.service.SpectrumService}.
    """
    from spectrum.compose import build

    assert options.config is not None
    config = options.config
    if options["worker"] is None:
        _log_start(options["config"])
    workers = options["workers"] or config.workers
    if options["worker"] is None and workers > 1:
        from spectrum.supervisor import make_supervisor

        return _start_before_daemonizing(
            make_supervisor(
                config,
                workers,
                options["drain-timeout"],
                extra=["--certificate-check", str(options["certificate-check"])],
            ),
            options,
        )
    if options["worker"]:
        config = _worker_config(config, options["worker"])
    service = build(
        config,
        drain_timeout=options["drain-timeout"],
        handle_sighup=True,
        store=_store(config, options),
        **_admin_arguments(options),
    )
    if options["worker"] is not None:
        _as_worker(service)
    from spectrum.memory import Trimmer

    Trimmer(service.reactor).setServiceParent(service)
    service.certificate_check_interval = options["certificate-check"]
    if options["ready-fd"] is not None:
        from spectrum.workers import ReadyReport

        ReadyReport(service.reactor, options["ready-fd"]).setServiceParent(service)
    return _start_before_daemonizing(service, options)


class _StartedEarly(MultiService):
    """
    Holds a service whose privileged start already ran, before twistd
    wrote its pidfile and forked: twistd's own call to it is a no-op.
    """

    def __init__(self, early_log: _EarlyLog) -> None:
        super().__init__()
        self.early_log = early_log

    def privilegedStartService(self) -> None:
        pass

    def startService(self) -> None:
        # Logging has begun by now.
        self.early_log.close()
        super().startService()


def _start_before_daemonizing(service: Any, options: Options) -> Any:
    """
    Under twistd, do the privileged start (bind the edge and admin ports,
    open the event log) now, before twistd writes its pidfile and, without
    C{-n}, forks into a daemon: a start error is then one line on stderr
    and exit status 1, with no pidfile left behind, in both modes.

    Otherwise twistd forks first and starts the service in the daemon,
    and its parent waits for a start status on a pipe that our one-line
    start errors (C{SystemExit}) never write: it hung, leaving a pidfile
    that named a dead process. The bound sockets and open files pass to
    the daemon through the fork.
    """
    twistd = getattr(options, "parent", None)
    # C{twist} (python -m twisted) neither forks nor writes a pidfile, and
    # has no such options. (Under C{--chroot} the files are opened outside,
    # where the config that names them was read and checked.)
    if twistd is None or "nodaemon" not in twistd:
        return service
    umask = twistd.get("umask")
    if umask is None and not twistd["nodaemon"]:
        umask = 0o077  # what twistd sets for a daemon, before it starts it
    if umask is not None:
        os.umask(umask)
    early = _EarlyLog()
    try:
        service.privilegedStartService()
    except SystemExit as e:
        if isinstance(e.code, str):
            options.fail(e.code)
        raise
    finally:
        early.started()
    holder = _StartedEarly(early)
    service.setServiceParent(holder)
    return holder


@implementer(ILogObserver)
class _EarlyLog:
    """
    Keeps what the early start logs: until twistd begins logging, Twisted
    buffers only the newest 200 events, and an edge port range logs lines
    per port. When the buffer is replayed, the events it dropped are
    published first, so the log file has them all, in order.
    """

    def __init__(self) -> None:
        self.events: List[Dict[str, Any]] = []
        self.capturing = True
        self.replaying = False
        globalLogPublisher.addObserver(self)

    def started(self) -> None:
        self.capturing = False

    def close(self) -> None:
        self.events = []
        globalLogPublisher.removeObserver(self)

    def __call__(self, event: Dict[str, Any]) -> None:
        if self.capturing:
            self.events.append(event)
            return
        if self.replaying or not self.events:
            return
        # The first event after the start: the oldest that the buffer kept,
        # replayed as logging begins (this observer was added before the
        # log file's, so those dropped reach the file first).
        self.replaying = True
        events, self.events = self.events, []
        kept = next((i for i, e in enumerate(events) if e is event), 0)
        for dropped in events[:kept]:
            globalLogPublisher(dropped)


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


def _store(config: Config, options: Options) -> Any:
    """
    The store this process shares rules, apps and figures through: the
    supervisor's (a worker) or the config's.
    """
    from spectrum.cluster.node import node_name
    from spectrum.store import make_store

    node = node_name(config, options["worker"])
    if options["store-socket"]:
        from spectrum.store.shared import SharedStore

        return SharedStore(options["store-socket"], node=node)
    return make_store(config.store, node=node)


def _as_worker(service: Any) -> None:
    """
    A worker of C{workers: N}: edge ports shared with the others, one set
    of kernel maps for all of them, and an end with its supervisor.
    """
    from spectrum.kernel.shield import pin_directory
    from spectrum.workers import ParentWatch

    service.reuse_port = True
    service.shield.share(pin_directory(os.getppid()))
    ParentWatch(service.reactor).setServiceParent(service)


def _admin_arguments(options: Options) -> Any:
    state = options.admin_state
    if state is None:
        return {}
    return {"admin_state": state, "loader": state.loader()}
