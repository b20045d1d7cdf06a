"""
Origin names to addresses, for the data plane (TCP and UDP alike).

Twisted's default resolver runs getaddrinfo(3) in the reactor's thread pool
(ten threads): a name whose server never answers holds a thread for the
resolver's whole timeout, and a few such lookups make every other name wait
behind them. This one asks the name servers itself, over UDP from the
reactor: no threads, a lookup waits only on its own answers, a caller waits
no longer than its own deadline (the app's connect timeout), lookups of one
name in progress are shared, and answers are kept for their TTL. The hosts
file is read first, as nsswitch's C{files dns} does; names are asked for as
written (no C{search} domains). A and AAAA are asked for together, so a
name with only an IPv6 address resolves.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet import base, udp
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList, TimeoutError, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.posixbase import PosixReactorBase
from twisted.names import client, dns
from twisted.python.failure import Failure

#: seconds an answer with no address (no such name, or no A nor AAAA) is kept
NEGATIVE_TTL = 5.0
#: bounds on how long an answer is kept, whatever its TTL says
MIN_TTL = 1.0
MAX_TTL = 3600.0
#: how long a name found in the hosts file is kept (the file may change)
HOSTS_TTL = 60.0
#: the queries' retransmissions: a name server silent for their sum fails the lookup
QUERY_TIMEOUTS = (1, 3, 5)

Addresses = Tuple[str, ...]


class ResolveError(Exception):
    """
    A name could not be resolved (no address, no answer in time).
    """


class QuietPort(udp.Port):
    """
    A UDP socket that logs nothing when it opens or closes: Twisted's UDP
    port logs a line each way, worth having for an edge port, but one pair
    per client session or per question asked would be most of the log.
    """

    def _bindSocket(self) -> None:
        try:
            skt = self.createInternetSocket()
            skt.bind((self.interface, self.port))
        except OSError as e:
            raise CannotListenError(self.interface, self.port, e) from e
        # The ephemeral port is not needed (getHost asks the socket).
        self._realPortNumber = 0
        self.connected = 1
        self.socket = skt
        self.fileno = skt.fileno  # type: ignore[method-assign]

    def connectionLost(self, reason: Any = None) -> None:
        # udp.Port.connectionLost, without its log line.
        self._realPortNumber = None
        self.maxThroughput = -1
        base.BasePort.connectionLost(self, reason)
        self.protocol.doStop()
        self.socket.close()
        del self.socket
        del self.fileno
        if hasattr(self, "d"):
            self.d.callback(None)
            del self.d


class _QuietDNS(dns.DNSDatagramProtocol):
    noisy = False


class _NameClient(client.Resolver):
    """
    Twisted's DNS client, its questions asked from quiet sockets.
    """

    def _connectedProtocol(self, interface: str = "") -> dns.DNSDatagramProtocol:
        protocol = _QuietDNS(self, reactor=self._reactor)
        if isinstance(self._reactor, PosixReactorBase):
            # A socket on a random source port, as Twisted's own.
            for _ in range(100):
                port = QuietPort(dns.randomSource(), protocol, interface, 8192, self._reactor)
                try:
                    port.startListening()
                except CannotListenError as e:
                    if getattr(e.socketError, "errno", None) == errno.EMFILE:
                        raise
                    continue
                return protocol
        return super()._connectedProtocol(interface)


class Resolver:
    """
    Resolves origin names with a cache; one per service, shared by its apps.

    @ivar servers: the name servers asked, as C{(ip, port)}; none means
        those of C{resolv_conf}.
    """

    def __init__(
        self,
        reactor: Any = None,
        servers: Sequence[Tuple[str, int]] = (),
        resolv_conf: str = "/etc/resolv.conf",
        hosts_file: str = "/etc/hosts",
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.resolv_conf = resolv_conf
        self.hosts_file = hosts_file
        self.servers: Tuple[Tuple[str, int], ...] = tuple(servers)
        self._client: Any = None
        self._cache: Dict[str, Tuple[float, Addresses]] = {}
        self._waiting: Dict[str, List[Deferred[Addresses]]] = {}

    def configure(self, servers: Sequence[Tuple[str, int]]) -> None:
        """
        Ask C{servers} from now on (a reload); a change forgets the answers kept.
        """
        servers = tuple(servers)
        if servers != self.servers:
            self.servers = servers
            self._cache.clear()
            self.stop()

    def stop(self) -> None:
        """
        Drop the DNS client (and its timer re-reading resolv.conf).
        """
        client, self._client = self._client, None
        call = getattr(client, "_parseCall", None)
        if call is not None and call.active():
            call.cancel()

    def cached(self, name: str) -> Optional[Addresses]:
        """
        The addresses kept for C{name} (empty: it has none), or L{None} when
        it must be looked up.
        """
        entry = self._cache.get(name)
        if entry is not None and entry[0] > self.reactor.seconds():
            return entry[1]
        return None

    def resolve(self, name: str, timeout: float) -> Deferred[Addresses]:
        """
        The addresses of C{name}, IPv4 first; fails with L{ResolveError}
        when it has none or no answer came within C{timeout} seconds.
        Cancelling the result leaves the lookup to others waiting on it.
        """
        if isIPAddress(name) or isIPv6Address(name):
            return succeed((name,))
        addresses = self.cached(name)
        if addresses is not None:
            if addresses:
                return succeed(addresses)
            return fail(ResolveError(f"{name} has no address"))
        waiter: Deferred[Addresses] = Deferred()
        waiting = self._waiting.get(name)
        if waiting is not None:
            waiting.append(waiter)
        else:
            self._waiting[name] = [waiter]
            # May answer at once (the hosts file).
            self._lookup(name)
        if timeout and not waiter.called:

            def timed_out(reason: Failure) -> Failure:
                if reason.check(TimeoutError):
                    return Failure(ResolveError(f"no answer for {name} within {timeout:g}s"))
                return reason

            waiter.addTimeout(timeout, self.reactor)
            waiter.addErrback(timed_out)
        return waiter

    # the lookup ---------------------------------------------------------------

    def _lookup(self, name: str) -> None:
        from twisted.names.hosts import searchFileForAll
        from twisted.python.filepath import FilePath

        try:
            found = searchFileForAll(FilePath(self.hosts_file), name.encode("idna"))
            if found:
                self._done(name, _ordered(found), HOSTS_TTL)
                return
            client = self._name_client()
            queries = [client.lookupAddress(name), client.lookupIPV6Address(name)]
        except Exception as e:  # a bad name, no name server: the name fails
            self._failed(name, Failure(e))
            return
        DeferredList(queries, consumeErrors=True).addCallback(self._answered, name)

    def _name_client(self) -> Any:
        if self._client is None:
            servers = list(self.servers)
            self._client = _NameClient(
                resolv=None if servers else self.resolv_conf,
                servers=servers or None,
                timeout=QUERY_TIMEOUTS,
                reactor=self.reactor,
            )
        return self._client

    def _answered(self, results: List[Tuple[bool, Any]], name: str) -> None:
        from twisted.names.error import DNSNameError

        addresses: List[str] = []
        ttls: List[float] = []
        answered = False
        failure: Optional[Failure] = None
        for ok, result in results:
            if not ok:
                if result.check(DNSNameError):
                    answered = True
                failure = failure or result
                continue
            answered = True
            for record in result[0]:
                if record.type == dns.A:
                    addresses.append(socket.inet_ntop(socket.AF_INET, record.payload.address))
                elif record.type == dns.AAAA:
                    addresses.append(socket.inet_ntop(socket.AF_INET6, record.payload.address))
                else:
                    continue
                ttls.append(record.ttl)
        if addresses:
            self._done(name, tuple(dict.fromkeys(addresses)), max(MIN_TTL, min(MAX_TTL, min(ttls))))
        elif answered:
            self._done(name, (), NEGATIVE_TTL)
        else:
            # No answer at all: not kept, the next client asks again.
            assert failure is not None
            self._failed(name, failure)

    def _done(self, name: str, addresses: Addresses, ttl: float) -> None:
        self._cache[name] = (self.reactor.seconds() + ttl, addresses)
        for waiter in self._waiting.pop(name, []):
            if not waiter.called:
                if addresses:
                    waiter.callback(addresses)
                else:
                    waiter.errback(ResolveError(f"{name} has no address"))

    def _failed(self, name: str, reason: Failure) -> None:
        for waiter in self._waiting.pop(name, []):
            if not waiter.called:
                waiter.errback(ResolveError(f"{name}: {reason.getErrorMessage()}"))


def _ordered(addresses: Sequence[str]) -> Addresses:
    unique = list(dict.fromkeys(addresses))
    return tuple([a for a in unique if isIPAddress(a)] + [a for a in unique if not isIPAddress(a)])


_shared: Dict[Any, Resolver] = {}


def shared_resolver(reactor: Any) -> Resolver:
    """
    The resolver of C{reactor} for runtimes made without one (the system's
    name servers).
    """
    resolver = _shared.get(reactor)
    if resolver is None:
        resolver = _shared[reactor] = Resolver(reactor)
    return resolver
