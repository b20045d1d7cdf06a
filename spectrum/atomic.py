"""
Writing a file whole: the bytes go to a temporary file that no one can
predict or plant (created with C{O_EXCL} in the file's own directory, mode
0600 before any byte is written), then renamed over the file, so a reader
sees the old content or the new and a local user who can write the
directory gets neither a symlink followed nor a file they already hold open.
"""

from __future__ import annotations

import os
import tempfile


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
