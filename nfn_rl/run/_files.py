"""Replacing a run's files so that a crash, a kill or a power loss leaves the old file or the new
one, never half of one and never neither."""

import os
from collections.abc import Callable
from pathlib import Path


def replace_file(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a file beside `path`, which is then made durable and renamed over it.

    The order is what survives a power loss: the new contents reach the disk (fsync) before the
    rename, so the rename cannot point `path` at a file still empty; and the directory is synced
    after it, so the rename itself is on disk when this returns.
    """
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames are not ordered this way
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
