"""
Health checks: a L{HealthChecker} per origin pool probes each origin on the
reactor's clock and tells the pool's L{Balancer <spectrum.balancer.Balancer>}
which origins are up.

L{checker <spectrum.health.checker>} is the schedule, the thresholds and
passive health; L{probes <spectrum.health.probes>} the probe kinds (C{tcp},
C{tls}, C{http}/C{https}, C{smtp}, C{udp}).
"""

from __future__ import annotations

from spectrum.health.checker import HISTORY, JITTER, TICK, HealthChecker, HealthEvent
from spectrum.health.probes import (
    MAX_ANSWER,
    PROBES,
    Probe,
    ProbeError,
    SMTPProbe,
    StreamProbe,
    describe,
    parse_smtp,
    probe_http,
    probe_smtp,
    probe_tcp,
    probe_tls,
    probe_udp,
)

__all__ = [
    "HISTORY",
    "JITTER",
    "MAX_ANSWER",
    "PROBES",
    "TICK",
    "HealthChecker",
    "HealthEvent",
    "Probe",
    "ProbeError",
    "SMTPProbe",
    "StreamProbe",
    "describe",
    "parse_smtp",
    "probe_http",
    "probe_smtp",
    "probe_tcp",
    "probe_tls",
    "probe_udp",
]
