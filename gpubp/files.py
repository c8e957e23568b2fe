"""Files written whole or not at all.

`atomic_write(path)` gives a binary file object for a temporary file beside
`path` and, when the block ends without an exception, renames it over `path`
(`os.replace`: a reader sees the old file or the new one, never part of one).
When the block raises, the temporary file is removed and `path` is left as it
was.  A file object (not a name) is what numpy and matplotlib write to, so they
add no suffix of their own.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_write(path: str | os.PathLike, durable: bool = False) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file renamed over it at the end (see the module's text).

    `durable=True` also flushes the file to disk before the rename and syncs the folder after
    it (where the platform allows), so the new file survives a crash once the block has ended."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable where the platform allows (POSIX); best effort elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
