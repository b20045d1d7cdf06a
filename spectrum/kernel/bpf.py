"""
The bpf(2) system call through ctypes: maps, programs, and the eBPF
instructions the edge filters are written in (no compiler, no library).

Only what the filters use is here: hash-free LPM tries and arrays, socket
filter programs, map updates in place. Every failure is an L{OSError} with
the kernel's errno; a program the verifier refuses carries its log.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct
from typing import Any, Dict, List, Optional, Sequence

#: bpf(2)'s number per machine.
_SYSCALL: Dict[str, int] = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361, "s390x": 351}

# Commands
MAP_CREATE = 0
MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
PROG_LOAD = 5
OBJ_PIN = 6
OBJ_GET = 7

#: MAP_UPDATE_ELEM flags: only if the key is new
NOEXIST = 1

# Map types
MAP_TYPE_HASH = 1
MAP_TYPE_ARRAY = 2
MAP_TYPE_LRU_HASH = 9
MAP_TYPE_LPM_TRIE = 11
#: map_flags for LPM tries (required)
F_NO_PREALLOC = 1

PROG_TYPE_SOCKET_FILTER = 1

#: setsockopt(SOL_SOCKET, ...) to attach a program / detach any filter
SO_ATTACH_BPF = 50
SO_DETACH_FILTER = 27

# Helpers
FUNC_MAP_LOOKUP_ELEM = 1
FUNC_MAP_UPDATE_ELEM = 2
FUNC_KTIME_GET_NS = 5

# Instruction classes and fields
LD, LDX, ST, STX, ALU, JMP, RET_, ALU64 = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
IMM, ABS, IND, MEM, ATOMIC = 0x00, 0x20, 0x40, 0x60, 0xC0
K, X = 0x00, 0x08
ADD, SUB, MUL, DIV, OR, AND, LSH, RSH, NEG, MOD, XOR, MOV, ARSH, END = (
    0x00,
    0x10,
    0x20,
    0x30,
    0x40,
    0x50,
    0x60,
    0x70,
    0x80,
    0x90,
    0xA0,
    0xB0,
    0xC0,
    0xD0,
)
JA, JEQ, JGT, JGE, JSET, JNE, CALL, EXIT = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x80, 0x90
TO_BE = 0x08
PSEUDO_MAP_FD = 1
#: LD_ABS/LD_IND offsets relative to the network header
NET_OFF = -0x100000

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)


class Insn:
    """
    One eBPF instruction (or the two halves of a 64-bit immediate load),
    with a symbolic jump target resolved by L{assemble}.
    """

    __slots__ = ("code", "dst", "src", "off", "imm", "target", "wide")

    def __init__(
        self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0, target: Optional[str] = None
    ) -> None:
        self.code = code
        self.dst = dst
        self.src = src
        self.off = off
        self.imm = imm
        self.target = target
        self.wide = code == (LD | IMM | DW)

    def encode(self) -> bytes:
        first = struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)
        if self.wide:
            return first + struct.pack("<BBhi", 0, 0, 0, 0)
        return first

    @property
    def slots(self) -> int:
        return 2 if self.wide else 1


class Label:
    """
    A jump target in an instruction list.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


# The instructions the filters use, by name.


def mov(dst: int, src: int) -> Insn:
    return Insn(ALU64 | MOV | X, dst, src)


def mov_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | MOV | K, dst, imm=imm)


def add_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | ADD | K, dst, imm=imm)


def and_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | AND | K, dst, imm=imm)


def lsh_imm(dst: int, imm: int) -> Insn:
    return Insn(ALU64 | LSH | K, dst, imm=imm)


def to_be32(dst: int) -> Insn:
    return Insn(ALU | END | TO_BE, dst, imm=32)


def ld_abs(size: int, offset: int) -> Insn:
    """r0 = the packet's bytes at C{offset} from the network header."""
    return Insn(LD | ABS | size, imm=NET_OFF + offset)


