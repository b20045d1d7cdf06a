"""
The Redis store (txredisapi): state shared by every node that points at the
same Redis server, with changes announced by pub/sub.

Two connections: one for commands (every multi-key write is one Lua script,
so it is atomic and one round trip) and one subscribed to the change
channel. Each is kept up by txredisapi's C{startConnecting} with backoff;
the subscriber subscribes again on every reconnect, and the store tells its
listeners to L{resync} then, because changes may have been missed.

The store, not the client library, decides when to stop trying: txredisapi
gives up for good when the C{AUTH} or C{SELECT} of a reconnection fails,
a reply timeout included (a Redis stalled for a few seconds), so its
C{stopTrying} is disabled here until L{RedisStore.stop}, and the heartbeat
also checks that every connection is either up or being retried, and
starts a fresh one when the library stopped anyway.

While Redis is out of reach every call fails at once with
L{StoreUnavailable}: nothing queues behind a dead connection, and the
callers (L{spectrum.cluster}) keep their local copies and buffer counters.

URLs::

    redis://[[user]:password@]host[:port][/db]        plain TCP
    rediss://[[user]:password@]host[:port][/db][?ca=/path/ca.pem]   TLS
    redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import txredisapi
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from spectrum.store.interface import KINDS, IStore, IStoreListener, StoreUnavailable
from spectrum.store.memory import MAX_EVENTS, RETENTION_MINUTES
from spectrum.store.url import parse_url

#: Seconds a command may take before the connection is declared dead.
REPLY_TIMEOUT = 2.0
#: Seconds a connection attempt may take.
CONNECT_TIMEOUT = 2.0
#: How long after start a store never reached gets its own error line.
UNREACHED_AFTER = 2.0
#: Seconds between pings that notice a Redis that stopped answering.
HEARTBEAT = 1.0
#: Reconnection backoff: first delay and cap, in seconds.
INITIAL_DELAY = 0.2
MAX_DELAY = 5.0


# Lua: each multi-key change is one atomic round trip. ----------------------

_PUT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[3])
return 1
"""

_DELETE = """
local n = redis.call('HDEL', KEYS[1], ARGV[1])
if n == 1 then redis.call('PUBLISH', KEYS[2], ARGV[2]) end
return n
"""

_ADD_COUNTS = """
redis.call('SADD', KEYS[3], ARGV[1])
local bucket = #KEYS[2] > 0
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  if bucket then redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1]) end
end
if bucket then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
return 1
"""

# Every node's hash under one prefix, as one JSON object.
_GATHER = """
local result = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local flat = redis.call('HGETALL', ARGV[1] .. node)
  if #flat > 0 then
    local h = {}
    for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
    result[node] = h
  end
end
return cjson.encode(result)
"""

_MINUTES = """
local result = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local buckets = {}
  local any = false
  for m = tonumber(ARGV[2]), tonumber(ARGV[3]) do
    local flat = redis.call('HGETALL', ARGV[1] .. node .. ':' .. m)
    if #flat > 0 then
      local h = {}
      for i = 1, #flat, 2 do h[flat[i]] = tonumber(flat[i + 1]) end
      buckets[tostring(m)] = h
      any = true
    end
  end
  if any then result[node] = buckets end
end
return cjson.encode(result)
"""

_EVENTS = """
for i = 2, #ARGV do redis.call('LPUSH', KEYS[1], ARGV[i]) end
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[1]) - 1)
return 1
"""

