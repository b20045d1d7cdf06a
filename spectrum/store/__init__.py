"""
Shared state: access rules, apps made through the API, analytics counters,
recent events, origin health and cluster-wide rate counters.

C{memory} is the embedded default (one process); C{redis} shares the state
between processes and machines through one Redis server.
"""

from __future__ import annotations

from typing import Any


def make_store(url: str, node: str, reactor: Any = None) -> Any:
    """
    The store that C{url} names: C{memory}, or a Redis URL (txredisapi, a
    dependency; the config check says in one line when it is missing).

    @raise spectrum.store.url.StoreURLError: the URL is not usable.
    """
    if url == "memory":
        from spectrum.store.memory import MemoryStore

        return MemoryStore(node=node, reactor=reactor)
    from spectrum.store.redis import RedisStore

    return RedisStore(url, node=node, reactor=reactor)
