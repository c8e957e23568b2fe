"""Files written whole or not at all.

`atomic_write(path)` gives a binary file object for a temporary file beside
`path` and, when the block ends without an exception, renames it over `path`
(`os.replace`: a reader sees the old file or the new one, never part of one).
When the block raises, the temporary file is removed and `path` is left as it
was.  A file object (not a name) is what numpy and matplotlib write to, so they
add no suffix of their own.  A file replaced keeps its permission bits (a
private 0600 checkpoint stays private); a new one gets the usual ones (0666
less the umask).  A symbolic link at `path` is replaced by the new file; the
file it pointed to is left as it was.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def file_to_write(path: str | os.PathLike, example: str = "out") -> Path:
    """`path` as the Path of a file to write, or an error when it names a directory.

    `Path` drops a trailing separator and a last `.` component ("out/" and "out/." become
    "out"): without this check a file named `out` would be written, or replace one.  As
    `open(path, "w")` does, a path ending in a separator is an IsADirectoryError even when
    no such directory exists yet; `example` is the file name the message suggests in it."""
    raw = os.fsdecode(os.fspath(path))
    if raw == "":
        raise ValueError("cannot save to '': it is not a file name")
    p = Path(raw)
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if p.is_dir() or raw.endswith(seps) or os.path.basename(raw) in (".", ".."):
        what = "is a directory" if p.is_dir() else "names a directory"
        raise IsADirectoryError(f"cannot save to {raw!r}: it {what}; give a file name such as "
                                f"{str(p / example)!r}")
    return p


@contextmanager
def atomic_write(path: str | os.PathLike, durable: bool = False) -> Iterator[BinaryIO]:
    """Write `path` through a temporary file renamed over it at the end (see the module's text).

    `durable=True` also flushes the file to disk before the rename and syncs the folder after
    it (where the platform allows), so the new file survives a crash once the block has ended."""
    path = Path(path)
    # at most 40 characters of the name: the temporary's name must fit where the target's does
    tmp = path.with_name(f".{path.name[:40]}.{secrets.token_hex(6)}.tmp")
    try:
        f = open(tmp, "xb")
    except OSError as e:       # name the file being saved, not the temporary one nobody asked for
        raise type(e)(e.errno, f"{e.strerror} (cannot create a temporary file in {str(path.parent)!r} to write "
                               "it)", str(path)) from None
    try:
        with f:
            _keep_mode(path, f)
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


def _keep_mode(path: Path, f) -> None:
    """Give the temporary file `f` the permission bits of the regular file it will replace, if any."""
    try:
        st = os.stat(path)
    except OSError:
        return
    if stat.S_ISREG(st.st_mode):
        try:       # best effort: some file systems have no permission bits to set
            os.chmod(f.fileno() if os.chmod in os.supports_fd else f.name, st.st_mode & 0o777)   # no setuid
        except OSError:
            pass


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
