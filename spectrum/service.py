"""
SpectrumService: the listeners of every app, built from the model and
reconciled against a new one on reload.
"""

from __future__ import annotations

import signal
import socket
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from spectrum import status as S
from spectrum.admission import Admission
from spectrum.analytics import Analytics
from spectrum.config import ConfigError
from spectrum.config_files import load_checked as load
from spectrum.descriptors import Descriptors, raise_limit
from spectrum.errors import ListenError
from spectrum.eventlog import EventLog
from spectrum.kernel.shield import KernelShield
from spectrum.kernel.steer import Steering, probe_steering
from spectrum.listeners import Listener, listen
from spectrum.model import App, Config
from spectrum.proxy.tls import EdgeTls, TlsFileError
from spectrum.record import Recorders
from spectrum.refusals import Refusals
from spectrum.resolver import Resolver
from spectrum.rulebook import RuleBook
from spectrum.runtime import AppRuntime

ListenerKey = Tuple[str, str, int]


def desired_listeners(config: Config) -> Dict[ListenerKey, Tuple[App, ...]]:
    """
    Every (protocol, edge address, edge port) the config asks for, and the
    apps that serve it (several on a port shared by hostname).
    """
    wanted: Dict[ListenerKey, List[App]] = {}
    for app in config.apps:
        for ip in app.ips:
            for port in app.edge_ports():
                wanted.setdefault((app.protocol, ip, port), []).append(app)
    return {key: tuple(apps) for key, apps in wanted.items()}