def ld_ind(size: int, src: int, offset: int) -> Insn:
    """r0 = the packet's bytes at C{src} + C{offset} from the network header."""
    return Insn(LD | IND | size, src=src, imm=NET_OFF + offset)


def ldx(size: int, dst: int, src: int, off: int) -> Insn:
    return Insn(LDX | MEM | size, dst, src, off)


def stx(size: int, dst: int, src: int, off: int) -> Insn:
    return Insn(STX | MEM | size, dst, src, off)


def st_imm(size: int, dst: int, off: int, imm: int) -> Insn:
    return Insn(ST | MEM | size, dst, off=off, imm=imm)


def atomic_add64(dst: int, src: int, off: int) -> Insn:
    """*(u64 *)(dst + off) += src, atomically."""
    return Insn(STX | ATOMIC | DW, dst, src, off, ADD)


def ld_map(dst: int, fd: int) -> Insn:
    return Insn(LD | IMM | DW, dst, PSEUDO_MAP_FD, imm=fd)


def call(helper: int) -> Insn:
    return Insn(JMP | CALL, imm=helper)


def exit_() -> Insn:
    return Insn(JMP | EXIT)


def jeq_imm(dst: int, imm: int, target: str) -> Insn:
    return Insn(JMP | JEQ | K, dst, imm=imm, target=target)


def jne_imm(dst: int, imm: int, target: str) -> Insn:
    return Insn(JMP | JNE | K, dst, imm=imm, target=target)


def jgt(dst: int, src: int, target: str) -> Insn:
    return Insn(JMP | JGT | X, dst, src, target=target)


def jge(dst: int, src: int, target: str) -> Insn:
    return Insn(JMP | JGE | X, dst, src, target=target)


def add(dst: int, src: int) -> Insn:
    return Insn(ALU64 | ADD | X, dst, src)


def jset_imm(dst: int, imm: int, target: str) -> Insn:
    return Insn(JMP | JSET | K, dst, imm=imm, target=target)


def ja(target: str) -> Insn:
    return Insn(JMP | JA, target=target)


def assemble(program: Sequence[object]) -> bytes:
    """
    The bytes of C{program} (instructions and labels), with each jump's
    target label turned into its offset.
    """
    where: Dict[str, int] = {}
    position = 0
    for item in program:
        if isinstance(item, Label):
            where[item.name] = position
        else:
            assert isinstance(item, Insn)
            position += item.slots
    out: List[bytes] = []
    position = 0
    for item in program:
        if isinstance(item, Label):
            continue
        assert isinstance(item, Insn)
        position += item.slots
        if item.target is not None:
            item.off = where[item.target] - position
        out.append(item.encode())
    return b"".join(out)


# The system call


_libc: Optional[ctypes.CDLL] = None


def _syscall_number() -> int:
    number = _SYSCALL.get(platform.machine())
    if number is None:
        raise OSError(95, f"bpf(2) is not known on {platform.machine()}")
    return number


