"""
Files spectrum reads and writes, safely for a daemon:

  - L{read_regular} reads a regular file and refuses anything else (a FIFO,
    a device, a socket) without waiting on it: opening a FIFO for reading
    waits for a writer, and a device may never end, so a reload would
    freeze the reactor and every relayed connection with it.
  - L{write_atomically} writes a file whole through a temporary file that no
    one can predict or plant (created with C{O_EXCL} in the file's own
    directory, mode 0600 before any byte is written), then renames it over
    the file: a reader sees the old content or the new, and a local user
    who can write the directory gets neither a symlink followed nor a file
    they already hold open.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """
    A path that names something other than a regular file; C{strerror}
    says what (C{not a regular file (a FIFO)}).
    """


def _refuse(path: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    kind = next((name for test, name in _KINDS if test(mode)), "not a file")
    raise NotRegularFile(errno.EINVAL, f"not a regular file ({kind})", path)


def check_regular(path: str) -> None:
    """
    Refuse C{path} unless it is a regular file (after symlinks), without
    opening it: for readers that open files themselves.

    @raise OSError: it does not exist, cannot be looked at, or is not one.
    """
    _refuse(path, os.stat(path).st_mode)


def read_regular(path: str) -> bytes:
    """
    The bytes of the regular file at C{path}.

    @raise OSError: it cannot be read, or is not a regular file
        (L{NotRegularFile}); C{strerror} says which.
    """
    # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a
    # writer; it changes nothing for a regular file.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _refuse(path, os.fstat(fd).st_mode)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        return f.read()


def write_atomically(path: str, text: str) -> None:
    """
    Replace C{path} with C{text} (UTF-8), mode 0600, creating its directory
    if needed.

    @raise OSError: it cannot be written; nothing is left behind.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
