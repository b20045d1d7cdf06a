"""
Prometheus exposition of the analytics at C{/metrics}, in prometheus_client's
text format, through a custom collector that reads L{spectrum.analytics}
when scraped (nothing is kept twice, nothing runs on the data plane).

Series, labelled by C{app} and C{origin} (C{origin=""}: connections that
reached no origin, such as refused ones):

  - C{spectrum_connections} (gauge): open connections;
  - C{spectrum_events_total} (counter, also by C{event}): connect,
    disconnect, clientFiltered, originError, tlsError;
  - C{spectrum_closed_total} (counter, also by C{status}): closing events by
    Spectrum status code (200, 403, 429, 521...);
  - C{spectrum_bytes_ingress_total}, C{spectrum_bytes_egress_total}
    (counters): bytes read from clients, bytes sent to clients;
  - C{spectrum_connection_duration_seconds} (histogram, buckets doubling
    from 1 ms) and C{spectrum_connection_duration_quantile_seconds} (gauge,
    by C{quantile}: 0.5, 0.9, 0.99);
  - C{spectrum_client_country_connections_total} by C{app} and C{country},
    C{spectrum_client_ip_version_connections_total} by C{app} and
    C{ip_version}: connections (counted when they close);
  - C{spectrum_access_rules} (gauge): rules in force;
  - C{spectrum_refused_total} (counter) by C{app}, C{status} and C{rule}:
    connections refused before the relay, every one (the event log and the
    log keep a sampled share of them, L{spectrum.refusals});
  - C{spectrum_eventlog_dropped_total} (counter): events the event log
    could not write (L{spectrum.eventlog});
  - C{spectrum_kernel_dropped_total} and C{spectrum_kernel_dropped_bytes_total}
    by C{app} and C{reason}: what the kernel filter dropped before the
    process saw it (L{spectrum.kernel.shield}).

With C{workers: N}, the series above (but the refusals and the kernel's,
counted where they happen) are the sum of every worker, from the figures
each publishes through the store every second (this worker's own are
live); C{spectrum_worker_connections}, C{spectrum_worker_events_total},
C{spectrum_worker_closed_total}, C{spectrum_worker_bytes_ingress_total}
and C{spectrum_worker_bytes_egress_total} give them per worker, under a
C{worker} label. Also:

  - C{spectrum_origin_up} (gauge) by C{app}, C{origin} and C{monitored}:
    1 while an origin takes connections (an origin without a monitor is
    C{monitored="false"}: up unless real connections fail);
  - C{spectrum_build_info} (gauge, 1) by C{version}, C{twisted}, C{python};
  - C{spectrum_reloads_total} (counter) by C{result} (C{ok}, C{refused}):
    config reloads (SIGHUP) of this process;
  - C{spectrum_store_up} (gauge): 1 while the store is reachable, and
    C{spectrum_store_in_step}: 1 once this process has synced with it.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from twisted.web.resource import Resource

from spectrum import __version__
from spectrum.analytics import BOUNDS, QUANTILES, Analytics

#: Histogram buckets exposed: every doubling of the internal ones.
EXPOSED_BOUNDS = BOUNDS[::4]


class AnalyticsCollector:
    """
    A prometheus_client collector over an L{Analytics}.
    """

    def __init__(
        self,
        analytics: Analytics,
        firewall: Optional[Any] = None,
        refusals: Optional[Any] = None,
        shield: Optional[Any] = None,
        event_log: Optional[Any] = None,
        service: Optional[Any] = None,
        shared: Optional[Any] = None,
    ) -> None:
        self.analytics = analytics
        self.firewall = firewall
        self.refusals = refusals
        self.shield = shield
        self.event_log = event_log
        self.service = service
        self.shared = shared

    def describe(self) -> list:
        # Described lazily: registering must not scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        workers = self._workers()
        analytics = self.analytics
        if workers:
            from spectrum.cluster.figures import build_view

            summed: Dict[str, int] = {}
            for flat in workers.values():
                for name, value in flat.items():
                    summed[name] = summed.get(name, 0) + value
            analytics = build_view(summed, {}, analytics.window, analytics.reactor)
        yield from self._analytics(analytics)
        if workers:
            yield from self._per_worker(workers)
        yield from self._operations()

    def _workers(self) -> Dict[str, Dict[str, int]]:
        """
        With C{workers: N}: each worker's figures as flat counters, by
        worker index (this one's live, the others' as last published).
        """
        cluster = self.shared
        if cluster is None:
            return {}
        from spectrum.cluster.figures import flatten

        figures = cluster.worker_totals()
        own = cluster.worker_index()
        if own is not None and figures:
            figures[own] = flatten(self.analytics)
        return figures

    def _per_worker(self, workers: Dict[str, Dict[str, int]]) -> Iterator[Metric]:
        from spectrum.cluster.figures import build_view

        families = _series_families("spectrum_worker", ["worker", "app", "origin"])
        for worker, flat in sorted(workers.items(), key=lambda item: int(item[0])):
            view = build_view(flat, {}, self.analytics.window, self.analytics.reactor)
            for (app, origin), series in sorted(view.series.items()):
                _add_series(families, [worker, app, origin], series)
        yield from families

    def _operations(self) -> Iterator[Metric]:
        import platform

        from twisted import __version__ as twisted_version

        build = GaugeMetricFamily(
            "spectrum_build_info",
            "spectrum's version, and Twisted's and Python's.",
            labels=["version", "twisted", "python"],
        )
        build.add_metric([__version__, twisted_version, platform.python_version()], 1)
        yield build
        service = self.service
        if service is None:
            return
        from spectrum.admin.apps import origin_health

        up = GaugeMetricFamily(
            "spectrum_origin_up",
            "1 while an origin takes connections (monitored: checked by a monitor).",
            labels=["app", "origin", "monitored"],
        )
        for app in service.config.apps:
            for entry in origin_health(app, service.runtimes.get(app.name)):
                monitored = "true" if entry.get("monitored") else "false"
                up.add_metric([app.name, str(entry.get("name")), monitored], 1 if entry.get("healthy") else 0)
        yield up
        reloads = getattr(service, "reloads", None)
        if reloads is not None:
            counted = CounterMetricFamily("spectrum_reloads", "Config reloads, by result.", labels=["result"])
            for result in ("ok", "refused"):
                counted.add_metric([result], reloads.get(result, 0))
            yield counted
        cluster = self.shared
        if cluster is not None:
            store = GaugeMetricFamily("spectrum_store_up", "1 while the store is reachable.")
            store.add_metric([], 1 if cluster.store.available else 0)
            yield store
            synced = GaugeMetricFamily("spectrum_store_in_step", "1 once this process is in step with the store.")
            synced.add_metric([], 1 if cluster.synced else 0)
            yield synced

    def _analytics(self, analytics: Any) -> Iterator[Metric]:
        labels = ["app", "origin"]
        current, events, closed, ingress, egress = _series_families("spectrum", labels)
        durations = HistogramMetricFamily(
            "spectrum_connection_duration_seconds", "Durations of connections that reached an origin.", labels=labels
        )
        quantiles = GaugeMetricFamily(
            "spectrum_connection_duration_quantile_seconds",
            "Duration quantiles estimated from the histogram.",
            labels=[*labels, "quantile"],
        )
        for (app, origin), series in sorted(analytics.series.items()):
            values = [app, origin]
            _add_series((current, events, closed, ingress, egress), values, series)
            histogram = series.durations
            if not histogram.count and not origin:
                # Refused connections have no duration to show.
                continue
            buckets = [
                ("+Inf" if bound == float("inf") else repr(bound), count)
                for bound, count in histogram.cumulative(EXPOSED_BOUNDS)
            ]
            durations.add_metric(values, buckets, histogram.total)
            if histogram.count:
                for q in QUANTILES:
                    quantiles.add_metric([*values, str(q)], histogram.quantile(q))
        yield from (current, events, closed, ingress, egress, durations, quantiles)

        countries = CounterMetricFamily(
            "spectrum_client_country_connections",
            "Client connections, by country (XX: unknown).",
            labels=["app", "country"],
        )
        versions = CounterMetricFamily(
            "spectrum_client_ip_version_connections",
            "Client connections, by IP version.",
            labels=["app", "ip_version"],
        )
        protocols = CounterMetricFamily(
            "spectrum_client_protocol_connections",
            "Client connections on edge ports shared by protocol, by what their first bytes spoke.",
            labels=["app", "protocol"],
        )
        for app, stats in sorted(analytics.apps.items()):
            for country, counters in sorted(stats.countries.items()):
                countries.add_metric([app, country], sum(counters.events.values()))
            for version, counters in sorted(stats.ip_versions.items()):
                versions.add_metric([app, str(version)], sum(counters.events.values()))
            for sniffed, counters in sorted(stats.protocols.items()):
                protocols.add_metric([app, sniffed], sum(counters.events.values()))
        yield countries
        yield versions
        yield protocols

        if self.firewall is not None:
            rules = GaugeMetricFamily("spectrum_access_rules", "IP access rules in force.")
            rules.add_metric([], len(self.firewall))
            yield rules

        if self.event_log is not None:
            dropped = CounterMetricFamily(
                "spectrum_eventlog_dropped", "Events the event log could not write (a full disk, say)."
            )
            dropped.add_metric([], self.event_log.dropped)
            yield dropped

        if self.refusals is not None:
            refused = CounterMetricFamily(
                "spectrum_refused",
                "Connections refused before the relay, by app, status and access rule (every one, sampled or not).",
                labels=["app", "status", "rule"],
            )
            totals: Dict[Tuple[str, int, str], int] = {}
            for (app, _, status, rule), count in self.refusals.totals.items():
                key = (app, status, rule)
                totals[key] = totals.get(key, 0) + count
            for (app, status, rule), count in sorted(totals.items()):
                refused.add_metric([app, str(status), rule], count)
            yield refused

        shield = self.shield
        if shield is not None and shield.active:
            packets = CounterMetricFamily(
                "spectrum_kernel_dropped",
                "Packets (SYNs, datagrams) dropped by the kernel filter, by app and reason (the rule).",
                labels=["app", "reason"],
            )
            size = CounterMetricFamily(
                "spectrum_kernel_dropped_bytes",
                "Bytes of the packets the kernel filter dropped.",
                labels=["app", "reason"],
            )
            for drop in shield.status()["dropped"]:
                packets.add_metric([drop["app"], drop["reason"]], drop["packets"])
                size.add_metric([drop["app"], drop["reason"]], drop["bytes"])
            yield packets
            yield size


def _series_families(prefix: str, labels: List[str]) -> Tuple[Any, Any, Any, Any, Any]:
    """
    The families of one (app, origin) series: open connections, events,
    closing statuses, bytes each way.
    """
    return (
        GaugeMetricFamily(f"{prefix}_connections", "Open connections.", labels=labels),
        CounterMetricFamily(f"{prefix}_events", "Connection events, by kind.", labels=[*labels, "event"]),
        CounterMetricFamily(f"{prefix}_closed", "Closing events, by Spectrum status code.", labels=[*labels, "status"]),
        CounterMetricFamily(f"{prefix}_bytes_ingress", "Bytes read from clients.", labels=labels),
        CounterMetricFamily(f"{prefix}_bytes_egress", "Bytes sent to clients.", labels=labels),
    )


def _add_series(families: Any, values: List[str], series: Any) -> None:
    current, events, closed, ingress, egress = families
    current.add_metric(values, series.current)
    for kind, count in sorted(series.events.items()):
        events.add_metric([*values, kind], count)
    for status, count in sorted(series.statuses.items()):
        closed.add_metric([*values, str(status)], count)
    ingress.add_metric(values, series.bytes_ingress)
    egress.add_metric(values, series.bytes_egress)


class MetricsResource(Resource):
    """
    C{GET /metrics}: the registry in Prometheus text format.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self.registry)


def metrics_resource(collector: AnalyticsCollector) -> MetricsResource:
    """
    A C{/metrics} resource over C{collector}, with its own registry (not
    the process-global one, so two services in one process never collide).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return MetricsResource(registry)
