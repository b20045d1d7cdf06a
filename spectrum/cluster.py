"""
This node's side of the shared store: the store's lifecycle, and (as the
features land) the local copies the data plane reads and the counters it
pushes.

The data plane never waits here. Reads are from local copies kept fresh by
change notifications; writes are buffered and flushed on a timer.
"""

from __future__ import annotations

import socket
from typing import Any, Optional

from twisted.application.service import Service
from twisted.logger import Logger

from spectrum.model import Config


def node_name(config: Config, worker: Optional[int] = None) -> str:
    """
    This process's name in per-node figures: C{node} from the config (or
    the host name), with C{-wN} for worker N.
    """
    base = config.node or socket.gethostname().split(".")[0] or "node"
    return base if worker is None else f"{base}-w{worker}"


class Cluster(Service):
    """
    Owns this process's store handle: started with the process, stopped
    last.
    """

    log = Logger()

    def __init__(self, store: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.store = store
        self.node = store.node

    def startService(self) -> None:
        super().startService()
        self.store.start()

    def stopService(self) -> Any:
        super().stopService()
        return self.store.stop()
