"""
Origin selection for one pool: which origins a new connection tries, in order.

Pure bookkeeping, no reactor and no I/O: the proxy asks L{Balancer.candidates}
once per connection and reports opens and closes; the health checker reports
through L{Balancer.set_up}.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect_right
from collections.abc import Callable, Sequence
from hashlib import blake2b
from math import fsum, isfinite, log

from spectrum.model import LOAD_BALANCING, Origin, Pool

# Points on the hash ring for an origin of the pool's mean weight: enough
# that shares stay within about 10% of the weights, few enough that a
# rebuild stays cheap. Each origin has this many times its weight over the
# mean (at least one), so the ring holds about this many per origin
# whatever the weights' scale: weights 1 and 2 make the same ring as 1000
# and 2000, and one huge weight cannot make a huge ring.
POINTS_PER_ORIGIN = 100


def _hash64(data: str) -> int:
    """
    A stable 64-bit hash: unlike C{hash()}, the same on every process and run,
    so a client keeps its origin across restarts and across edges.
    """
    return int.from_bytes(blake2b(data.encode("utf-8"), digest_size=8).digest(), "big")


class _State:
    """
    What the balancer knows about one origin beyond its configuration.
    """

    __slots__ = ("active", "current", "draining", "origin", "up")

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.active = 0
        self.up = True
        self.draining = False
        # Smooth weighted round robin's running weight.
        self.current = 0.0


_Entry = tuple[Origin, _State]


class Balancer:
    """
    Spreads connections over the origins of one L{Pool}, following its
    C{load_balancing} strategy, and keeps each origin's health, drain state and
    open connection count.

    Origins are known by name: a reload (L{update}) keeps the state of every
    origin whose name stays.

    @ivar when_all_down: C{"refuse"} (the default): with no usable origin,
        L{candidates} is empty. C{"try_all"}: it falls back to every enabled,
        non-draining origin whatever its health, since a health check can be
        wrong while the origin still serves.
    """

    __slots__ = (
        "_pick",
        "_pool",
        "_ring",
        "_ring_cache",
        "_rng",
        "_states",
        "_usable",
        "when_all_down",
    )

    def __init__(self, pool: Pool, rng: random.Random | None = None) -> None:
        self.when_all_down = "refuse"
        self._rng = rng if rng is not None else random.Random()
        self._states: dict[str, _State] = {}
        self.update(pool)

    @property
    def pool(self) -> Pool:
        """
        The pool currently balanced over.
        """
        return self._pool

    def update(self, pool: Pool) -> None:
        """
        Balance over C{pool} from now on (a reload).

        Origins whose name is kept keep their open connection count, health
        and drain state; new origins start up and not draining; removed ones
        are forgotten.

        @raise ValueError: the pool has an unknown strategy, two origins of the
            same name, or a weight that is not positive.
        """
        pick = _STRATEGIES.get(pool.load_balancing)
        if pick is None:
            raise ValueError(
                f"pool {pool.name!r}: unknown load balancing {pool.load_balancing!r},"
                f" expected one of {', '.join(LOAD_BALANCING)}"
            )
        states: dict[str, _State] = {}
        for origin in pool.origins:
            if origin.name in states:
                raise ValueError(f"pool {pool.name!r}: origin {origin.name!r} appears twice")
            if not (isfinite(origin.weight) and origin.weight > 0):
                raise ValueError(
                    f"pool {pool.name!r}: origin {origin.name!r} has weight {origin.weight!r},"
                    " it must be a finite number more than 0"
                )
            state = _State(origin)
            old = self._states.get(origin.name)
            if old is not None:
                state.active = old.active
                state.up = old.up
                state.draining = old.draining
            states[origin.name] = state
        self._pool = pool
        self._states = states
        self._pick = pick
        self._usable: list[_Entry] | None = None
        self._ring_cache: tuple[frozenset, tuple[list[int], list[_Entry]]] | None = None
        self._ring: list[tuple[int, str]] = []
        if pool.load_balancing == "hash" and pool.origins:
            ring = []
            mean = fsum(origin.weight for origin in pool.origins) / len(pool.origins)
            for origin in pool.origins:
                for i in range(max(1, round(POINTS_PER_ORIGIN * (origin.weight / mean)))):
                    ring.append((_hash64(f"{origin.name}#{i}"), origin.name))
            ring.sort()
            self._ring = ring

    def candidates(self, client_ip: str, tries: int) -> list[Origin]:
        """
        Up to C{tries} distinct origins for a new connection from C{client_ip},
        in the order to try them: the strategy's pick, then its next choices.

        Only enabled, up, non-draining origins are offered; when there is none,
        see L{when_all_down}. Only the first pick moves the strategy on (round
        robin's position), as only it is sure to be used.
        """
        if tries <= 0:
            return []
        entries = self._usable_entries()
        if not entries:
            if self.when_all_down != "try_all":
                return []
            entries = [(s.origin, s) for s in self._states.values() if s.origin.enabled and not s.draining]
            if not entries:
                return []
        if len(entries) == 1:
            # Every strategy picks the only origin (and round robin's
            # weights would cancel out): no state to move.
            return [entries[0][0]]
        return self._pick(self, entries, client_ip, tries)

    def connection_opened(self, origin: Origin) -> None:
        """
        A connection to C{origin} is open.
        """
        state = self._states.get(origin.name)
        if state is not None:
            state.active += 1

    def connection_closed(self, origin: Origin) -> None:
        """
        A connection to C{origin} has closed. Closes of origins removed by a
        reload are ignored.
        """
        state = self._states.get(origin.name)
        # A connection opened before the origin was removed and added back
        # may close after the count restarted at 0.
        if state is not None and state.active > 0:
            state.active -= 1

    def active(self, origin_name: str) -> int:
        """
        How many connections to the origin called C{origin_name} are open.

        @raise KeyError: the pool has no such origin.
        """
        return self._states[origin_name].active

    def set_up(self, origin_name: str, up: bool) -> None:
        """
        Record the health of the origin called C{origin_name}. Unknown names
        are ignored: a probe may finish after a reload removed its origin.
        """
        state = self._states.get(origin_name)
        if state is not None and state.up != up:
            state.up = up
            self._usable = None

    def is_up(self, origin_name: str) -> bool:
        """
        Whether the origin called C{origin_name} is marked up.

        @raise KeyError: the pool has no such origin.
        """
        return self._states[origin_name].up

    def set_draining(self, origin_name: str, draining: bool) -> None:
        """
        Start or stop draining the origin called C{origin_name}: a draining
        origin gets no new connections but keeps its open ones. Unknown names
        are ignored.
        """
        state = self._states.get(origin_name)
        if state is not None and state.draining != draining:
            state.draining = draining
            self._usable = None

    def is_draining(self, origin_name: str) -> bool:
        """
        Whether the origin called C{origin_name} is draining.

        @raise KeyError: the pool has no such origin.
        """
        return self._states[origin_name].draining

    def _usable_entries(self) -> list[_Entry]:
        # Cached: health and drain changes are rare, picks are not.
        if self._usable is None:
            self._usable = [
                (s.origin, s) for s in self._states.values() if s.origin.enabled and s.up and not s.draining
            ]
        return self._usable

    def _round_robin(self, entries: list[_Entry], client_ip: str, tries: int) -> list[Origin]:
        # nginx's smooth weighted round robin.
        total = 0.0
        best: _Entry | None = None
        for entry in entries:
            origin, state = entry
            total += origin.weight
            state.current += origin.weight
            if best is None or state.current > best[1].current:
                best = entry
        assert best is not None
        best[1].current -= total
        if tries == 1:
            return [best[0]]
        # Fallbacks: the others in the order the next pick would favour them.
        rest = heapq.nsmallest(
            tries - 1,
            (e for e in entries if e is not best),
            key=lambda e: -(e[1].current + e[0].weight),
        )
        return [best[0]] + [e[0] for e in rest]

    def _least_connections(self, entries: list[_Entry], client_ip: str, tries: int) -> list[Origin]:
        # Round robin's running weights break ties, so equal load rotates
        # in proportion to weight.
        total = 0.0
        best: _Entry | None = None
        best_load = 0.0
        for entry in entries:
            origin, state = entry
            total += origin.weight
            state.current += origin.weight
            load = state.active / origin.weight
            if best is None or load < best_load or (load == best_load and state.current > best[1].current):
                best = entry
                best_load = load
        assert best is not None
        best[1].current -= total
        if tries == 1:
            return [best[0]]
        rest = heapq.nsmallest(
            tries - 1,
            (e for e in entries if e is not best),
            key=lambda e: (e[1].active / e[0].weight, -e[1].current),
        )
        return [best[0]] + [e[0] for e in rest]

    def _random(self, entries: list[_Entry], client_ip: str, tries: int) -> list[Origin]:
        # Efraimidis-Spirakis: the largest log(u)/weight keys are a weighted
        # sample without replacement, in draw order. The first two are the
        # power-of-two choices, the rest the fallbacks.
        rand = self._rng.random
        drawn = heapq.nlargest(
            max(tries, 2),
            entries,
            key=lambda e: log(1.0 - rand()) / e[0].weight,
        )
        if len(drawn) >= 2:
            (a, sa), (b, sb) = drawn[0], drawn[1]
            if sb.active / b.weight < sa.active / a.weight:
                drawn[0], drawn[1] = drawn[1], drawn[0]
        return [e[0] for e in drawn[:tries]]

    def _hash(self, entries: list[_Entry], client_ip: str, tries: int) -> list[Origin]:
        points, owners = self._ring_for(entries)
        size = len(points)
        start = bisect_right(points, _hash64(client_ip))
        wanted = min(tries, len(entries))
        picked: list[Origin] = []
        seen = set()
        for i in range(start, start + size):
            origin = owners[i % size][0]
            if origin.name not in seen:
                seen.add(origin.name)
                picked.append(origin)
                if len(picked) == wanted:
                    break
        return picked

    def _ring_for(self, entries: Sequence[_Entry]) -> tuple[list[int], list[_Entry]]:
        # The ring of only these origins' points: the same points as the full
        # ring, so skipping absent origins moves only their clients, and the
        # walk for fallbacks never wades through points of down origins.
        names = frozenset(origin.name for origin, _ in entries)
        cached = self._ring_cache
        if cached is not None and cached[0] == names:
            return cached[1]
        states = self._states
        kept = [(point, name) for point, name in self._ring if name in names]
        ring = (
            [point for point, _ in kept],
            [(states[n].origin, states[n]) for _, n in kept],
        )
        self._ring_cache = (names, ring)
        return ring


_Pick = Callable[[Balancer, list[_Entry], str, int], list[Origin]]

_STRATEGIES: dict[str, _Pick] = {
    "round_robin": Balancer._round_robin,
    "least_connections": Balancer._least_connections,
    "random": Balancer._random,
    "hash": Balancer._hash,
}
