"""
The kernel shield: access rules as eBPF socket filters on the edge sockets,
so a blocked source's SYN (TCP) or datagram (UDP) is dropped by the kernel
before it is queued: no accept, no system call, no Python. On TCP ports of
an app with C{limits.per_ip_rate} (node scope), a SYN over the address's
rate is dropped there too (GCRA: one time stamp per address in an LRU map,
the same burst and rate as the userspace bucket, which stays as the
fallback and for concurrency limits). UDP sockets get the rules but no
rate: the kernel sees datagrams, not sessions, and a session's datagrams
must not count against a rate of new sessions, so the rate of UDP sessions
stays with userspace admission.

What the kernel decides is exactly the part of the rules' verdict that an
address alone settles (L{spectrum.firewall}'s precedence): the address rules
(C{ip}, C{ip6}, C{ip_range}) of the socket's scope, in an LPM trie per
address family, where the longest prefix wins and, at equal length, a
whitelist beats a block. A packet whose longest match is a block is dropped
and counted against that rule; a whitelist match, or no match, goes on to
the userspace admission (which also applies ASN and country rules, limits
and gates). So the kernel never refuses a client that userspace would admit.

A scope is the rules one socket answers to: an app's own rules with the
global ones (a port one app has alone), or the global ones only (a port
shared by SNI, before the app is known; an app with C{ip_firewall: false}
gets no filter). Each scope has its maps and programs; rule changes (file
reload, API, other nodes through the store) update the maps in place, from
the firewall's change notice, without re-attaching.

TCP programs look at SYNs only: every other segment of an accepted
connection (which inherits the listener's filter) returns at the first
test. The programs and maps belong to this process: they go away with it,
whatever the way it ends, and nothing stays attached.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.logger import Logger

from spectrum.kernel import bpf
from spectrum.kernel.bpf import (
    DW,
    R0,
    R1,
    R2,
    R3,
    R4,
    R6,
    R7,
    R8,
    R9,
    R10,
    B,
    Label,
    W,
    add,
    add_imm,
    and_imm,
    assemble,
    atomic_add64,
    call,
    exit_,
    ja,
    jeq_imm,
    jge,
    jgt,
    jne_imm,
    jset_imm,
    ld_abs,
    ld_ind,
    ld_map,
    ldx,
    lsh_imm,
    mov,
    mov_imm,
    st_imm,
    stx,
    to_be32,
)

#: trie values: (verdict, counter slot)
DROP = 1
PASS = 2
#: rules per scope whose drops are counted one by one (more share slot 0)
SLOTS = 4096
#: the counter slot of SYNs over the per-address rate
RATE_SLOT = SLOTS - 1
#: addresses whose rate is followed per scope (least recently seen go first)
RATE_ADDRESSES = 65536
#: prefixes per trie
MAX_PREFIXES = 262144
#: the targets an address settles
ADDRESS_TARGETS = ("ip", "ip6", "ip_range")

TCP_SYN = 0x02
TCP_ACK = 0x10


class ShieldError(Exception):
    """
    The kernel filter could not be had; C{str()} is one line saying why.
    """


def _program(
    family: int, stream: bool, tries: Sequence[int], counters: int, rate: int = -1, buckets: int = -1
) -> bytes:
    """
    The socket filter for one address family and socket kind, looking the
    source up in C{trie} and counting drops in C{counters}; on TCP, with
    C{rate} (the scope's per-address rate: interval and tolerance in ns)
    and C{buckets} (each address's theoretical arrival time, GCRA), a SYN
    over the rate is dropped too.
    """
    code: List[object] = [mov(R6, R1)]
    if family == socket.AF_INET:
        if stream:
            # Only a SYN opens a connection: anything else returns at once.
            code += [
                ld_abs(B, 0),
                and_imm(R0, 0x0F),
                lsh_imm(R0, 2),
                mov(R7, R0),
                ld_ind(B, R7, 13),
                jset_imm(R0, TCP_ACK, "keep"),
                jset_imm(R0, TCP_SYN, "check"),
                ja("keep"),
                Label("check"),
            ]
        code += [
            ld_abs(W, 12),
            to_be32(R0),
            stx(W, R10, R0, -4),
            st_imm(W, R10, -8, 32),
        ]
        key = -8
    else:
        if stream:
            code += [
                ld_abs(B, 6),
                jne_imm(R0, socket.IPPROTO_TCP, "keep"),
                ld_abs(B, 40 + 13),
                jset_imm(R0, TCP_ACK, "keep"),
                jset_imm(R0, TCP_SYN, "check"),
                ja("keep"),
                Label("check"),
            ]
        code.append(st_imm(W, R10, -24, 128))
        for word in range(4):
            code += [ld_abs(W, 8 + 4 * word), to_be32(R0), stx(W, R10, R0, -20 + 4 * word)]
        key = -24
    limited = stream and rate >= 0 and buckets >= 0
    after = "rate" if limited else "keep"
    # The tries in precedence order (addresses, then ASNs, then countries):
    # the first that holds a prefix of the source decides.
    for trie in tries:
        code += [
            ld_map(R1, trie),
            mov(R2, R10),
            add_imm(R2, key),
            call(bpf.FUNC_MAP_LOOKUP_ELEM),
            jne_imm(R0, 0, "hit"),
        ]
    code += [
        ja(after),
        Label("hit"),
        ldx(W, R7, R0, 0),
        ldx(W, R8, R0, 4),
        jeq_imm(R7, PASS, after),
        Label("count"),
        # Count the drop against its slot (R8): packets, then bytes.
        stx(W, R10, R8, -28),
        ld_map(R1, counters),
        mov(R2, R10),
        add_imm(R2, -28),
        call(bpf.FUNC_MAP_LOOKUP_ELEM),
        jeq_imm(R0, 0, "drop"),
        mov_imm(R1, 1),
        atomic_add64(R0, R1, 0),
        ldx(W, R1, R6, 0),
        atomic_add64(R0, R1, 8),
        Label("drop"),
        mov_imm(R0, 0),
        exit_(),
    ]
    if limited:
        key = -4 if family == socket.AF_INET else -20
        code += [
            Label("rate"),
            st_imm(W, R10, -32, 0),
            ld_map(R1, rate),
            mov(R2, R10),
            add_imm(R2, -32),
            call(bpf.FUNC_MAP_LOOKUP_ELEM),
            jeq_imm(R0, 0, "keep"),
            ldx(DW, R7, R0, 0),  # interval
            jeq_imm(R7, 0, "keep"),
            ldx(DW, R8, R0, 8),  # tolerance
            call(bpf.FUNC_KTIME_GET_NS),
            mov(R9, R0),  # now
            ld_map(R1, buckets),
            mov(R2, R10),
            add_imm(R2, key),
            call(bpf.FUNC_MAP_LOOKUP_ELEM),
            jne_imm(R0, 0, "known"),
            # A new address: its next SYN is due one interval from now.
            add(R9, R7),
            stx(DW, R10, R9, -40),
            ld_map(R1, buckets),
            mov(R2, R10),
            add_imm(R2, key),
            mov(R3, R10),
            add_imm(R3, -40),
            mov_imm(R4, 0),
            call(bpf.FUNC_MAP_UPDATE_ELEM),
            ja("keep"),
            Label("known"),
            ldx(DW, R1, R0, 0),  # the theoretical arrival time
            mov(R2, R9),
            add(R2, R8),
            jgt(R1, R2, "over"),
            jge(R1, R9, "later"),
            mov(R1, R9),
            Label("later"),
            add(R1, R7),
            stx(DW, R0, R1, 0),
            ja("keep"),
            Label("over"),
            mov_imm(R8, RATE_SLOT),
            ja("count"),
        ]
    code += [
        Label("keep"),
        mov_imm(R0, -1),
        exit_(),
    ]
    return assemble(code)


#: (kind, family, prefix length, network bytes)
Entry = Tuple[str, int, int, bytes]
#: the tries of a scope, in precedence order
KINDS = ("address", "asn", "country")
GEO_TARGETS = ("asn", "country")


def compile_rules(
    rules: Iterable[Any], slots: Dict[str, int], expand: Optional[Callable[[str, str], Sequence[Any]]] = None
) -> Dict[Entry, Tuple[int, int]]:
    """
    The trie entries of C{rules}, by kind (address, asn, country): per
    prefix, DROP unless a whitelist rule of that kind has the same prefix
    (whitelist beats block at equal specificity), and the counter slot of
    the (first) block rule deciding it. ASN and country rules become the
    networks C{expand} gives for them (from the GeoIP databases).
    """
    entries: Dict[Entry, Tuple[int, int]] = {}
    for rule in rules:
        if rule.target in ADDRESS_TARGETS:
            kind = "address"
            networks: Sequence[Any] = [ipaddress.ip_network(rule.value, strict=False)]
        elif expand is not None and rule.target in GEO_TARGETS:
            kind = rule.target
            networks = expand(rule.target, rule.value)
        else:
            continue
        for network in networks:
            family = socket.AF_INET if network.version == 4 else socket.AF_INET6
            key = (kind, family, network.prefixlen, network.network_address.packed)
            current = entries.get(key)
            if rule.mode == "whitelist":
                entries[key] = (PASS, 0)
            elif current is None:
                entries[key] = (DROP, slots.get(rule.id, 0))
    return entries


class Scope:
    """
    The maps and programs of one scope (one app's rules with the global
    ones, or the global ones alone).
    """

    def __init__(self, name: Optional[str], directory: Optional[str] = None) -> None:
        #: the app whose rules join the global ones; None: global only
        self.name = name
        #: where its maps are pinned, shared with the other workers (None:
        #: this process's own)
        self.directory = directory
        self._maps: List[bpf.Map] = []
        self._programs: Dict[Tuple[int, bool], int] = {}
        self.entries: Dict[Entry, Tuple[int, int]] = {}
        try:
            if directory is not None:
                os.makedirs(directory, exist_ok=True)
            self.tries: Dict[Tuple[str, int], bpf.Map] = {}
            for kind in KINDS:
                for family, size in ((socket.AF_INET, 8), (socket.AF_INET6, 20)):
                    self.tries[(kind, family)] = self._map(
                        f"{kind}{4 if family == socket.AF_INET else 6}",
                        bpf.MAP_TYPE_LPM_TRIE,
                        size,
                        8,
                        MAX_PREFIXES,
                        bpf.F_NO_PREALLOC,
                    )
            self.counters = self._map("counters", bpf.MAP_TYPE_ARRAY, 4, 16, SLOTS)
            self.rate = self._map("rate", bpf.MAP_TYPE_ARRAY, 4, 16, 1)
            self.buckets4 = self._map("buckets4", bpf.MAP_TYPE_LRU_HASH, 4, 8, RATE_ADDRESSES)
            self.buckets6 = self._map("buckets6", bpf.MAP_TYPE_LRU_HASH, 16, 8, RATE_ADDRESSES)
            # Rule id (a digest) -> counter slot, and slot -> rule: shared,
            # so every worker counts a rule in the same slot.
            self.slot_of_rule = self._map("slots", bpf.MAP_TYPE_HASH, 16, 4, SLOTS)
            self.rule_of_slot = self._map("owners", bpf.MAP_TYPE_HASH, 4, 16, SLOTS)
            for (kind, trie_family), trie in self.tries.items():
                if not trie.fresh:
                    self._read(kind, trie_family, trie)
            for family in (socket.AF_INET, socket.AF_INET6):
                tries = [self.tries[(kind, family)].fd for kind in KINDS]
                buckets = self.buckets4 if family == socket.AF_INET else self.buckets6
                for stream in (True, False):
                    code = _program(family, stream, tries, self.counters.fd, self.rate.fd, buckets.fd)
                    self._programs[(family, stream)] = bpf.load_socket_filter(code)
        except BaseException:
            self.close()
            raise
        self.per_ip_rate = 0.0
        #: rule id -> counter slot, and back
        self.slots: Dict[str, int] = {}
        self.rules_of_slot: Dict[int, str] = {}

    def _map(self, name: str, *args: int) -> bpf.Map:
        if self.directory is None:
            made = bpf.Map(*args)
        else:
            made = bpf.Map.shared(os.path.join(self.directory, name), *args)
        self._maps.append(made)
        return made

    def _read(self, kind: str, family: int, trie: bpf.Map) -> None:
        """
        Take what another worker put in C{trie} as what it holds, so a
        change of rules updates and deletes from there.
        """
        for key in trie.keys():
            value = trie.lookup(key)
            if value is not None:
                (length,) = struct.unpack_from("I", key)
                self.entries[(kind, family, length, key[4:])] = struct.unpack("II", value)

    def _slot(self, rule_id: str) -> int:
        """
        The counter slot of a block rule (0 when they are all taken): the
        one any worker gave it, else the first free one from a place its id
        picks (so workers giving it one at once pick the same).
        """
        digest = hashlib.sha256(rule_id.encode("utf-8")).digest()[:16]
        found = self.slot_of_rule.lookup(digest)
        if found is not None:
            return int(struct.unpack("I", found)[0])
        start = int.from_bytes(digest[:4], "little") % (RATE_SLOT - 1)
        for step in range(RATE_SLOT - 1):
            slot = 1 + (start + step) % (RATE_SLOT - 1)
            key = struct.pack("I", slot)
            try:
                self.rule_of_slot.update(key, digest, bpf.NOEXIST)
            except OSError as e:
                if e.errno != 17 or self.rule_of_slot.lookup(key) != digest:
                    continue
            try:
                self.slot_of_rule.update(digest, key, bpf.NOEXIST)
            except OSError:
                found = self.slot_of_rule.lookup(digest)
                if found is not None:
                    return int(struct.unpack("I", found)[0])
            return slot
        return 0

    def program(self, family: int, stream: bool) -> int:
        return self._programs[(family, stream)]

    def sync(self, rules: Sequence[Any], expand: Optional[Callable[[str, str], Sequence[Any]]] = None) -> None:
        """
        Make the tries hold C{rules}' verdicts: changed prefixes updated,
        gone ones deleted, in place.
        """
        for rule in rules:
            if rule.mode == "block" and rule.id not in self.slots:
                slot = self._slot(rule.id)
                if slot:
                    self.slots[rule.id] = slot
                    self.rules_of_slot[slot] = rule.id
        wanted = compile_rules(rules, self.slots, expand)
        for key in [key for key in self.entries if key not in wanted]:
            self._trie(key).delete(_key(key))
            del self.entries[key]
        for key, value in wanted.items():
            if self.entries.get(key) != value:
                self._trie(key).update(_key(key), struct.pack("II", *value))
                self.entries[key] = value

    def set_rate(self, rate: float) -> None:
        """
        Follow C{rate} new connections a second per address (0: none), as
        the userspace limit does: a burst of C{max(1, rate)}, then the rate.
        """
        if rate == self.per_ip_rate:
            return
        if rate > 0:
            interval = int(1e9 / rate)
            tolerance = int((max(1.0, rate) - 1.0) * interval)
        else:
            interval = tolerance = 0
        self.rate.update(struct.pack("I", 0), struct.pack("QQ", interval, tolerance))
        self.per_ip_rate = rate

    def _trie(self, key: Entry) -> bpf.Map:
        return self.tries[(key[0], key[1])]

    def dropped(self) -> Dict[str, Tuple[int, int]]:
        """
        Packets and bytes dropped so far, by rule id ("" for drops past the
        counted rules).
        """
        result: Dict[str, Tuple[int, int]] = {}
        for slot in [0, *self.rules_of_slot, RATE_SLOT]:
            value = self.counters.lookup(struct.pack("I", slot))
            if value is None:
                continue
            packets, size = struct.unpack("QQ", value)
            if packets:
                rule = "per_ip_rate" if slot == RATE_SLOT else self.rules_of_slot.get(slot, "")
                old = result.get(rule, (0, 0))
                result[rule] = (old[0] + packets, old[1] + size)
        return result

    def close(self) -> None:
        for fd in self._programs.values():
            os.close(fd)
        self._programs = {}
        for made in self._maps:
            made.close()
        self._maps = []


def _key(entry: Entry) -> bytes:
    return struct.pack("I", entry[2]) + entry[3]


class KernelShield:
    """
    The kernel filters of one process: whether it has them (and why not),
    a scope per app (and the global one), and the sockets they guard.

    @ivar active: filters are loaded and attached to every edge socket.
    @ivar reason: why not, when not.
    """

    log = Logger()

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.active = False
        self.reason = ""
        self.scopes: Dict[Optional[str], Scope] = {}
        self._rules: Sequence[Any] = ()
        #: the GeoIP databases ASN and country rules expand through
        self._geo: Tuple[Optional[str], Optional[str]] = (None, None)
        self._networks: Dict[Tuple[str, str], List[Any]] = {}
        #: where the scopes' maps are pinned, shared by the workers of one
        #: supervisor (None: this process's own maps)
        self.directory: Optional[str] = None
        if mode == "off":
            self.reason = "kernel_filter: off"
            return
        if mode == "auto" and os.environ.get("SPECTRUM_KERNEL_FILTER", "").lower() == "off":
            # The operator's override, without editing the config.
            self.reason = "SPECTRUM_KERNEL_FILTER=off in the environment"
            return
        try:
            probe()
        except OSError as e:
            self.reason = _why(e)
            return
        self.active = True

    def share(self, directory: str) -> None:
        """
        Share the maps (rules, rates, counters) with the other processes
        that share C{directory} (the workers of one supervisor: see
        L{pin_directory}), from the first scope on; where it cannot be made
        (no bpf file system), keep this process's own, and say so.
        """
        if not self.active or self.scopes:
            return
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            self.log.warn(
                "kernel filter: cannot pin maps in {directory} ({error}); each worker keeps its own",
                directory=directory,
                error=e.strerror or e,
            )
            return
        self.directory = directory

    def describe(self) -> str:
        """
        The one line said at start.
        """
        if self.active:
            return "kernel filter: on (eBPF socket filters drop blocked sources' SYNs and datagrams)"
        return f"kernel filter: off ({self.reason}); refused sources are shed after accept"

    def scope_for(self, apps: Sequence[Any]) -> Optional[Scope]:
        """
        The scope of a socket serving C{apps}, made (and filled) on first
        use; None when no filter applies.
        """
        if not self.active or not apps:
            return None
        if len(apps) == 1:
            if not apps[0].ip_firewall:
                return None
            name: Optional[str] = apps[0].name
        else:
            name = None
        scope = self.scopes.get(name)
        if scope is None:
            where = None
            if self.directory is not None:
                label = "global" if name is None else "app-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
                where = os.path.join(self.directory, label)
            try:
                scope = Scope(name, where)
            except OSError as e:
                if where is None:
                    raise
                # Not a bpf file system after all (or not ours to write):
                # this process's own maps, from now on.
                self.log.warn(
                    "kernel filter: cannot pin maps in {directory} ({error}); each worker keeps its own",
                    directory=self.directory,
                    error=e.strerror or e,
                )
                self.directory = None
                try:
                    os.rmdir(where)
                except OSError:
                    pass
                scope = Scope(name)
            self.scopes[name] = scope
            scope.sync(self._rules_of(name), self._expand)
        if name is not None:
            limits = apps[0].limits
            scope.set_rate(limits.per_ip_rate if limits.per_ip_rate_scope == "node" else 0.0)
        return scope

    def attach(self, sock: socket.socket, stream: bool, apps: Sequence[Any]) -> None:
        """
        Attach to C{sock} the filter of the scope of C{apps} (replacing any
        earlier one), or detach when none applies.
        """
        if not self.active:
            return
        scope = self.scope_for(apps)
        if scope is None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, bpf.SO_DETACH_FILTER, 0)
            except OSError:
                pass
            return
        program = scope.program(sock.family, stream)
        sock.setsockopt(socket.SOL_SOCKET, bpf.SO_ATTACH_BPF, program)

    def sync(self, rules: Sequence[Any]) -> None:
        """
        Take the rules in force now (all of them, every scope): the maps
        follow in place.
        """
        self._rules = tuple(rules)
        for name, scope in self.scopes.items():
            try:
                scope.sync(self._rules_of(name), self._expand)
            except OSError as e:
                self.log.error("kernel filter: could not update the rules of {scope}: {error}", scope=name, error=e)

    def set_geo(self, country_db: Optional[str], asn_db: Optional[str]) -> None:
        """
        Expand ASN and country rules through these MaxMind DB files from now
        on (the networks are read once per change of files).
        """
        if (country_db, asn_db) == self._geo:
            return
        self._geo = (country_db, asn_db)
        self._networks = {}
        if self.active and any(rule.target in GEO_TARGETS for rule in self._rules):
            self.sync(self._rules)

    def _expand(self, target: str, value: str) -> Sequence[Any]:
        """
        The networks of an ASN or country rule's value in the databases.
        """
        if not self._networks:
            self._networks = _read_networks(*self._geo)
            if not self._networks:
                self._networks = {("", ""): []}
        if target == "asn":
            key = ("asn", str(int(str(value).upper().lstrip("AS"))))
        else:
            key = ("country", str(value).upper())
        return self._networks.get(key, [])

    def _rules_of(self, name: Optional[str]) -> List[Any]:
        return [rule for rule in self._rules if rule.app is None or (name is not None and rule.app == name)]

    def dropped(self) -> Dict[Tuple[str, str], Tuple[int, int]]:
        """
        Packets and bytes dropped in the kernel, by (app, rule id); app ""
        is the global scope of shared ports.
        """
        result: Dict[Tuple[str, str], Tuple[int, int]] = {}
        for name, scope in self.scopes.items():
            for rule, counts in scope.dropped().items():
                result[(name or "", rule)] = counts
        return result

    def status(self) -> Dict[str, Any]:
        """
        What the admin API shows: the mode, whether the filters are loaded
        (and why not), and the drops per app and reason.
        """
        dropped = [
            {"app": app, "reason": reason_of(rule), "packets": packets, "bytes": size}
            for (app, rule), (packets, size) in sorted(self.dropped().items())
        ]
        return {"mode": self.mode, "active": self.active, "reason": self.reason, "dropped": dropped}

    def close(self) -> None:
        for scope in self.scopes.values():
            scope.close()
        self.scopes = {}


#: the bpf file system, where workers' shared maps are pinned
PIN_ROOT = "/sys/fs/bpf"
PIN_PREFIX = "spectrum-"


def pin_directory(supervisor: int, root: str = PIN_ROOT) -> str:
    """
    Where the workers of the supervisor with pid C{supervisor} pin their
    shared maps.
    """
    return os.path.join(root, f"{PIN_PREFIX}{supervisor}")


def remove_pins(directory: str) -> bool:
    """
    Unpin everything under C{directory} and remove it (the maps go when the
    last process holding them lets go); whether there was anything.
    """
    if not os.path.isdir(directory):
        return False
    for where, _folders, files in os.walk(directory, topdown=False):
        for name in files:
            try:
                os.unlink(os.path.join(where, name))
            except OSError:
                pass
        try:
            os.rmdir(where)
        except OSError:
            pass
    return True


def remove_stale_pins(root: str = PIN_ROOT) -> List[int]:
    """
    Remove the pins of supervisors that are gone (killed before they could
    remove their own) and of this process's pid (a former holder of it);
    the pids whose pins were removed.
    """
    try:
        names = os.listdir(root)
    except OSError:
        return []
    removed = []
    for name in names:
        if not name.startswith(PIN_PREFIX) or not name[len(PIN_PREFIX) :].isdigit():
            continue
        pid = int(name[len(PIN_PREFIX) :])
        if pid != os.getpid() and _alive(pid):
            continue
        if remove_pins(os.path.join(root, name)):
            removed.append(pid)
    return removed


def _alive(pid: int) -> bool:
    """
    Whether C{pid} is a running spectrum (not another program given the
    number since).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"spectrum" in f.read()
    except OSError:
        return False


def reason_of(rule: str) -> str:
    """
    The reason a drop counted against C{rule} (a rule id, "per_ip_rate", or
    "" for the rules past the counted ones) is shown with.
    """
    if rule == "per_ip_rate":
        return rule
    return f"rule {rule}" if rule else "rule"


def _read_networks(country_db: Optional[str], asn_db: Optional[str]) -> Dict[Tuple[str, str], List[Any]]:
    """
    Every network of the databases, by ("country", ISO code) and ("asn",
    number), read the way L{spectrum.geo.GeoIP} reads one address.
    """
    from spectrum.geo import open_database

    networks: Dict[Tuple[str, str], List[Any]] = {}
    for target, path in (("country", country_db), ("asn", asn_db)):
        if not path:
            continue
        reader = open_database(path)
        try:
            for network, found in reader:
                if not isinstance(found, dict):
                    continue
                if target == "asn":
                    number = found.get("autonomous_system_number")
                    if isinstance(number, int):
                        networks.setdefault(("asn", str(number)), []).append(network)
                    continue
                for field in ("country", "registered_country"):
                    place = found.get(field)
                    if isinstance(place, dict) and isinstance(place.get("iso_code"), str):
                        networks.setdefault(("country", place["iso_code"].upper()), []).append(network)
                        break
        finally:
            reader.close()
    return networks


def probe() -> None:
    """
    Make and load what a scope needs once, then let it go.

    @raise OSError: not permitted, no bpf(2), or the verifier refused.
    """
    if _refused_for_tests:
        raise OSError(1, "loading refused (forced)")
    Scope(None).close()


#: tests force the fallback path with this
_refused_for_tests = False


def _why(error: OSError) -> str:
    if isinstance(error, bpf.VerifierError):
        last = error.log.strip().splitlines()[-1:] if error.log else []
        return f"the kernel's verifier refused the program: {last[0] if last else error}"
    if error.errno in (1, 13):
        return "not permitted: needs root or CAP_BPF and CAP_NET_ADMIN"
    if error.errno == 38:
        return "this kernel has no bpf(2)"
    return f"bpf(2) failed: {error.strerror or error}"