class SpectrumService(MultiService):
    """
    The whole proxy: a listener per app edge address and port, reloaded in
    place, drained on stop.

    @ivar drain_timeout: seconds that open connections get to finish at stop
        before they are closed.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any = None,
        drain_timeout: float = 10.0,
        loader: Callable[[str], Config] = load,
        handle_sighup: bool = False,
        admin_state: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.config = config
        self.drain_timeout = drain_timeout
        self.loader = loader
        self.recorders = Recorders()
        self.runtimes: Dict[str, AppRuntime] = {}
        self.listeners: Dict[ListenerKey, Listener] = {}
        #: runtimes of removed apps whose connections are still open
        self.retired: Set[AppRuntime] = set()
        self.handle_sighup = handle_sighup
        #: config reloads by result, for /metrics
        self.reloads = {"ok": 0, "refused": 0}
        #: the config document and what the admin API made (AdminState)
        self.admin_state = admin_state
        self._previous_sighup: Any = None
        #: a worker of C{workers: N}: share edge ports with the others
        self.reuse_port = False
        #: called with each config that apply() commits
        self.config_hooks: List[Callable[[Config], None]] = []
        #: who gets in: access rules, geo, limits and further gates
        self.admission = Admission(config, reactor)
        self.config_hooks.append(self.admission.configure)
        #: the access rules' owner (the file's and the API's); the
        #: admission's firewall is its index
        self.rules = RuleBook(self.admission.firewall, reactor.seconds, config.access_rules)
        self.config_hooks.append(self.rules.configure)
        if admin_state is not None:
            self.rules.state = admin_state
            self.rules.restore()
        self.config_hooks.append(self._set_egress)
        #: the access rules in the kernel (C{kernel_filter}); its mode is
        #: the one the service started with
        self.shield = KernelShield(config.kernel_filter)
        if self.shield.active:
            self.shield.set_geo(config.geoip.country_db, config.geoip.asn_db)
            self.config_hooks.append(lambda config: self.shield.set_geo(config.geoip.country_db, config.geoip.asn_db))
            self.shield.sync(self.admission.firewall.rules)
            self.admission.firewall.watchers.append(lambda firewall: self.shield.sync(firewall.rules))
        #: any port of an edge range on one socket (sk_lookup), with the
        #: kernel filter's permissions; None: a listener per port
        self.steering: Optional[Steering] = probe_steering() if self.shield.active else None
        #: refused clients, counted and sampled
        self.refusals = Refusals(self.recorders, reactor)
        #: origin names to addresses, for every app
        self.resolver = Resolver(reactor, config.resolvers)
        #: the clients' share of the process's descriptors
        self.descriptors = Descriptors()
        # Analytics and the event log attach themselves through the hooks
        # above.
        self.analytics = Analytics(reactor, config.analytics.window_minutes)
        self.analytics.install(self)
        self.refusals.counters.append(self.analytics.count_refused)
        self.event_log = EventLog(config.events, reactor)
        self.event_log.install(self)
        self.refusals.summaries.append(self.event_log.refusal_summary)
        #: the admin site, when the composition root made one
        #: (L{spectrum.compose})
        self.admin: Any = None
        #: certificates and per-app TLS state, reloaded with the config and
        #: when the certificate files change
        self.tls = EdgeTls(reactor)
        #: seconds between checks of the certificate files; 0 turns it off
        self.certificate_check_interval = 2.0

    # building and reconciling ---------------------------------------------

    def _new_runtime(self, app: App) -> AppRuntime:
        runtime = AppRuntime(
            app, self.recorders, self.reactor, self.admission, self.refusals, self.resolver, self.descriptors
        )
        runtime.egress = self.config.egress
        return runtime

    def _set_egress(self, config: Config) -> None:
        for runtime in self.runtimes.values():
            runtime.egress = config.egress

    def apply(self, config: Config) -> None:
        """
        Make the listeners match C{config}, all or nothing: plan a runtime
        for every app (its own by name, or a new one), bind every new
        address, and only then commit: TLS state, runtimes, the routes of
        every listener, what is gone, the config hooks.

        @raise ListenError: an address could not be bound (nothing changed).
        @raise ConfigError: a certificate could not be used (nothing changed).
        """
        wanted = desired_listeners(config)
        steered = self._steered(wanted)
        try:
            tls = self.tls.prepare(config)
        except TlsFileError as e:
            raise ConfigError(config.source or "config", str(e)) from None
        # The plan: a runtime for each app of the new config.
        fresh: Dict[str, AppRuntime] = {}
        planned: Dict[str, AppRuntime] = {}
        for app in config.apps:
            runtime = self.runtimes.get(app.name)
            if runtime is None:
                runtime = fresh[app.name] = self._new_runtime(app)
            planned[app.name] = runtime
        bound: Dict[ListenerKey, Listener] = {}
        for key, apps in wanted.items():
            if key in self.listeners:
                continue
            protocol, ip, port = key
            runtimes = [planned[app.name] for app in apps]
            try:
                bound[key] = listen(
                    self.reactor, protocol, ip, port, runtimes, self.tls, reuse_port=self.reuse_port, shield=self.shield
                )
            except (CannotListenError, OSError) as e:
                for listener in bound.values():
                    listener.stop()
                raise ListenError(_listen_error(config, apps[0], ip, port, e)) from None
        # A steered range takes its ports from whoever else listens there
        # (sk_lookup runs first): each port new to the range must be free.
        for key, ports in steered.items():
            current = self.listeners.get(key)
            had = set(current.steered_ports) if current is not None else set()
            for port in ports[1:]:
                if port in had:
                    continue
                try:
                    _check_free(key[1], port)
                except OSError as e:
                    for made in bound.values():
                        made.stop()
                    raise ListenError(_listen_error(config, wanted[key][0], key[1], port, e)) from None

        # Everything bound: commit.
        self.tls.commit(tls)
        for app in config.apps:
            existing = self.runtimes.get(app.name)
            if existing is not None:
                existing.update(app)
        self.runtimes.update(fresh)
        if self.running:
            for runtime in fresh.values():
                runtime.health.start()
        for key, listener in list(self.listeners.items()):
            members = wanted.get(key)
            if members is None:
                self._unsteer(listener)
                listener.stop()
                del self.listeners[key]
                self.log.info(
                    "stopped listening on {ip}:{port} ({protocol})",
                    ip=key[1],
                    port=key[2],
                    protocol=key[0],
                )
            else:
                listener.retarget([planned[app.name] for app in members])
        for key, listener in bound.items():
            self.listeners[key] = listener
            self.log.info(
                "{app}: listening on {ip}:{port} ({protocol})",
                app=", ".join(app.name for app in wanted[key]),
                ip=key[1],
                port=listener.bound_port(),
                protocol=key[0],
            )
        for key, listener in self.listeners.items():
            if key in steered:
                self._steer(listener, key[1], steered[key])
            else:
                self._unsteer(listener)
        for name in list(self.runtimes):
            if name not in planned:
                runtime = self.runtimes.pop(name)
                runtime.health.stop()
                self._retire(runtime)
        self.config = config
        self.resolver.configure(config.resolvers)
        self.descriptors.rebase()
        for hook in self.config_hooks:
            hook(config)

    def _steered(self, wanted: Dict[ListenerKey, Tuple[App, ...]]) -> Dict[ListenerKey, Tuple[int, ...]]:
        """
        With sk_lookup steering, a TCP app alone on an IPv4 edge range is
        served by one socket on its first port: the range's other keys leave
        C{wanted}, and the first port's key is returned with every port.
        """
        steered: Dict[ListenerKey, Tuple[int, ...]] = {}
        if self.steering is None:
            return steered
        for key, apps in list(wanted.items()):
            protocol, ip, port = key
            if protocol != "tcp" or len(apps) != 1 or ":" in ip:
                continue
            ports = apps[0].edge_ports()
            if len(ports) < 2 or port != ports[0]:
                continue
            if all(wanted.get((protocol, ip, other)) == apps for other in ports):
                steered[key] = ports
                for other in ports[1:]:
                    del wanted[(protocol, ip, other)]
        return steered

    def _steer(self, listener: Listener, ip: str, ports: Tuple[int, ...]) -> None:
        steering = self.steering
        assert steering is not None
        if listener.steering_slot is None:
            listener.steering_slot = steering.add(listener.listening.socket)  # type: ignore[attr-defined]
            # Connections arrive for every port: each asks its own address.
            listener.factory.edge = ("", 0)
        steering.set_ports(listener.steering_slot, ip, ports)
        listener.steered_ports = ports

    def _unsteer(self, listener: Listener) -> None:
        if listener.steering_slot is not None and self.steering is not None:
            self.steering.remove(listener.steering_slot)
            listener.steering_slot = None
            listener.steered_ports = ()

    def _retire(self, runtime: AppRuntime) -> None:
        if not runtime.connections:
            return
        self.retired.add(runtime)
        self.log.info(
            "{app}: removed; {count} open connections continue",
            app=runtime.app.name,
            count=len(runtime.connections),
        )
        runtime.when_idle().addCallback(lambda _: self.retired.discard(runtime))

    def reload(self) -> bool:
        """
        Read the config file again and apply it; a bad file is logged and
        the running config stays.
        """
        source = self.config.source
        if source is None:
            self.log.warn("reload asked for, but the config came from no file")
            return False
        try:
            config = self.loader(source)
            self.apply(config)
        except (ConfigError, ListenError) as e:
            self.reloads["refused"] += 1
            self.log.error("reload of {source} refused, old config kept: {error}", source=source, error=str(e))
            return False
        self.reloads["ok"] += 1
        self.log.info("reloaded {source}: {count} apps", source=source, count=len(config.apps))
        return True

    # lifecycle -------------------------------------------------------------

    def privilegedStartService(self) -> None:
        # Bind before privileges are dropped, so edge ports below 1024 work.
        self._apply_or_exit()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if not self.listeners and self.config.apps:
            # C{twist} (python -m twisted) has no privileged start.
            self._apply_or_exit()
        for runtime in self.runtimes.values():
            runtime.health.start()
        if self.handle_sighup:
            self.install_sighup()
        if self.certificate_check_interval:
            self.tls.watch(self.certificate_check_interval)

    def _apply_or_exit(self) -> None:
        if self.shield.mode == "on" and not self.shield.active:
            raise SystemExit(f"spectrum: kernel_filter is on, but {self.shield.reason}")
        first = not self.listeners
        if first:
            self.log.info("{line}", line=self.shield.describe())
            before = raise_limit()
        try:
            self.apply(self.config)
        except ListenError as e:
            # One line and exit status 1, not a traceback out of twistd.
            # twistd prints the SystemExit text (through its log once
            # logging has started), so logging it as well would show the
            # operator the same error twice.
            raise SystemExit(f"spectrum: {e}") from None
        if first:
            self.log.info("{line}", line=self.descriptors.describe(before))

    def install_sighup(self) -> None:
        """
        Reload on SIGHUP (the handler hands over to the reactor thread).
        """

        def handler(signum: int, frame: Any) -> None:
            self.reactor.callFromThread(self.reload)

        self._previous_sighup = signal.signal(signal.SIGHUP, handler)

    def all_runtimes(self) -> List[AppRuntime]:
        return list(self.runtimes.values()) + list(self.retired)

    def open_connections(self) -> int:
        return sum(len(runtime.connections) for runtime in self.all_runtimes())

    @inlineCallbacks
    def stopService(self) -> Any:
        """
        Stop accepting, let open connections finish for C{drain_timeout}
        seconds, then close what is left.
        """
        yield super().stopService()
        self.refusals.stop()
        self.resolver.stop()
        for runtime in self.runtimes.values():
            runtime.health.stop()
        self.tls.stop()
        if self._previous_sighup is not None:
            signal.signal(signal.SIGHUP, self._previous_sighup)
            self._previous_sighup = None
        for listener in self.listeners.values():
            self._unsteer(listener)
        stops = [listener.stop() for listener in self.listeners.values()]
        self.listeners.clear()
        yield DeferredList([d for d in stops if isinstance(d, Deferred)])
        # The sockets are closed: the kernel lets go of the filters with them.
        self.shield.close()
        if self.steering is not None:
            self.steering.close()
            self.steering = None
        runtimes = self.all_runtimes()
        count = sum(len(runtime.connections) for runtime in runtimes)
        if not count:
            return
        self.log.info(
            "draining {count} open connections for up to {timeout}s",
            count=count,
            timeout=self.drain_timeout,
        )
        drained = DeferredList([runtime.when_idle() for runtime in runtimes], consumeErrors=True)
        deadline = self.reactor.callLater(self.drain_timeout, drained.cancel)
        yield drained
        if deadline.active():
            deadline.cancel()
        left = self.open_connections()
        if left:
            self.log.info("closing {count} connections still open at the drain deadline", count=left)
            for runtime in self.all_runtimes():
                runtime.abort_all(S.SHUTDOWN, "closed at shutdown")
            # An aborted connection reports its loss on a later reactor turn:
            # wait (briefly) so its event is recorded before the reactor stops.
            closed = DeferredList([runtime.when_idle() for runtime in self.all_runtimes()], consumeErrors=True)
            late = self.reactor.callLater(1.0, closed.cancel)
            yield closed
            if late.active():
                late.cancel()


def _check_free(ip: str, port: int) -> None:
    """
    Bind C{ip}:C{port} for TCP and let go.

    @raise OSError: the address is taken (or not available).
    """
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((ip, port))
    finally:
        probe.close()


def _listen_error(config: Config, app: App, ip: str, port: int, error: Exception) -> str:
    index = config.apps.index(app)
    why = getattr(error, "socketError", None) or error
    text = getattr(why, "strerror", None) or str(why)
    return f"apps[{index}] ({app.name}): cannot listen on {ip}:{port}: {text}"
