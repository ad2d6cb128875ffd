"""Durable file writes, for the controller's CA store and the hosts' certificate tool alike.

A reader (Envoy, node_exporter, Ansible, a person) sees the old file or the new one, never half
of one; a new file never exists with looser permissions than its final ones, not even for a
moment; and both the data and the rename survive a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_or_none(path: str) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _fill(fd: int, data: bytes, mode: int, gid: int) -> None:
    """Give the open file its group and mode, then its bytes, durably; closes it."""
    with os.fdopen(fd, "wb") as handle:
        if gid != -1:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)
        handle.write(data)
        handle.flush()
        os.fsync(fd)


def write_new_file(path: str, data: bytes, mode: int, gid: int = -1) -> None:
    """Create `path` (it must not exist) with its final group and mode before any byte is written."""
    _fill(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), data, mode, gid)


def replace_file(path: str, data: bytes, mode: int, verify=None, gid: int = -1) -> None:
    """Replace `path` with `data` in one rename.

    Not AnsibleModule.atomic_move: it gives a new file the umask's mode after the rename, which
    would leave a fresh private key readable until a later chmod. The temporary name starts with a
    dot and does not end in .prom, so node_exporter's textfile collector skips it. `verify`, if
    given, is called with the temporary file's path before the rename; if it raises, `path` stays
    as it was. `gid`, if given, is the file's group from the start.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=directory)
    try:
        _fill(fd, data, mode, gid)
        if verify is not None:
            verify(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)
