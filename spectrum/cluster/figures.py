"""
A node's analytics as flat counters (C{{name: int}}) that add up name by
name across nodes, and the cluster's view built back from their sum.
"""

from __future__ import annotations

from typing import Any, Dict

#: Separates the parts of a flat counter name (never in app or origin names
#: that a person types).
SEP = "\x1f"


def _add(flat: Dict[str, int], name: str, value: int) -> None:
    if value:
        flat[name] = flat.get(name, 0) + value


def _counters(flat: Dict[str, int], prefix: str, counters: Any) -> None:
    for kind, count in counters.events.items():
        _add(flat, f"{prefix}e:{kind}", count)
    _add(flat, prefix + "bi", counters.bytes_ingress)
    _add(flat, prefix + "bo", counters.bytes_egress)


def flatten(analytics: Any) -> Dict[str, int]:
    """
    Every running figure of C{analytics} as C{{name: int}}, so that figures
    of several nodes add up name by name (durations in microseconds).
    """
    flat: Dict[str, int] = {}
    for (app, origin), series in analytics.series.items():
        prefix = f"s{SEP}{app}{SEP}{origin}{SEP}"
        _counters(flat, prefix, series)
        _add(flat, prefix + "cur", series.current)
        for status, count in series.statuses.items():
            _add(flat, f"{prefix}st:{status}", count)
        durations = series.durations
        for index, count in enumerate(durations.counts):
            _add(flat, f"{prefix}d:{index}", count)
        _add(flat, prefix + "dn", durations.count)
        _add(flat, prefix + "dt", round(durations.total * 1e6))
    for app, stats in analytics.apps.items():
        for country, counters in stats.countries.items():
            _counters(flat, f"c{SEP}{app}{SEP}{country}{SEP}", counters)
        for version, counters in stats.ip_versions.items():
            _counters(flat, f"v{SEP}{app}{SEP}{version}{SEP}", counters)
    return flat


def difference(new: Dict[str, int], old: Dict[str, int]) -> Dict[str, int]:
    """
    C{new - old}, name by name, without the zeros.
    """
    delta = {name: value - old.get(name, 0) for name, value in new.items() if value != old.get(name, 0)}
    for name, value in old.items():
        if name not in new and value:
            delta[name] = -value
    return delta


def merge_into(target: Dict[str, int], counts: Dict[str, int]) -> None:
    for name, value in counts.items():
        target[name] = target.get(name, 0) + value


def _apply_counter(counters: Any, field: str, value: int) -> None:
    if field.startswith("e:"):
        kind = field[2:]
        counters.events[kind] = counters.events.get(kind, 0) + value
    elif field == "bi":
        counters.bytes_ingress += value
    elif field == "bo":
        counters.bytes_egress += value


def build_view(totals: Dict[str, int], minutes: Dict[int, Dict[str, int]], window: int, reactor: Any) -> Any:
    """
    An L{spectrum.analytics.Analytics} holding C{totals} (summed flat
    counters) and C{minutes} (minute -> summed flat counters), for the
    admin API to read as it reads a node's own.
    """
    from spectrum.analytics import BOUNDS, Analytics, AppStats, Counters, Minute, Series

    view = Analytics(reactor, window)
    for name, value in totals.items():
        parts = name.split(SEP)
        if len(parts) != 4:
            continue
        what, app, key, field = parts
        stats = view.apps.get(app)
        if stats is None:
            stats = view.apps[app] = AppStats(window)
        if what == "s":
            series = view.series.get((app, key))
            if series is None:
                series = view.series[(app, key)] = Series()
            if field == "cur":
                series.current += value
            elif field.startswith("st:"):
                status = int(field[3:])
                series.statuses[status] = series.statuses.get(status, 0) + value
            elif field.startswith("d:"):
                index = int(field[2:])
                if 0 <= index < len(series.durations.counts):
                    series.durations.counts[index] += value
            elif field == "dn":
                series.durations.count += value
            elif field == "dt":
                series.durations.total += value / 1e6
            else:
                _apply_counter(series, field, value)
        elif what in ("c", "v"):
            table = stats.countries if what == "c" else stats.ip_versions
            slot: Any = key if what == "c" else int(key)
            counters = table.get(slot)
            if counters is None:
                counters = table[slot] = Counters()
            _apply_counter(counters, field, value)
    # Lowest and highest durations are not sums: take the bucket bounds.
    for series in view.series.values():
        durations = series.durations
        used = [i for i, count in enumerate(durations.counts) if count]
        if used:
            durations.low = BOUNDS[used[0] - 1] if used[0] else 0.0
            durations.high = BOUNDS[min(used[-1], len(BOUNDS) - 1)]
    now = reactor.seconds()
    newest = int(now // 60)
    for number, counts in minutes.items():
        if not newest - window < number <= newest:
            continue
        for name, value in counts.items():
            parts = name.split(SEP)
            if len(parts) != 4 or parts[0] != "s":
                continue
            stats = view.apps.get(parts[1])
            if stats is None:
                stats = view.apps[parts[1]] = AppStats(window)
            slot = number % window
            bucket = stats.minutes[slot]
            if bucket is None or bucket.minute != number:
                bucket = stats.minutes[slot] = Minute(number)
            _apply_counter(bucket, parts[3], value)
    return view


def per_app(totals: Dict[str, int]) -> Dict[str, Dict[str, Any]]:
    """
    One node's figures per app: open connections, events by kind, bytes.
    """
    result: Dict[str, Dict[str, Any]] = {}
    for name, value in totals.items():
        parts = name.split(SEP)
        if len(parts) != 4 or parts[0] != "s":
            continue
        app, field = parts[1], parts[3]
        entry = result.setdefault(app, {"connections": 0, "events": {}, "bytesIngress": 0, "bytesEgress": 0})
        if field == "cur":
            entry["connections"] += value
        elif field.startswith("e:"):
            entry["events"][field[2:]] = entry["events"].get(field[2:], 0) + value
        elif field == "bi":
            entry["bytesIngress"] += value
        elif field == "bo":
            entry["bytesEgress"] += value
    return result
