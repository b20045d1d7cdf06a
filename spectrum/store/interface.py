"""
The contract every store keeps (L{IStore}), and what a store tells the
nodes that listen to it (L{IStoreListener}).

A store is the slow, shared side of spectrum: the data plane never calls it
while a connection waits. Nodes keep local copies of rules and apps, fed by
change notifications, and push counters on a timer.

Documents (rules, apps) are JSON-able dicts kept by C{kind} and C{id}.
Counters are flat C{{name: int}} dicts, summed per node and per minute.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from zope.interface import Attribute, Interface

#: The kinds of document a store keeps and announces changes of.
RULES = "rules"
APPS = "apps"
KINDS = (RULES, APPS)


class StoreUnavailable(Exception):
    """
    The store cannot be reached right now; the caller keeps what it has and
    tries again later.
    """


class IStoreListener(Interface):
    """
    Told about changes to the documents of a store, made by any node.
    """

    def changed(kind: str, id: str, doc: Optional[Dict[str, Any]]) -> None:
        """
        Document C{id} of C{kind} is now C{doc}; L{None} means deleted.
        """

    def resync() -> None:
        """
        Changes may have been missed (the store was out of reach): read the
        whole state again.
        """


class IStore(Interface):
    """
    Shared state for one or more spectrum nodes.

    Every method returns a Deferred, which fails with L{StoreUnavailable}
    when the store is out of reach.
    """

    node = Attribute("The name of this node, as it appears in per-node figures.")
    available = Attribute("Whether the store can be reached now (a bool).")

    def start() -> Any:
        """
        Begin connecting (and reconnecting); returns at once.
        """

    def stop() -> Any:
        """
        Disconnect for good; a Deferred that fires once closed.
        """

    def listen(listener: IStoreListener) -> None:
        """
        Tell C{listener} about every document change from now on.
        """

    def unlisten(listener: IStoreListener) -> None:
        """
        Stop telling C{listener}.
        """

    # documents: rules and apps ------------------------------------------

    def documents(kind: str) -> Any:
        """
        Every document of C{kind}: a Deferred firing with C{{id: doc}}.
        """

    def put(kind: str, id: str, doc: Dict[str, Any]) -> Any:
        """
        Store C{doc} as document C{id} of C{kind} and tell every node.
        """

    def delete(kind: str, id: str) -> Any:
        """
        Delete document C{id} of C{kind} and tell every node; fires with
        whether there was one.
        """

    # analytics ----------------------------------------------------------

    def add_counts(node: str, minute: Optional[int], counts: Dict[str, int]) -> Any:
        """
        Add C{counts} to C{node}'s running totals and to its bucket for
        C{minute} (minutes since the epoch); with C{minute} L{None}, to the
        totals only.
        """

    def totals() -> Any:
        """
        Every node's running totals: C{{node: {name: int}}}.
        """

    def minutes(first: int, last: int) -> Any:
        """
        The minute buckets from C{first} to C{last} inclusive:
        C{{node: {minute: {name: int}}}}.
        """

    def add_events(events: List[Dict[str, Any]]) -> Any:
        """
        Append C{events} to the shared list of recent events (bounded; the
        oldest fall off).
        """

    def recent_events(limit: int) -> Any:
        """
        The newest C{limit} events, newest first.
        """

    # origin health --------------------------------------------------------

    def put_health(node: str, origin: str, state: Dict[str, Any]) -> Any:
        """
        Record C{node}'s view of C{origin} (C{"pool/origin"}).
        """

    def health() -> Any:
        """
        Every node's view: C{{node: {origin: state}}}.
        """

    # cluster-wide rate limits --------------------------------------------

    def hit(key: str, window: int, amount: int) -> Any:
        """
        Count C{amount} hits on C{key} in the current C{window}-second
        window (the same windows on every node: time since the epoch);
        fires with the cluster's count for that window.
        """