def bpf(command: int, attr: bytes) -> int:
    """
    Call bpf(2) with C{attr} (zero-padded); its result (a descriptor for
    the commands that make one).
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    size = max(len(attr), 128)
    buffer = ctypes.create_string_buffer(attr, size)
    result = _libc.syscall(_syscall_number(), command, buffer, size)
    if result < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return int(result)


class Map:
    """
    A bpf map, updated in place; closed with L{close}.
    """

    def __init__(
        self, map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0, fd: int = -1
    ) -> None:
        self.key_size = key_size
        self.value_size = value_size
        if fd < 0:
            fd = bpf(MAP_CREATE, struct.pack("IIIII", map_type, key_size, value_size, max_entries, flags))
        self.fd = fd

    @classmethod
    def shared(cls, path: str, map_type: int, key_size: int, value_size: int, max_entries: int, flags: int = 0) -> Map:
        """
        The map pinned at C{path} (in a bpf file system), made and pinned
        there first if no process did; C{fresh} says which.
        """
        for _ in range(3):
            try:
                made = cls(map_type, key_size, value_size, max_entries, flags, fd=_path_call(OBJ_GET, path, 0))
                made.fresh = False
                return made
            except OSError as e:
                if e.errno != 2:  # ENOENT: nobody made it yet
                    raise
            made = cls(map_type, key_size, value_size, max_entries, flags)
            try:
                _path_call(OBJ_PIN, path, made.fd)
            except OSError as e:
                made.close()
                if e.errno != 17:  # EEXIST: another process pinned one first
                    raise
                continue
            made.fresh = True
            return made
        raise OSError(17, f"{path} keeps changing")

    #: made by this process (not found pinned by another)
    fresh = True

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(value, self.value_size)
        bpf(MAP_UPDATE_ELEM, struct.pack("I4xQQQ", self.fd, ctypes.addressof(k), ctypes.addressof(v), flags))

    def keys(self) -> List[bytes]:
        """
        Every key of the map now.
        """
        found: List[bytes] = []
        key = ctypes.create_string_buffer(self.key_size)
        following = ctypes.create_string_buffer(self.key_size)
        current = 0
        while True:
            try:
                bpf(MAP_GET_NEXT_KEY, struct.pack("I4xQQ", self.fd, current, ctypes.addressof(following)))
            except OSError as e:
                if e.errno == 2:  # ENOENT: no more
                    return found
                raise
            found.append(following.raw)
            ctypes.memmove(key, following, self.key_size)
            current = ctypes.addressof(key)

    def delete(self, key: bytes) -> None:
        k = ctypes.create_string_buffer(key, self.key_size)
        bpf(MAP_DELETE_ELEM, struct.pack("I4xQ", self.fd, ctypes.addressof(k)))

    def lookup(self, key: bytes) -> Optional[bytes]:
        k = ctypes.create_string_buffer(key, self.key_size)
        v = ctypes.create_string_buffer(self.value_size)
        try:
            bpf(MAP_LOOKUP_ELEM, struct.pack("I4xQQ", self.fd, ctypes.addressof(k), ctypes.addressof(v)))
        except OSError as e:
            if e.errno == 2:  # ENOENT
                return None
            raise
        return v.raw

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _path_call(command: int, path: str, fd: int) -> int:
    """
    OBJ_PIN (C{fd} at C{path}) or OBJ_GET (the object at C{path}).
    """
    name = ctypes.create_string_buffer(path.encode())
    return bpf(command, struct.pack("QII", ctypes.addressof(name), fd, 0))


class VerifierError(OSError):
    """
    The kernel refused a program; C{log} is the verifier's account.
    """

    def __init__(self, errno: int, message: str, log: str) -> None:
        super().__init__(errno, message)
        self.log = log


def load_socket_filter(code: bytes) -> int:
    """
    Load C{code} as a socket filter program; its descriptor.

    @raise VerifierError: the verifier refused it (with its log).
    @raise OSError: no permission, no bpf(2).
    """
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")

    def load(log_level: int, log: Any) -> int:
        attr = struct.pack(
            "IIQQIIQ",
            PROG_TYPE_SOCKET_FILTER,
            len(code) // 8,
            ctypes.addressof(insns),
            ctypes.addressof(license),
            log_level,
            len(log) if log is not None else 0,
            ctypes.addressof(log) if log is not None else 0,
        )
        return bpf(PROG_LOAD, attr)

    try:
        return load(0, None)
    except OSError as e:
        if e.errno not in (13, 22):  # EACCES, EINVAL: ask the verifier why
            raise
    log = ctypes.create_string_buffer(65536)
    try:
        return load(1, log)
    except OSError as again:
        text = log.value.decode("utf-8", "replace").strip()
        raise VerifierError(again.errno or 22, again.strerror or "refused", text) from None
