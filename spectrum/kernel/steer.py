"""
Any port on one socket: an eBPF C{sk_lookup} program, attached to the
network namespace, steers a TCP connection for any port of an app's edge
range to the one listening socket that serves the range, so a range of
10,000 ports costs one socket, not 10,000.

The program looks the connection's (local IPv4 address, local port) up in
a hash map (then (0.0.0.0, port), for an app bound to every address); a hit
names a slot of a SOCKMAP holding the listening socket, and the connection
is assigned to it. Anything else is left to the kernel's usual lookup. The
accepted socket's own address (getsockname) is the port the client dialled,
so a range keeps its offset mapping to the origin ports.

The ports of a range change in place (reload, API) by updating the hash
map; the link ends with the process, however it ends.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from typing import Dict, Iterable, List, Optional

from spectrum.kernel import bpf
from spectrum.kernel.bpf import (
    R0,
    R1,
    R2,
    R3,
    R6,
    R7,
    R8,
    R9,
    R10,
    Label,
    W,
    add_imm,
    assemble,
    call,
    exit_,
    jeq_imm,
    jne_imm,
    ld_map,
    ldx,
    mov,
    mov_imm,
    st_imm,
    stx,
)

MAP_TYPE_SOCKMAP = 15
PROG_TYPE_SK_LOOKUP = 30
ATTACH_SK_LOOKUP = 36
LINK_CREATE = 28
FUNC_SK_ASSIGN = 124
FUNC_SK_RELEASE = 86
SK_PASS = 1

#: listening sockets one process may steer to
SLOTS = 256
#: (address, port) pairs steered at most
MAX_PORTS = 1 << 20

# struct bpf_sk_lookup
_FAMILY = 8
_PROTOCOL = 12
_LOCAL_IP4 = 40
_LOCAL_PORT = 60


def _program(ports: int, sockets: int) -> bytes:
    code: List[object] = [
        mov(R6, R1),
        ldx(W, R0, R6, _PROTOCOL),
        jne_imm(R0, socket.IPPROTO_TCP, "pass"),
        ldx(W, R0, R6, _FAMILY),
        jne_imm(R0, socket.AF_INET, "pass"),
        ldx(W, R7, R6, _LOCAL_IP4),
        ldx(W, R8, R6, _LOCAL_PORT),
        stx(W, R10, R7, -8),
        stx(W, R10, R8, -4),
        ld_map(R1, ports),
        mov(R2, R10),
        add_imm(R2, -8),
        call(bpf.FUNC_MAP_LOOKUP_ELEM),
        jne_imm(R0, 0, "found"),
        # Not for this address: an app bound to every address?
        st_imm(W, R10, -8, 0),
        ld_map(R1, ports),
        mov(R2, R10),
        add_imm(R2, -8),
        call(bpf.FUNC_MAP_LOOKUP_ELEM),
        jeq_imm(R0, 0, "pass"),
        Label("found"),
        ldx(W, R9, R0, 0),
        stx(W, R10, R9, -12),
        ld_map(R1, sockets),
        mov(R2, R10),
        add_imm(R2, -12),
        call(bpf.FUNC_MAP_LOOKUP_ELEM),
        jeq_imm(R0, 0, "pass"),
        mov(R7, R0),
        mov(R1, R6),
        mov(R2, R7),
        mov_imm(R3, 0),
        call(FUNC_SK_ASSIGN),
        mov(R1, R7),
        call(FUNC_SK_RELEASE),
        Label("pass"),
        mov_imm(R0, SK_PASS),
        exit_(),
    ]
    return assemble(code)


def _load(code: bytes) -> int:
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(65536)
    attr = bytearray(128)
    struct.pack_into(
        "IIQQIIQ",
        attr,
        0,
        PROG_TYPE_SK_LOOKUP,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license),
        1,
        len(log),
        ctypes.addressof(log),
    )
    struct.pack_into("I", attr, 68, ATTACH_SK_LOOKUP)  # expected_attach_type
    try:
        return bpf.bpf(bpf.PROG_LOAD, bytes(attr))
    except OSError as e:
        raise bpf.VerifierError(e.errno or 22, e.strerror or "refused", log.value.decode("utf-8", "replace")) from None


class Steering:
    """
    The namespace's sk_lookup program of this process, its maps, and the
    ranges steered to each listening socket.
    """

    def __init__(self) -> None:
        self._fds: List[int] = []
        self.ports = bpf.Map(bpf.MAP_TYPE_HASH, 8, 4, MAX_PORTS)
        try:
            self.sockets = bpf.Map(MAP_TYPE_SOCKMAP, 4, 8, SLOTS)
            program = _load(_program(self.ports.fd, self.sockets.fd))
            self._fds.append(program)
            namespace = os.open("/proc/self/ns/net", os.O_RDONLY)
            try:
                self._fds.append(bpf.bpf(LINK_CREATE, struct.pack("IIII", program, namespace, ATTACH_SK_LOOKUP, 0)))
            finally:
                os.close(namespace)
        except BaseException:
            self.close()
            raise
        self._free = list(range(SLOTS))
        #: slot -> the (address, port) keys steered to it
        self._steered: Dict[int, List[bytes]] = {}

    def add(self, sock: socket.socket) -> int:
        """
        Put a listening socket in a slot; the slot.
        """
        slot = self._free.pop(0)
        self.sockets.update(struct.pack("I", slot), struct.pack("Q", sock.fileno()))
        self._steered[slot] = []
        return slot

    def set_ports(self, slot: int, ip: str, ports: Iterable[int]) -> None:
        """
        Steer connections for C{ip} (C{0.0.0.0}: any address) and each of
        C{ports} to the socket in C{slot}; ports it had and not now stop
        being steered.
        """
        address = socket.inet_aton(ip)
        wanted = [address + struct.pack("I", port) for port in ports]
        keep = set(wanted)
        for key in self._steered.get(slot, []):
            if key not in keep:
                self.ports.delete(key)
        value = struct.pack("I", slot)
        had = set(self._steered.get(slot, []))
        for key in wanted:
            if key not in had:
                self.ports.update(key, value)
        self._steered[slot] = wanted

    def remove(self, slot: int) -> None:
        """
        Stop steering to C{slot} and free it.
        """
        for key in self._steered.pop(slot, []):
            try:
                self.ports.delete(key)
            except OSError:
                pass
        try:
            self.sockets.delete(struct.pack("I", slot))
        except OSError:
            pass
        self._free.append(slot)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        for made in (getattr(self, "ports", None), getattr(self, "sockets", None)):
            if made is not None:
                made.close()


def probe_steering() -> Optional[Steering]:
    """
    A Steering, or None where the kernel or the permissions refuse it.
    """
    try:
        return Steering()
    except OSError:
        return None
