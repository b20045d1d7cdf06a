"""
The event log: one JSON line per connection event (connect, disconnect,
clientFiltered, tlsError, originError) with Cloudflare's Spectrum log field
names, appended to C{events.path} and rotated by size. Refused connections
past the sampled rate (L{spectrum.refusals}) get one C{clientFilteredSummary}
line per app and second with their count, so a flood cannot fill the disk.

Events are buffered in memory and written on a timer (C{flush_interval}),
or at once when the buffer holds L{MAX_BUFFERED} lines, so the data plane
pays a C{json.dumps} per event and a write system call per flush, not per
event. Rotation happens between lines: a file never holds more than
C{max_bytes} (unless one line alone is longer), C{path.1} is the newest
rotated file and at most C{max_files} rotated files are kept.

A write holds whole lines or none: one that stops short (a full disk) is
cut back to its last whole line. What could not be written is counted
(L{EventLog.dropped}, C{spectrum_eventlog_dropped_total}) and logged when
it starts, at most once a minute while it lasts, and when writing resumes.
"""

from __future__ import annotations

import errno
import json
import os
from typing import Any, Dict, List, Optional

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.logfile import LogFile

from spectrum.model import EventLogSettings
from spectrum.record import ConnectionRecord

#: Lines held before a write is forced, whatever the timer says.
MAX_BUFFERED = 2000


class _Cut(Exception):
    """
    A write stopped short: C{written} whole lines made it.
    """

    def __init__(self, written: int, error: OSError) -> None:
        super().__init__(written, error)
        self.written = written
        self.error = error


def _write_lines(logfile: LogFile, lines: List[bytes]) -> int:
    """
    Append C{lines} to C{logfile}'s file, whole lines or none: when a
    write stops short (a full disk writes what fits, then fails), the file
    is cut back to the end of its last whole line, so a torn record never
    runs into the next one. Returns how many lines were written.

    @raise _Cut: not all of them were.
    """
    data = b"".join(lines)
    fd = logfile._file.fileno()
    start = os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    done = 0
    try:
        while done < len(data):
            count = os.write(fd, view[done:])
            if count == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += count
    except OSError as e:
        keep = data.rfind(b"\n", 0, done) + 1
        try:
            os.ftruncate(fd, start + keep)
        except OSError:  # pragma: no cover - a file that cannot shrink
            pass
        os.lseek(fd, start + keep, os.SEEK_SET)
        logfile.size = start + keep
        raise _Cut(data.count(b"\n", 0, keep), e) from None
    logfile.size = start + done
    return len(lines)


class EventLogError(Exception):
    """
    The event log file could not be opened; C{str()} is one line.
    """


