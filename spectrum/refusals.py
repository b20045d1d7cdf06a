"""
Refused connections, counted cheaply enough that a flood of them cannot take
the process down.

Every refusal is counted: in the analytics (so the API, C{/metrics} and the
page show each one) and per app, status and rule. A full record (the log
line, the event log, the admin page's recent refusals) is kept for the first
L{SAMPLED_PER_SECOND} refusals of each app in each second; the rest of that
second become one summary line in the log and in the event log once the
second is over. So what a refusal costs does not grow with the flood, and a
flood cannot fill the disk.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.logger import Logger

from spectrum.record import ConnectionRecord, Recorders

#: Refusals per app and second that get a whole record.
SAMPLED_PER_SECOND = 20

#: (app, kind, status, rule id)
RefusalKey = Tuple[str, str, int, str]


class Refusals:
    """
    The counts of refused connections, and the gate deciding which of them
    get a whole record.

    @ivar totals: every refusal so far, by (app, kind, status, rule id).
    @ivar summaries: called with each second's summary (app, second, the
        count of refusals without a record, and those by status).
    """

    log = Logger()

    def __init__(self, recorders: Recorders, reactor: Any, per_second: int = SAMPLED_PER_SECOND) -> None:
        self.recorders = recorders
        self.reactor = reactor
        self.per_second = per_second
        self.totals: Dict[RefusalKey, int] = {}
        #: called for a refusal that gets no record: (app, kind, status,
        #: client address, country)
        self.counters: List[Callable[[str, str, int, str, str], None]] = []
        self.summaries: List[Callable[[str, int, int, Dict[int, int]], None]] = []
        self._second = -1
        # app -> records given this second
        self._given: Dict[str, int] = {}
        # app -> {status: count} of refusals without a record this second
        self._unrecorded: Dict[str, Dict[int, int]] = {}
        self._timer: Optional[Any] = None

    def wants_record(self, app: str) -> bool:
        """
        Whether the next refusal for C{app} gets a whole record (and counts
        it as given); L{False} past this second's share.
        """
        second = int(self.reactor.seconds())
        if second != self._second:
            self._roll(second)
        given = self._given.get(app, 0)
        if given >= self.per_second:
            return False
        self._given[app] = given + 1
        return True

    def record(self, kind: str, record: ConnectionRecord, rule: str = "") -> None:
        """
        A refusal with a whole record (L{wants_record} said yes).
        """
        key = (record.application, kind, record.status, rule)
        self.totals[key] = self.totals.get(key, 0) + 1
        self.recorders(kind, record)

    def count(self, app: str, kind: str, status: int, rule: str, client_ip: str, country: str) -> None:
        """
        A refusal without a record: counted, and summed into this second's
        summary line.
        """
        key = (app, kind, status, rule)
        self.totals[key] = self.totals.get(key, 0) + 1
        for counter in self.counters:
            counter(app, kind, status, client_ip, country)
        now = self.reactor.seconds()
        second = int(now)
        if second != self._second:
            self._roll(second)
        statuses = self._unrecorded.get(app)
        if statuses is None:
            statuses = self._unrecorded[app] = {}
            if self._timer is None:
                # Summarize this second once it is over, even if no later
                # refusal comes to roll it.
                self._timer = self.reactor.callLater(second + 1 - now + 0.01, self._flush)
        statuses[status] = statuses.get(status, 0) + 1

    def _roll(self, second: int) -> None:
        self._summarize()
        self._second = second
        self._given = {}

    def _flush(self) -> None:
        self._timer = None
        second = int(self.reactor.seconds())
        if second != self._second:
            self._roll(second)

    def _summarize(self) -> None:
        if not self._unrecorded:
            return
        unrecorded, self._unrecorded = self._unrecorded, {}
        second = self._second
        for app, statuses in sorted(unrecorded.items()):
            total = sum(statuses.values())
            self.log.info(
                "{app}: {count} more connections refused in that second ({statuses}); counted, not logged one by one",
                app=app,
                count=total,
                statuses=", ".join(f"{count} with status {status}" for status, count in sorted(statuses.items())),
            )
            for summary in self.summaries:
                summary(app, second, total, statuses)

    def stop(self) -> None:
        """
        Write what is pending now (at shutdown).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self._summarize()
