"""
Per-app client limits, checked at the edge before an origin is chosen:
open connections of the app (C{max_connections}), open connections from one
address (C{per_ip_connections}), and new connections per second from one
address (C{per_ip_rate}, a token bucket).

The bucket holds C{max(1, per_ip_rate)} tokens and refills at
C{per_ip_rate} tokens a second; a new connection takes one token and is
refused when there is none, so an address may open one second's worth at
once and then C{per_ip_rate} a second. Refused attempts take no token, and
the concurrency limits are checked first, so a connection refused for being
one too many does not also spend the address's rate.

State is local and in memory; buckets that have filled up again are swept
away, so memory follows the addresses active in the last second or so.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from spectrum import status as S
from spectrum.model import Limits

#: Sweep full buckets once there are this many.
SWEEP_AT = 4096


class ClientLimits:
    """
    The limit state of one app: what is open, per address and in all, and
    the rate buckets.
    """

    __slots__ = ("open", "per_ip", "buckets", "_sweep_at")

    def __init__(self) -> None:
        self.open = 0
        self.per_ip: Dict[str, int] = {}
        # address -> [tokens, when they were counted]
        self.buckets: Dict[str, List[float]] = {}
        self._sweep_at = SWEEP_AT

    def admit(self, ip: str, limits: Limits, now: float) -> Optional[Tuple[int, str]]:
        """
        Admit a new connection from C{ip}, counting it as open, or say why
        not: (status, reason).
        """
        if limits.max_connections and self.open >= limits.max_connections:
            return S.MAX_CONNECTIONS, f"max_connections {limits.max_connections} reached"
        count = self.per_ip.get(ip, 0)
        if limits.per_ip_connections and count >= limits.per_ip_connections:
            return S.PER_IP_CONNECTIONS, f"per_ip_connections {limits.per_ip_connections} reached"
        rate = limits.per_ip_rate
        if rate:
            capacity = rate if rate > 1.0 else 1.0
            bucket = self.buckets.get(ip)
            if bucket is None:
                tokens = capacity
                bucket = self.buckets[ip] = [tokens, now]
                if len(self.buckets) >= self._sweep_at:
                    self._sweep(rate, capacity, now)
            else:
                tokens = bucket[0] + (now - bucket[1]) * rate
                if tokens > capacity:
                    tokens = capacity
            if tokens < 1.0:
                bucket[0] = tokens
                bucket[1] = now
                return S.PER_IP_RATE, f"per_ip_rate {rate:g}/s exceeded"
            bucket[0] = tokens - 1.0
            bucket[1] = now
        self.per_ip[ip] = count + 1
        self.open += 1
        return None

    def release(self, ip: str) -> None:
        """
        A connection admitted from C{ip} has closed.
        """
        self.open -= 1
        count = self.per_ip.get(ip, 0) - 1
        if count > 0:
            self.per_ip[ip] = count
        else:
            self.per_ip.pop(ip, None)

    def _sweep(self, rate: float, capacity: float, now: float) -> None:
        # A bucket that has refilled is the same as no bucket.
        full = [ip for ip, (tokens, when) in self.buckets.items() if tokens + (now - when) * rate >= capacity]
        for ip in full:
            del self.buckets[ip]
        self._sweep_at = max(SWEEP_AT, 2 * len(self.buckets))
