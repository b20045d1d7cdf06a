"""
Cloudflare's Spectrum analytics queries (C{aggregate/current},
C{events/summary}, C{events/bytime}) answered from L{spectrum.analytics}.

What the analytics keep decides what can be asked:

  - per app and minute (for the analytics window): events by kind and the
    bytes of connections that closed in that minute; so C{count},
    C{bytesIngress} and C{bytesEgress} can be asked over any C{since} /
    C{until} inside the window, by C{appID} and C{event} (bytes are not
    split by event kind, so byte metrics cannot go with the C{event}
    dimension or an C{event} filter);
  - durations per app since start, not per minute: C{durationAvg},
    C{durationMedian}, C{duration90th}, C{duration99th} cover every
    connection counted so far, whatever the time range, and only in
    C{events/summary}.

Filters use Cloudflare's syntax on C{appID} and C{event} with C{==} and
C{!=}: C{;} or C{AND} binds tighter than C{,} or C{OR}.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from spectrum.analytics import Durations

METRICS = ("count", "bytesIngress", "bytesEgress", "durationAvg", "durationMedian", "duration90th", "duration99th")
DURATION_METRICS = METRICS[3:]
BYTE_METRICS = ("bytesIngress", "bytesEgress")
DIMENSIONS = ("event", "appID")
TIME_DELTAS = {"minute": 60, "dekaminute": 600, "hour": 3600, "day": 86400, "week": 7 * 86400}
MAX_LIMIT = 10000
MAX_INTERVALS = 10080


class QueryError(ValueError):
    """
    A query that cannot be answered; C{str()} names the parameter.
    """


def iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(name: str, text: str) -> float:
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name}: expected an ISO 8601 time like 2026-01-01T00:00:00Z, got {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


#: Parameters that list names: given once with commas, or repeated.
LIST_PARAMETERS = ("metrics", "dimensions", "sort")


def _names(name: str, text: Optional[str], allowed: Sequence[str]) -> List[str]:
    if text is None or not text.strip():
        return []
    result = []
    for item in text.split(","):
        item = item.strip()
        if item not in allowed:
            raise QueryError(f"{name}: {item!r} is not one of {', '.join(allowed)}")
        if item in result:
            raise QueryError(f"{name}: {item!r} is given twice")
        result.append(item)
    return result


_CONDITION = re.compile(r"^\s*(event|appID)\s*(==|!=)\s*(\S+?)\s*$")


def parse_filters(text: Optional[str]) -> List[List[Tuple[str, str, str]]]:
    """
    Cloudflare's filter expression as OR of ANDs of (dimension, op, value).
    """
    if text is None or not text.strip():
        return []
    result = []
    for either in re.split(r",|\s+OR\s+", text):
        terms = []
        for both in re.split(r";|\s+AND\s+", either):
            match = _CONDITION.match(both)
            if match is None:
                raise QueryError(
                    f"filters: {both.strip()!r} is not a condition like event==disconnect or appID!=abc"
                    " (dimensions event and appID; operators == and !=)"
                )
            terms.append((match.group(1), match.group(2), match.group(3)))
        result.append(terms)
    return result


class Query:
    """
    A checked analytics query.
    """

    def __init__(
        self,
        metrics: List[str],
        dimensions: List[str],
        filters: List[List[Tuple[str, str, str]]],
        filter_text: str,
        since: float,
        until: float,
        sort: List[Tuple[str, bool]],
        limit: int,
        time_delta: Optional[str],
    ) -> None:
        self.metrics = metrics
        self.dimensions = dimensions
        self.filters = filters
        self.filter_text = filter_text
        self.since = since
        self.until = until
        self.sort = sort
        self.limit = limit
        self.time_delta = time_delta

    @classmethod
    def from_args(cls, arg: Callable[[str], Optional[str]], now: float, window: int, bytime: bool) -> Query:
        metrics = _names("metrics", arg("metrics"), METRICS) or ["count"]
        dimensions = _names("dimensions", arg("dimensions"), DIMENSIONS)
        filter_text = arg("filters") or ""
        filters = parse_filters(filter_text)
        until_text = arg("until")
        since_text = arg("since")
        until = parse_time("until", until_text) if until_text else now
        since = parse_time("since", since_text) if since_text else until - window * 60
        if not (math.isfinite(since) and math.isfinite(until)) or since >= until:
            raise QueryError("since: must be before until")
        limit_text = arg("limit")
        limit = MAX_LIMIT
        if limit_text is not None:
            try:
                limit = int(limit_text)
            except ValueError:
                raise QueryError(f"limit: expected an integer, got {limit_text!r}") from None
            if not 1 <= limit <= MAX_LIMIT:
                raise QueryError(f"limit: must be from 1 to {MAX_LIMIT}, got {limit}")
        sort = []
        for item in (arg("sort") or "").split(","):
            item = item.strip()
            if not item:
                continue
            descending = item.startswith("-")
            name = item.lstrip("+-")
            if name not in metrics and name not in dimensions:
                raise QueryError(f"sort: {name!r} is neither a requested metric nor a dimension")
            sort.append((name, descending))
        time_delta = None
        if bytime:
            time_delta = arg("time_delta") or "minute"
            if time_delta not in TIME_DELTAS:
                raise QueryError(f"time_delta: expected one of {', '.join(TIME_DELTAS)}; got {time_delta!r}")
            if (until - since) / TIME_DELTAS[time_delta] > MAX_INTERVALS:
                raise QueryError(f"time_delta: more than {MAX_INTERVALS} intervals between since and until")
            durations = [m for m in metrics if m in DURATION_METRICS]
            if durations:
                raise QueryError(f"metrics: {durations[0]} is not kept per time interval; ask events/summary")
        bytes_asked = [m for m in metrics if m in BYTE_METRICS]
        if bytes_asked and ("event" in dimensions or any(t[0] == "event" for terms in filters for t in terms)):
            raise QueryError(f"metrics: {bytes_asked[0]} is not split by event; drop the event dimension or filter")
        return cls(metrics, dimensions, filters, filter_text, since, until, sort, limit, time_delta)

    def admits(self, values: Dict[str, str]) -> bool:
        if not self.filters:
            return True
        for terms in self.filters:
            if all((values.get(dim) == value) == (op == "==") for dim, op, value in terms if dim in values):
                return True
        return False

    def shown(self) -> Dict[str, Any]:
        result: Dict[str, Any] = {
            "dimensions": self.dimensions,
            "metrics": self.metrics,
            "filters": self.filter_text,
            "since": iso(self.since),
            "until": iso(self.until),
            "sort": [("-" if d else "+") + n for n, d in self.sort],
            "limit": self.limit,
        }
        if self.time_delta:
            result["time_delta"] = self.time_delta
        return result


def _cells(analytics: Any, ids: Dict[str, str], query: Query) -> List[Tuple[float, Dict[str, str], Dict[str, int]]]:
    """
    (minute start, dimension values, {count, bytesIngress, bytesEgress})
    for each app, minute and event kind in range that the filters admit.
    """
    cells = []
    for name, stats in analytics.apps.items():
        app_id = ids.get(name, name)
        for minute in stats.minutes:
            if minute is None:
                continue
            start = minute.minute * 60
            if not query.since <= start < query.until:
                continue
            if "event" in query.dimensions or any(t[0] == "event" for terms in query.filters for t in terms):
                for kind, count in minute.events.items():
                    values = {"appID": app_id, "event": kind}
                    if query.admits(values):
                        cells.append((start, values, {"count": count, "bytesIngress": 0, "bytesEgress": 0}))
            else:
                values = {"appID": app_id}
                if query.admits(values):
                    cells.append(
                        (
                            start,
                            values,
                            {
                                "count": sum(minute.events.values()),
                                "bytesIngress": minute.bytes_ingress,
                                "bytesEgress": minute.bytes_egress,
                            },
                        )
                    )
    return cells


def _durations(analytics: Any, names: Set[str]) -> Durations:
    merged = Durations()
    for (app, _), series in analytics.series.items():
        if app not in names:
            continue
        source = series.durations
        for index, count in enumerate(source.counts):
            merged.counts[index] += count
        merged.count += source.count
        merged.total += source.total
        merged.low = min(merged.low, source.low)
        merged.high = max(merged.high, source.high)
    return merged


def _duration_value(durations: Durations, metric: str) -> float:
    if metric == "durationAvg":
        return durations.mean
    q = {"durationMedian": 0.5, "duration90th": 0.9, "duration99th": 0.99}[metric]
    return durations.quantile(q)


def _sorted(rows: List[Dict[str, Any]], query: Query, key_of: Callable[[Dict[str, Any], str], Any]) -> None:
    for name, descending in reversed(query.sort):
        rows.sort(key=lambda row: key_of(row, name), reverse=descending)


def summary(analytics: Any, ids: Dict[str, str], query: Query) -> Dict[str, Any]:
    names_of: Dict[str, str] = {app_id: name for name, app_id in ids.items()}
    groups: Dict[Tuple[str, ...], Dict[str, Any]] = {}
    for _, values, sums in _cells(analytics, ids, query):
        key = tuple(values[d] for d in query.dimensions)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {"count": 0, "bytesIngress": 0, "bytesEgress": 0, "apps": set()}
        for metric in ("count", "bytesIngress", "bytesEgress"):
            group[metric] += sums[metric]
        group["apps"].add(names_of.get(values["appID"], values["appID"]))
    rows: List[Dict[str, Any]] = []
    for key, group in groups.items():
        durations = _durations(analytics, group["apps"]) if any(m in DURATION_METRICS for m in query.metrics) else None
        metrics = [
            _duration_value(durations, m) if m in DURATION_METRICS and durations is not None else group[m]
            for m in query.metrics
        ]
        rows.append({"dimensions": list(key), "metrics": metrics})

    def key_of(row: Dict[str, Any], name: str) -> Any:
        if name in query.metrics:
            return row["metrics"][query.metrics.index(name)]
        return row["dimensions"][query.dimensions.index(name)]

    _sorted(rows, query, key_of)
    rows = rows[: query.limit]
    totals: Dict[str, Any] = {}
    maxima: Dict[str, Any] = {}
    minima: Dict[str, Any] = {}
    for index, metric in enumerate(query.metrics):
        column = [row["metrics"][index] for row in rows]
        if metric in DURATION_METRICS:
            everything = _durations(analytics, {g for group in groups.values() for g in group["apps"]})
            totals[metric] = _duration_value(everything, metric)
        else:
            totals[metric] = sum(column)
        maxima[metric] = max(column) if column else 0
        minima[metric] = min(column) if column else 0
    return {
        "data": rows,
        "data_lag": 0,
        "max": maxima,
        "min": minima,
        "query": query.shown(),
        "rows": len(rows),
        "totals": totals,
    }


def bytime(analytics: Any, ids: Dict[str, str], query: Query) -> Dict[str, Any]:
    assert query.time_delta is not None
    step = TIME_DELTAS[query.time_delta]
    first = math.floor(query.since / step) * step
    count = max(1, math.ceil((query.until - first) / step))
    intervals = [[iso(first + i * step), iso(first + (i + 1) * step)] for i in range(count)]
    groups: Dict[Tuple[str, ...], List[List[int]]] = {}
    for start, values, sums in _cells(analytics, ids, query):
        key = tuple(values[d] for d in query.dimensions)
        series = groups.get(key)
        if series is None:
            series = groups[key] = [[0] * count for _ in query.metrics]
        slot = int((start - first) // step)
        if 0 <= slot < count:
            for index, metric in enumerate(query.metrics):
                series[index][slot] += sums[metric]
    rows: List[Dict[str, Any]] = [{"dimensions": list(key), "metrics": series} for key, series in groups.items()]

    def key_of(row: Dict[str, Any], name: str) -> Any:
        if name in query.metrics:
            return sum(row["metrics"][query.metrics.index(name)])
        return row["dimensions"][query.dimensions.index(name)]

    _sorted(rows, query, key_of)
    rows = rows[: query.limit]
    totals: Dict[str, Any] = {}
    maxima: Dict[str, Any] = {}
    minima: Dict[str, Any] = {}
    for index, metric in enumerate(query.metrics):
        column = [value for row in rows for value in row["metrics"][index]]
        totals[metric] = sum(column)
        maxima[metric] = max(column) if column else 0
        minima[metric] = min(column) if column else 0
    return {
        "data": rows,
        "data_lag": 0,
        "max": maxima,
        "min": minima,
        "query": query.shown(),
        "rows": len(rows),
        "totals": totals,
        "time_intervals": intervals,
    }


def aggregate_current(
    analytics: Any, ids: Dict[str, str], wanted: Optional[Set[str]], now: float
) -> List[Dict[str, Any]]:
    """
    Per app: open connections now, bytes of connections that closed in the
    current and the previous minute, and the mean duration so far.
    """
    result = []
    newest = int(now // 60)
    names = set(analytics.apps) | {app for app, _ in analytics.series}
    for name in sorted(names):
        app_id = ids.get(name, name)
        if wanted is not None and app_id not in wanted and name not in wanted:
            continue
        current = sum(series.current for (app, _), series in analytics.series.items() if app == name)
        ingress = egress = 0
        stats = analytics.apps.get(name)
        if stats is not None:
            for minute in stats.minutes:
                if minute is not None and newest - 1 <= minute.minute <= newest:
                    ingress += minute.bytes_ingress
                    egress += minute.bytes_egress
        result.append(
            {
                "appID": app_id,
                "bytesIngress": ingress,
                "bytesEgress": egress,
                "connections": current,
                "durationAvg": _durations(analytics, {name}).mean,
            }
        )
    return result
