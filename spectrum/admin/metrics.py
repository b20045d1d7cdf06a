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
  - C{spectrum_kernel_dropped_total} and C{spectrum_kernel_dropped_bytes_total}
    by C{app} and C{reason}: what the kernel filter dropped before the
    process saw it (L{spectrum.kernel.shield}).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from twisted.web.resource import Resource

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
    ) -> None:
        self.analytics = analytics
        self.firewall = firewall
        self.refusals = refusals
        self.shield = shield

    def describe(self) -> list:
        # Described lazily: registering must not scrape.
        return []

    def collect(self) -> Iterator[Metric]:
        analytics = self.analytics
        labels = ["app", "origin"]
        current = GaugeMetricFamily("spectrum_connections", "Open connections.", labels=labels)
        events = CounterMetricFamily("spectrum_events", "Connection events, by kind.", labels=[*labels, "event"])
        closed = CounterMetricFamily(
            "spectrum_closed", "Closing events, by Spectrum status code.", labels=[*labels, "status"]
        )
        ingress = CounterMetricFamily("spectrum_bytes_ingress", "Bytes read from clients.", labels=labels)
        egress = CounterMetricFamily("spectrum_bytes_egress", "Bytes sent to clients.", labels=labels)
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
            current.add_metric(values, series.current)
            for kind, count in sorted(series.events.items()):
                events.add_metric([*values, kind], count)
            for status, count in sorted(series.statuses.items()):
                closed.add_metric([*values, str(status)], count)
            ingress.add_metric(values, series.bytes_ingress)
            egress.add_metric(values, series.bytes_egress)
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
        for app, stats in sorted(analytics.apps.items()):
            for country, counters in sorted(stats.countries.items()):
                countries.add_metric([app, country], sum(counters.events.values()))
            for version, counters in sorted(stats.ip_versions.items()):
                versions.add_metric([app, str(version)], sum(counters.events.values()))
        yield countries
        yield versions

        if self.firewall is not None:
            rules = GaugeMetricFamily("spectrum_access_rules", "IP access rules in force.")
            rules.add_metric([], len(self.firewall))
            yield rules

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


def metrics_resource(
    analytics: Analytics, firewall: Optional[Any] = None, refusals: Optional[Any] = None, shield: Optional[Any] = None
) -> MetricsResource:
    """
    A C{/metrics} resource with its own registry (not the process-global
    one, so two services in one process never collide).
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AnalyticsCollector(analytics, firewall, refusals, shield))
    return MetricsResource(registry)
