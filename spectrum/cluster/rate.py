"""
C{per_ip_rate} counted across the nodes sharing a store.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.task import LoopingCall

from spectrum.cluster.figures import SEP
from spectrum.store.interface import StoreUnavailable


class ClusterRate:
    """
    C{per_ip_rate} counted across the nodes sharing a store, for apps with
    C{limits.per_ip_rate_scope: cluster}.

    Counting is in one-second windows. The edge check reads only local
    numbers: what this node admitted from the address in the current
    second, and what the other nodes had admitted at the last sync. Every
    C{interval} the new admissions go to the store (L{IStore.hit}), which
    answers with the cluster's count. So the cluster-wide limit can be
    overshot by what the other nodes admit within one sync interval; the
    node's own token bucket (C{per_ip_rate}) applies as well.
    """

    def __init__(self, store: Any, reactor: Any, interval: float = 0.1) -> None:
        self.store = store
        self.reactor = reactor
        self.interval = interval
        self._second = -1
        #: (app, ip) -> [admitted here this second, of which sent, others' count]
        self.counts: Dict[Any, List[int]] = {}
        self._syncer = LoopingCall(self.sync)
        self._syncer.clock = reactor

    def start(self) -> None:
        self._syncer.start(self.interval, now=False)

    def stop(self) -> None:
        if self._syncer.running:
            self._syncer.stop()

    def _roll(self) -> None:
        second = int(self.reactor.seconds())
        if second != self._second:
            self._second = second
            self.counts = {}

    def check(self, app: Any, ip: str) -> Optional[Tuple[int, str]]:
        """
        The admission gate: refuse with 429 when the cluster has admitted
        C{per_ip_rate} connections from the address this second.
        """
        limits = getattr(app, "limits", None)
        if limits is None or not limits.per_ip_rate or limits.per_ip_rate_scope != "cluster":
            return None
        self._roll()
        key = (app.name, ip)
        entry = self.counts.get(key)
        if entry is None:
            entry = self.counts[key] = [0, 0, 0]
        if entry[0] + entry[2] >= limits.per_ip_rate:
            from spectrum import status as S

            return S.PER_IP_RATE, f"per_ip_rate {limits.per_ip_rate:g}/s exceeded across the cluster"
        entry[0] += 1
        return None

    def sync(self) -> Any:
        if not self.store.available:
            return None
        self._roll()
        second = self._second
        for (app, ip), entry in list(self.counts.items()):
            # Sent even when nothing is new here: the answer brings the
            # other nodes' count.
            fresh = entry[0] - entry[1]
            entry[1] = entry[0]
            d = self.store.hit(f"{app}{SEP}{ip}", 1, fresh)
            d.addCallback(self._counted, (app, ip), entry, second)
            d.addErrback(lambda f: f.trap(StoreUnavailable))
        return None

    def _counted(self, total: int, key: Any, entry: List[int], second: int) -> None:
        if second == self._second and self.counts.get(key) is entry:
            entry[2] = max(0, int(total) - entry[1])
