"""
Connection analytics: counters per app, per origin and per event kind,
current connections, bytes ingress and egress, connection durations (mean
and percentiles from a bounded histogram), per-minute buckets kept for a
window, and breakdowns by client country and IP version.

L{Analytics} is a recorder: it sees each connection at its connect event
and at its one closing event (disconnect, clientFiltered, originError,
tlsError), never per chunk of bytes, so counting costs a few dictionary
operations per connection and nothing per byte. Bytes are counted when a
connection closes (the relay keeps its byte counts as plain ints).

Names follow Cloudflare's Spectrum analytics: C{bytes_ingress} are bytes read
from clients (the log's ClientBytes), C{bytes_egress} bytes sent to clients
(OriginBytes).
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Optional, Tuple

from spectrum.record import CONNECT, ConnectionRecord

#: Upper bounds (seconds) of the duration histogram's buckets: 1 ms to about
#: 28 hours, four buckets per doubling (each bucket is 19% wider than the
#: one before). One more bucket takes everything longer.
BOUNDS: Tuple[float, ...] = tuple(0.001 * 2 ** (i / 4) for i in range(0, 4 * 27))

QUANTILES = (0.5, 0.9, 0.99)


def bucket_index(seconds: float) -> int:
    """
    The histogram bucket a duration falls into (0 to C{len(BOUNDS)}).
    """
    return bisect.bisect_left(BOUNDS, seconds)


class Durations:
    """
    A histogram of connection durations with fixed buckets: bounded memory
    however many connections, exact count, sum, minimum and maximum.
    """

    __slots__ = ("counts", "count", "total", "low", "high")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.count = 0
        self.total = 0.0
        self.low = math.inf
        self.high = 0.0

    def add(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, seconds)] += 1
        self.count += 1
        self.total += seconds
        if seconds < self.low:
            self.low = seconds
        if seconds > self.high:
            self.high = seconds

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def quantile(self, q: float) -> float:
        """
        An estimate of the C{q} quantile: the value of rank C{ceil(q * n)}
        lies in the bucket found, and the estimate interpolates linearly
        inside it (bounded by the smallest and largest values seen), so it
        is always in the same bucket as the true value.
        """
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for index, count in enumerate(self.counts):
            if seen + count >= rank:
                lower = BOUNDS[index - 1] if index else 0.0
                upper = BOUNDS[index] if index < len(BOUNDS) else self.high
                lower = max(lower, min(self.low, upper))
                upper = min(upper, self.high)
                return lower + (upper - lower) * (rank - seen) / count
            seen += count
        return self.high  # pragma: no cover - the counts add up to count

    def cumulative(self, bounds: Tuple[float, ...]) -> List[Tuple[float, int]]:
        """
        (bound, how many durations were at most it) for each of C{bounds},
        which must be among L{BOUNDS}; then (inf, count).
        """
        result = []
        running = 0
        index = 0
        for bound in bounds:
            stop = bisect.bisect_left(BOUNDS, bound) + 1
            running += sum(self.counts[index:stop])
            index = stop
            result.append((bound, running))
        result.append((math.inf, self.count))
        return result

    def summary(self) -> Dict[str, float]:
        return {
            "count": self.count,
            "avg": self.mean,
            "p50": self.quantile(0.5),
            "p90": self.quantile(0.9),
            "p99": self.quantile(0.99),
            "max": self.high,
        }


class Counters:
    """
    Event counts by kind, and bytes, of one slice (an origin, a minute, a
    country, an IP version).
    """

    __slots__ = ("events", "bytes_ingress", "bytes_egress")

    def __init__(self) -> None:
        self.events: Dict[str, int] = {}
        self.bytes_ingress = 0
        self.bytes_egress = 0

    def add(self, kind: str, record: ConnectionRecord, closing: bool) -> None:
        events = self.events
        events[kind] = events.get(kind, 0) + 1
        if closing:
            self.bytes_ingress += record.client_bytes
            self.bytes_egress += record.origin_bytes

    def as_dict(self) -> Dict[str, Any]:
        return {
            "events": dict(self.events),
            "bytes_ingress": self.bytes_ingress,
            "bytes_egress": self.bytes_egress,
        }


class Series(Counters):
    """
    Everything counted for one app and origin (origin C{""}: connections
    that never reached an origin, such as refused ones).
    """

    __slots__ = ("current", "durations", "statuses")

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.durations = Durations()
        self.statuses: Dict[int, int] = {}

    def as_dict(self) -> Dict[str, Any]:
        result = super().as_dict()
        result["current"] = self.current
        result["duration"] = self.durations.summary()
        result["statuses"] = dict(self.statuses)
        return result


class Minute(Counters):
    __slots__ = ("minute",)

    def __init__(self, minute: int) -> None:
        super().__init__()
        self.minute = minute


class AppStats:
    """
    The per-app slices: per-minute buckets (a ring of C{window} minutes) and
    the breakdowns by client country, IP version and, on ports shared by
    protocol, the protocol the client's first bytes spoke.
    """

    __slots__ = ("window", "minutes", "countries", "ip_versions", "protocols")

    def __init__(self, window: int) -> None:
        self.window = window
        self.minutes: List[Optional[Minute]] = [None] * window
        self.countries: Dict[str, Counters] = {}
        self.ip_versions: Dict[int, Counters] = {}
        self.protocols: Dict[str, Counters] = {}

    def minute(self, now: float) -> Minute:
        number = int(now // 60)
        slot = number % self.window
        bucket = self.minutes[slot]
        if bucket is None or bucket.minute != number:
            bucket = self.minutes[slot] = Minute(number)
        return bucket

    def breakdowns(self, country: str, client_ip: str) -> Tuple[Counters, Counters]:
        """
        The country and IP-version slices a client is counted in.
        """
        by_country = self.countries.get(country)
        if by_country is None:
            by_country = self.countries[country] = Counters()
        version = 6 if ":" in client_ip else 4
        by_version = self.ip_versions.get(version)
        if by_version is None:
            by_version = self.ip_versions[version] = Counters()
        return by_country, by_version

    def recent(self, now: float) -> List[Minute]:
        """
        The buckets of the last C{window} minutes that saw events, oldest first.
        """
        newest = int(now // 60)
        return sorted(
            (m for m in self.minutes if m is not None and newest - self.window < m.minute <= newest),
            key=lambda m: m.minute,
        )


class Analytics:
    """
    The counters of every app; call it with (kind, record) as a recorder.

    @ivar window: minutes of per-minute buckets kept.
    """

    def __init__(self, reactor: Any = None, window: int = 60) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.window = window
        self.series: Dict[Tuple[str, str], Series] = {}
        self.apps: Dict[str, AppStats] = {}
        # Connected records, and the series their connect was counted in.
        self._open: Dict[ConnectionRecord, Series] = {}

    def install(self, service: Any) -> None:
        """
        Record the events of a L{spectrum.service.SpectrumService}, and
        follow its config's C{analytics.window_minutes}.
        """
        service.recorders.add(self)
        service.config_hooks.append(lambda config: self.set_window(config.analytics.window_minutes))

    def set_window(self, window: int) -> None:
        """
        Keep C{window} minutes from now on (the buckets start afresh).
        """
        if window != self.window:
            self.window = window
            for stats in self.apps.values():
                stats.window = window
                stats.minutes = [None] * window

    def _slices(self, app: str, origin: str) -> Tuple[Series, AppStats]:
        """
        The series of (C{app}, C{origin}) and the app's stats, made on
        first use.
        """
        key = (app, origin)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = Series()
        stats = self.apps.get(app)
        if stats is None:
            stats = self.apps[app] = AppStats(self.window)
        return series, stats

    def __call__(self, kind: str, record: ConnectionRecord) -> None:
        series, stats = self._slices(record.application, record.origin_name or "")
        now = self.reactor.seconds()
        if kind == CONNECT:
            series.add(kind, record, False)
            series.current += 1
            self._open[record] = series
            stats.minute(now).add(kind, record, False)
            return
        connected = self._open.pop(record, None)
        if connected is not None:
            # Count the close where the connect was counted.
            series = connected
            series.current -= 1
            series.durations.add(record.duration)
        series.add(kind, record, True)
        status = record.status
        series.statuses[status] = series.statuses.get(status, 0) + 1
        stats.minute(now).add(kind, record, True)
        for slice_ in stats.breakdowns(record.extra.get("ClientCountry") or "XX", record.client_ip):
            slice_.add(kind, record, True)
        sniffed = record.extra.get("ClientSniffedProtocol")
        if sniffed:
            by_protocol = stats.protocols.get(sniffed)
            if by_protocol is None:
                by_protocol = stats.protocols[sniffed] = Counters()
            by_protocol.add(kind, record, True)

    def count_refused(self, app: str, kind: str, status: int, client_ip: str, country: str) -> None:
        """
        Count a refused connection that got no record (past the refusals'
        sampling): what the recorder would have counted for it.
        """
        series, stats = self._slices(app, "")
        series.statuses[status] = series.statuses.get(status, 0) + 1
        for counters in (series, stats.minute(self.reactor.seconds()), *stats.breakdowns(country or "XX", client_ip)):
            events = counters.events
            events[kind] = events.get(kind, 0) + 1

    # reading ----------------------------------------------------------------

    def app_totals(self, app: str) -> Dict[str, Any]:
        """
        The app's figures over all its origins.
        """
        total = Series()
        for (name, _), series in self.series.items():
            if name != app:
                continue
            total.current += series.current
            total.bytes_ingress += series.bytes_ingress
            total.bytes_egress += series.bytes_egress
            for kind, count in series.events.items():
                total.events[kind] = total.events.get(kind, 0) + count
            for status, count in series.statuses.items():
                total.statuses[status] = total.statuses.get(status, 0) + count
            durations = total.durations
            for index, count in enumerate(series.durations.counts):
                durations.counts[index] += count
            durations.count += series.durations.count
            durations.total += series.durations.total
            durations.low = min(durations.low, series.durations.low)
            durations.high = max(durations.high, series.durations.high)
        return total.as_dict()

    def snapshot(self) -> Dict[str, Any]:
        """
        Every figure, as plain data (for the admin API and tests).
        """
        now = self.reactor.seconds()
        result: Dict[str, Any] = {}
        for app, stats in self.apps.items():
            result[app] = {
                "total": self.app_totals(app),
                "origins": {origin: series.as_dict() for (name, origin), series in self.series.items() if name == app},
                "countries": {country: c.as_dict() for country, c in stats.countries.items()},
                "ip_versions": {version: c.as_dict() for version, c in stats.ip_versions.items()},
                "protocols": {sniffed: c.as_dict() for sniffed, c in stats.protocols.items()},
                "minutes": [dict(m.as_dict(), minute=m.minute * 60) for m in stats.recent(now)],
            }
        return result