_HEALTH = """
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

# The window number comes from Redis's clock, so nodes agree on windows
# whatever their own clocks say.
_HIT = """
local now = redis.call('TIME')
local window = tonumber(ARGV[1])
local key = KEYS[1] .. ':' .. math.floor(tonumber(now[1]) / window)
local count = redis.call('INCRBY', key, ARGV[2])
if count == tonumber(ARGV[2]) then redis.call('EXPIRE', key, window * 2) end
return count
"""


class _Hooks:
    """
    Tells the store when a connection of this factory becomes usable, is
    lost or is refused, and keeps the factory trying until the store stops
    (mixed into txredisapi's factories).
    """

    store: RedisStore
    role: str
    #: set by L{RedisStore.stop}: from then on, stopping is for real
    stopping = False
    #: no "Starting factory" lines at every reconnect
    noisy = False

    def stopTrying(self) -> Deferred[Any]:
        # txredisapi calls this when the AUTH or SELECT of a (re)connection
        # fails, a reply timeout included: it would then never reconnect.
        # Keep retrying with backoff; the store stops with disconnect().
        if self.stopping:
            return super().stopTrying()  # type: ignore[misc]
        return succeed(None)

    def connectionError(self, why: str) -> None:
        self.store._refused(self.role, why)
        super().connectionError(why)  # type: ignore[misc]

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)  # type: ignore[misc]
        if conn in self.pool:  # type: ignore[attr-defined]
            self.store._connection_up(self.role, conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)  # type: ignore[misc]
        self.store._connection_down(self.role, conn)


class _Subscriber(txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.store._message(message)


class _SentinelSubscriber(_Subscriber, txredisapi.SentinelRedisProtocol):
    """
    A subscriber that checks it reached the master first.
    """


class _CommandFactory(_Hooks, txredisapi.RedisFactory):
    pass


class _SubscriberFactory(_Hooks, txredisapi.RedisFactory):
    protocol = _Subscriber


class _SentinelCommandFactory(_Hooks, txredisapi.SentinelConnectionFactory):
    pass


class _SentinelSubscriberFactory(_Hooks, txredisapi.SentinelConnectionFactory):
    protocol = _SentinelSubscriber


@implementer(IStore)
class RedisStore:
    """
    An L{IStore} in one Redis server (or the master a Sentinel names).
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        node: str,
        reactor: Any = None,
        reply_timeout: float = REPLY_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        heartbeat: float = HEARTBEAT,
        retention_minutes: int = RETENTION_MINUTES,
        max_events: int = MAX_EVENTS,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.url = parse_url(url)
        self.node = node
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.retention_minutes = retention_minutes
        self.max_events = max_events
        p = self.url.prefix
        self._keys = {
            "nodes": f"{p}:nodes",
            "docs": f"{p}:docs:",
            "totals": f"{p}:totals:",
            "minute": f"{p}:minute:",
            "events": f"{p}:events",
            "health": f"{p}:health:",
            "rate": f"{p}:rate:",
        }
        # Pub/sub channels are not per database: the database is in the name.
        self.channel = f"{p}:{self.url.db}:changes"
        self._listeners: List[IStoreListener] = []
        self._command: Optional[Any] = None
        self._subscriber: Optional[Any] = None
        self._subscribed = False
        self._factories: List[Any] = []
        #: why a connection was last refused, per role, logged once per outage
        self._refusals: Dict[str, str] = {}
        self._sentinel: Optional[Any] = None
        self._pinger = LoopingCall(self._ping)
        self._pinger.clock = reactor
        self._down_since: Optional[float] = None
        self._ever_up = False
        self._unreached: Any = None
        self.available = False
        #: how many times the store came back after an outage (for tests)
        self.reconnects = 0

    # connecting ----------------------------------------------------------

    def _factory(self, role: str) -> Any:
        url = self.url
        common = dict(
            isLazy=True,
            charset="utf-8",
            password=url.password,
            replyTimeout=self.reply_timeout,
            convertNumbers=False,
            username=url.username,
        )
        factory: Any
        if url.scheme == "redis+sentinel":
            cls = _SentinelCommandFactory if role == "command" else _SentinelSubscriberFactory
            factory = cls(
                sentinel_manager=self._sentinel,
                service_name=url.service,
                is_master=True,
                uuid=None,
                dbid=url.db if role == "command" else None,
                poolsize=1,
                **common,
            )
        else:
            cls = _CommandFactory if role == "command" else _SubscriberFactory
            factory = cls(str(url), url.db if role == "command" else None, 1, **common)
            factory.initialDelay = INITIAL_DELAY
        factory.maxDelay = MAX_DELAY
        factory.store = self
        factory.role = role
        # A failed AUTH or SELECT also fails this (once); _refused logs it.
        factory.deferred.addErrback(lambda _: None)
        return factory

    def _endpoint(self, factory: Any) -> Any:
        if self.url.scheme == "redis+sentinel":
            return txredisapi._SentinelEndpoint(factory)
        host, port = self.url.hosts[0]
        endpoint: Any = HostnameEndpoint(self.reactor, host, port, timeout=self.connect_timeout)
        if self.url.tls:
            from twisted.internet import ssl

            trust = None
            if self.url.ca:
                with open(self.url.ca, "rb") as f:
                    trust = ssl.Certificate.loadPEM(f.read())
            endpoint = wrapClientTLS(ssl.optionsForClientTLS(host, trust), endpoint)
        return endpoint

    def start(self) -> None:
        if self._factories:
            return
        if self.url.scheme == "redis+sentinel":
            self._sentinel = txredisapi.Sentinel(
                list(self.url.hosts), replyTimeout=self.reply_timeout, connectTimeout=self.connect_timeout
            )
        self._down_since = self.reactor.seconds()
        for role in ("command", "subscriber"):
            factory = self._factory(role)
            self._factories.append(factory)
            factory.startConnecting(self._endpoint(factory))
        self._pinger.start(self.heartbeat, now=False)
        self._unreached = self.reactor.callLater(UNREACHED_AFTER, self._not_reached)

    def _not_reached(self) -> None:
        self._unreached = None
        if self._ever_up or not self._factories:
            return
        self.log.error(
            "store {url}: cannot be reached {seconds:g}s after start; serving from this process's own state"
            " and retrying with backoff (spectrum says when it is connected)",
            url=str(self.url),
            seconds=UNREACHED_AFTER,
        )

    def stop(self) -> Deferred[Any]:
        if self._unreached is not None and self._unreached.active():
            self._unreached.cancel()
        self._unreached = None
        if self._pinger.running:
            self._pinger.stop()
        factories, self._factories = self._factories, []
        self.available = False
        for factory in factories:
            factory.stopping = True
        stops = [f.disconnect() for f in factories]
        if self._sentinel is not None:
            stops.append(self._sentinel.disconnect())
            self._sentinel = None
        return gatherResults(stops, consumeErrors=True)

    def _refused(self, role: str, why: str) -> None:
        """
        A connection was made but its C{AUTH} or C{SELECT} failed (refused,
        or unanswered in time): it is retried with backoff; say why once
        per outage, and again only if the reason changes.
        """
        why = why.replace("Redis error: ", "", 1)
        if self._refusals.get(role) == why:
            return
        self._refusals[role] = why
        self.log.error(
            "store {url}: {role} connection not usable: {why}; retrying with backoff",
            url=str(self.url),
            role=role,
            why=why,
        )

    def _supervise(self) -> None:
        """
        Start a fresh connection for any factory that neither has a
        connection nor is trying to make one (the client library gave up,
        whatever the reason).
        """
        for i, factory in enumerate(self._factories):
            if factory.pool or all(slot.service.running for slot in factory.slots):
                continue
            self.log.warn(
                "store {url}: the {role} connection stopped retrying; starting it again",
                url=str(self.url),
                role=factory.role,
            )
            factory.stopping = True
            factory.disconnect().addErrback(lambda _: None)
            fresh = self._factory(factory.role)
            self._factories[i] = fresh
            fresh.startConnecting(self._endpoint(fresh))

    def _connection_up(self, role: str, conn: Any) -> None:
        if role == "command":
            self._command = conn
        else:
            self._subscriber = conn
            self._subscribed = False
            # Subscribe again on every (re)connect.
            conn.subscribe(self.channel).addCallbacks(self._did_subscribe, self._subscribe_failed, (conn,))
        self._check_up()

    def _did_subscribe(self, _: Any, conn: Any) -> None:
        if conn is self._subscriber:
            self._subscribed = True
            self._check_up()

    def _subscribe_failed(self, failure: Failure) -> None:
        self.log.warn("store {url}: subscribe failed: {why}", url=str(self.url), why=failure.getErrorMessage())

    def _check_up(self) -> None:
        if self.available or self._command is None or not self._subscribed:
            return
        self.available = True
        if self._ever_up:
            self.reconnects += 1
            self.log.info(
                "store {url}: reachable again after {seconds:.1f}s; resynchronizing",
                url=str(self.url),
                seconds=self.reactor.seconds() - (self._down_since or 0),
            )
        else:
            self.log.info("store {url}: connected", url=str(self.url))
        self._ever_up = True
        self._down_since = None
        self._refusals.clear()
        for listener in list(self._listeners):
            try:
                listener.resync()
            except Exception:
                self.log.failure("store listener {listener!r} failed to resync", listener=listener)

    def _connection_down(self, role: str, conn: Any) -> None:
        if role == "command" and conn is self._command:
            self._command = None
            # Changes published while we cannot read are lost to us: make
            # the subscriber reconnect too, so both come back together and
            # the listeners resync.
            if self._subscriber is not None:
                self._subscriber.transport.loseConnection()
        elif role == "subscriber" and conn is self._subscriber:
            self._subscriber = None
            self._subscribed = False
            if self._command is not None:
                self._command.transport.loseConnection()
        else:
            return
        if self.available and self._factories:
            self.available = False
            self._down_since = self.reactor.seconds()
            # Logged once per outage; reconnect attempts are silent.
            self.log.warn(
                "store {url}: connection lost; serving from local copies and buffering counters until it is back",
                url=str(self.url),
            )
        self.available = False

    def _ping(self) -> None:
        self._supervise()
        conn = self._command
        if conn is not None:
            # A Redis that stopped answering trips replyTimeout, which drops
            # the connection and starts the reconnect cycle.
            conn.ping().addErrback(lambda _: None)

    # listeners -----------------------------------------------------------

    def listen(self, listener: IStoreListener) -> None:
        self._listeners.append(listener)

    def unlisten(self, listener: IStoreListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _message(self, message: Any) -> None:
        try:
            change = json.loads(message)
            kind, id, doc = change["kind"], change["id"], change.get("doc")
        except (ValueError, KeyError, TypeError):
            self.log.warn("store {url}: ignored a malformed change message", url=str(self.url))
            return
        for listener in list(self._listeners):
            try:
                listener.changed(kind, id, doc)
            except Exception:
                self.log.failure("store listener {listener!r} failed", listener=listener)

    # commands ------------------------------------------------------------

    def _call(self, method: str, *args: Any) -> Deferred[Any]:
        conn = self._command
        if conn is None or not self.available:
            return fail(StoreUnavailable(f"store {self.url} is not reachable"))
        try:
            d = getattr(conn, method)(*args)
        except txredisapi.ConnectionError as e:
            return fail(StoreUnavailable(f"store {self.url}: {e}"))
        return d.addErrback(self._unavailable)

    def _unavailable(self, failure: Failure) -> Failure:
        if failure.check(txredisapi.ConnectionError):
            raise StoreUnavailable(f"store {self.url}: {failure.getErrorMessage()}")
        return failure

    def _eval(self, script: str, keys: List[str], args: List[Any]) -> Deferred[Any]:
        return self._call("eval", script, keys, args)

    def _kind(self, kind: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"no documents of kind {kind!r}")
        return self._keys["docs"] + kind

    def documents(self, kind: str) -> Deferred[Dict[str, Dict[str, Any]]]:
        key = self._kind(kind)
        return self._call("hgetall", key).addCallback(lambda flat: {k: json.loads(v) for k, v in flat.items()})

    def put(self, kind: str, id: str, doc: Dict[str, Any]) -> Deferred[None]:
        message = json.dumps({"kind": kind, "id": id, "doc": doc, "node": self.node})
        return self._eval(_PUT, [self._kind(kind), self.channel], [id, json.dumps(doc), message]).addCallback(
            lambda _: None
        )

    def delete(self, kind: str, id: str) -> Deferred[bool]:
        message = json.dumps({"kind": kind, "id": id, "doc": None, "node": self.node})
        return self._eval(_DELETE, [self._kind(kind), self.channel], [id, message]).addCallback(lambda n: int(n) == 1)

    def add_counts(self, node: str, minute: Optional[int], counts: Dict[str, int]) -> Deferred[None]:
        if not counts:
            return succeed(None)
        args: List[Any] = [node, self.retention_minutes * 60]
        for name, value in counts.items():
            args += [name, int(value)]
        bucket = "" if minute is None else f"{self._keys['minute']}{node}:{minute}"
        keys = [self._keys["totals"] + node, bucket, self._keys["nodes"]]
        return self._eval(_ADD_COUNTS, keys, args).addCallback(lambda _: None)

    def totals(self) -> Deferred[Dict[str, Dict[str, int]]]:
        def decode(text: str) -> Dict[str, Dict[str, int]]:
            return {node: {k: int(v) for k, v in h.items()} for node, h in _object(text).items()}

        return self._eval(_GATHER, [self._keys["nodes"]], [self._keys["totals"]]).addCallback(decode)

    def minutes(self, first: int, last: int) -> Deferred[Dict[str, Dict[int, Dict[str, int]]]]:
        def decode(text: str) -> Dict[str, Dict[int, Dict[str, int]]]:
            return {
                node: {int(m): {k: int(v) for k, v in h.items()} for m, h in _object(buckets).items()}
                for node, buckets in _object(text).items()
            }

        return self._eval(_MINUTES, [self._keys["nodes"]], [self._keys["minute"], first, last]).addCallback(decode)

    def add_events(self, events: List[Dict[str, Any]]) -> Deferred[None]:
        if not events:
            return succeed(None)
        args = [self.max_events] + [json.dumps(e) for e in events]
        return self._eval(_EVENTS, [self._keys["events"]], args).addCallback(lambda _: None)

    def recent_events(self, limit: int) -> Deferred[List[Dict[str, Any]]]:
        if limit <= 0:
            return succeed([])
        return self._call("lrange", self._keys["events"], 0, limit - 1).addCallback(
            lambda items: [json.loads(i) for i in items]
        )

    def put_health(self, node: str, origin: str, state: Dict[str, Any]) -> Deferred[None]:
        keys = [self._keys["health"] + node, self._keys["nodes"]]
        return self._eval(_HEALTH, keys, [node, origin, json.dumps(state)]).addCallback(lambda _: None)

    def health(self) -> Deferred[Dict[str, Dict[str, Dict[str, Any]]]]:
        def decode(text: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
            return {node: {o: json.loads(s) for o, s in h.items()} for node, h in _object(text).items()}

        return self._eval(_GATHER, [self._keys["nodes"]], [self._keys["health"]]).addCallback(decode)

    def hit(self, key: str, window: int, amount: int) -> Deferred[int]:
        return self._eval(_HIT, [f"{self._keys['rate']}{window}:{key}"], [window, amount]).addCallback(int)


def _object(text: Any) -> Dict[str, Any]:
    # cjson encodes an empty table as {} (never []), but be lenient.
    value = json.loads(text) if isinstance(text, (str, bytes)) else text
    return value if isinstance(value, dict) else {}