class EventLog(Service):
    """
    A recorder writing JSON lines; a service, so its timer runs while the
    proxy does. After it stops, events (of connections closed during the
    drain) are written at once. Without settings it records nothing.
    """

    log = Logger()

    def __init__(self, settings: Optional[EventLogSettings], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.settings = settings
        self._buffer: List[bytes] = []
        self._file: Optional[LogFile] = None
        self._timer: Optional[LoopingCall] = None
        self.written = 0
        #: events that could not be written (C{spectrum_eventlog_dropped_total})
        self.dropped = 0
        # since when writes fail, and how many were dropped since
        self._failing_since: Optional[float] = None
        self._dropped_since = 0
        self._said_at = 0.0

    # the recorder -------------------------------------------------------------

    def install(self, service: Any) -> None:
        """
        Run as a child of a L{spectrum.service.SpectrumService}, record its
        events and follow its config's C{events}.
        """
        self.setServiceParent(service)
        service.recorders.add(self)
        service.config_hooks.append(lambda config: self.reconfigure(config.events))

    def __call__(self, kind: str, record: ConnectionRecord) -> None:
        if self.settings is None:
            return
        event = record.as_event(kind)
        event["Timestamp"] = self.reactor.seconds()
        self._buffer.append(json.dumps(event, separators=(",", ":"), default=str).encode("utf-8") + b"\n")
        if len(self._buffer) >= MAX_BUFFERED or not self.running:
            self.flush()

    def refusal_summary(self, app: str, second: int, count: int, statuses: Dict[int, int]) -> None:
        """
        One line for the refused connections of C{app} in one second that
        got no line of their own (past the sampled rate).
        """
        if self.settings is None:
            return
        event = {
            "Event": "clientFilteredSummary",
            "Application": app,
            "Second": second,
            "Count": count,
            "Statuses": {str(status): n for status, n in sorted(statuses.items())},
            "Timestamp": self.reactor.seconds(),
        }
        self._buffer.append(json.dumps(event, separators=(",", ":")).encode("utf-8") + b"\n")
        if len(self._buffer) >= MAX_BUFFERED or not self.running:
            self.flush()

    # the file -----------------------------------------------------------------

    def open(self) -> None:
        """
        Open (or create) the file now.

        @raise EventLogError: it cannot be.
        """
        if self._file is not None or self.settings is None:
            return
        path = os.path.abspath(self.settings.path)
        try:
            self._file = LogFile(
                os.path.basename(path),
                os.path.dirname(path),
                rotateLength=None,
                maxRotatedFiles=self.settings.max_files,
            )
        except OSError as e:
            raise EventLogError(f"events.path: cannot open {path!r}: {e.strerror or e}") from None

    def flush(self) -> None:
        """
        Write what is buffered, rotating between lines as needed.
        """
        if not self._buffer:
            return
        lines, self._buffer = self._buffer, []
        if self._file is None:
            try:
                self.open()
            except EventLogError as e:
                self._dropping(len(lines), str(e))
                return
        logfile = self._file
        if logfile is None or self.settings is None:
            return
        limit = self.settings.max_bytes
        written = 0
        try:
            chunk: List[bytes] = []
            size = logfile.size
            for line in lines:
                if size + len(line) > limit and size > 0:
                    if chunk:
                        written += _write_lines(logfile, chunk)
                        chunk = []
                    logfile.rotate()
                    size = logfile.size
                chunk.append(line)
                size += len(line)
            if chunk:
                written += _write_lines(logfile, chunk)
        except _Cut as cut:
            written += cut.written
            self._dropping(len(lines) - written, f"write failed: {cut.error.strerror or cut.error}")
        else:
            self._writing()
        self.written += written

    def _dropping(self, count: int, reason: str) -> None:
        """
        C{count} events could not be written: count them, and say so once
        when it starts and then at most once a minute while it lasts.
        """
        self.dropped += count
        self._dropped_since += count
        now = self.reactor.seconds()
        if self._failing_since is None or now - self._said_at >= 60:
            self.log.error(
                "event log {path}: {reason}; {count} events dropped so far",
                path=self.settings.path if self.settings else None,
                reason=reason,
                count=self._dropped_since,
            )
            self._said_at = now
        if self._failing_since is None:
            self._failing_since = now

    def _writing(self) -> None:
        if self._failing_since is None:
            return
        self.log.info(
            "event log {path}: writing again; {count} events were dropped",
            path=self.settings.path if self.settings else None,
            count=self._dropped_since,
        )
        self._failing_since = None
        self._dropped_since = 0

    def reconfigure(self, settings: Optional[EventLogSettings]) -> None:
        """
        Take new settings; a new path (or rotation) reopens the file, none
        stops the log.
        """
        if settings == self.settings:
            return
        self.flush()
        self.settings = settings
        if self._file is not None:
            self._file.close()
            self._file = None
        self._stop_timer()
        if self.running and settings is not None:
            try:
                self.open()
            except EventLogError as e:
                self.log.error("{error}; events are not logged until it can be", error=str(e))
            self._start_timer()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    # the service ----------------------------------------------------------------

    def _start_timer(self) -> None:
        if self.settings is None:
            return
        timer = self._timer = LoopingCall(self._tick)
        timer.clock = self.reactor
        timer.start(self.settings.flush_interval, now=False)

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None

    def _tick(self) -> None:
        # A LoopingCall stops for good on an error: never let one out.
        try:
            self.flush()
        except Exception:
            self.log.failure("event log flush failed")

    def privilegedStartService(self) -> None:
        # Open before privileges are dropped: log directories are often root's.
        try:
            self.open()
        except EventLogError as e:
            # twistd prints the line; logging it too would tell it twice.
            raise SystemExit(f"spectrum: {e}") from None
        super().privilegedStartService()

    def startService(self) -> None:
        self.open()
        super().startService()
        self._start_timer()

    def stopService(self) -> Any:
        super().stopService()
        self._stop_timer()
        self.flush()
        return None
