"""The checkpoint file format: named arrays and JSON metadata in one `.npz` archive.

This module knows the container only, not what a network puts in it
(`MLP.save` and `MLP.load` build on it).  A checkpoint is a numpy zip archive,
read with `allow_pickle=False`, so loading it never runs code.  It holds:
- `meta`: UTF-8 JSON (as a 1-D uint8 array) with the format name and version,
  the writer's fields, a SHA-256 of every other array (`sha256`) and of the
  metadata itself (`meta_sha256`).  It is strict JSON: no NaN or infinity
  (not even an overflowing literal such as `1e999`), no object with a key
  twice, no nesting deeper than `MAX_META_DEPTH`;
- any number of named 1-D or n-D arrays of plain numeric dtypes.

`write` replaces the file atomically: the archive is written to a temporary
file in the same folder, flushed and fsynced, then moved over the target with
`os.replace`; if anything fails, the previous file is left as it was and the
temporary file is removed.

`Checkpoint(path)` opens a file once (a save that replaces the path meanwhile
leaves the reader with the file it opened) and reads only what is small: the metadata
and each array's header (shape and dtype, from the `.npy` header inside the
zip), so a reader can check everything against its expectations before any
array data is read (a 2 KB file that claims terabytes is refused without
allocating).  `array(name, shape, dtype)` then reads one array, after
checking its header and the member's size against the archive, and verifies
its checksum.  Every problem is a `ValueError` that says what is wrong;
`field` helps readers name the metadata field at fault.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .files import atomic_write, file_to_write

FORMAT = "gpubp-checkpoint"
#: the version `write` writes; `READ_VERSIONS` are the versions `Checkpoint` reads
VERSION = 2
READ_VERSIONS = (1, 2)

#: largest metadata member read (bytes)
MAX_META_BYTES = 64 * 2 ** 20
#: deepest nesting of lists and objects in the metadata document (its own top-level object is 1)
MAX_META_DEPTH = 100
#: dtypes an array in a checkpoint may have
ARRAY_DTYPES = ("float32", "float64", "int32", "int64", "uint8")
#: deflate expands at most about 1032 times; a member claiming more is damaged or hostile
_MAX_DEFLATE_RATIO = 1100


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _containers(obj, limit: int = MAX_META_DEPTH):
    """Every dict, list and tuple in `obj` with its depth (`obj` itself is 1), without recursion; the
    contents of those deeper than `limit` are not visited, so a structure that contains itself ends."""
    stack = [(obj, 1)] if isinstance(obj, (dict, list, tuple)) else []
    while stack:
        o, d = stack.pop()
        yield o, d
        if d <= limit:   # only the containers: a list of 10**7 numbers is one step
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o)
                         if isinstance(v, (dict, list, tuple)))


def _depth(obj) -> int:
    """How deeply lists and dicts nest in `obj` (a scalar is 0, `{}` and `[]` are 1), counted up to
    `MAX_META_DEPTH + 1`."""
    return max((d for _, d in _containers(obj)), default=0)


def _strict_json(text: str):
    """`text` parsed as strict JSON: no NaN or infinity (not even an overflowing literal such as 1e999),
    no object with a key twice (parsers differ on which one wins), no nesting deeper than
    `MAX_META_DEPTH`.  Raises ValueError saying what is wrong."""
    def no_constant(c):
        raise ValueError(f"{c} is not JSON data")

    def finite(s):
        v = float(s)
        if not math.isfinite(v):
            raise ValueError(f"the number {s[:40]} is not finite in double precision")
        return v

    def unique_keys(pairs):
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen = set()
            dup = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise ValueError(f"an object has the key {dup[:60]!r} twice")
        return obj
    try:
        obj = json.loads(text, parse_constant=no_constant, parse_float=finite, object_pairs_hook=unique_keys)
    except RecursionError:
        raise ValueError(f"it nests lists or objects deeper than {MAX_META_DEPTH} levels") from None
    if _depth(obj) > MAX_META_DEPTH:
        raise ValueError(f"it nests lists or objects deeper than {MAX_META_DEPTH} levels")
    return obj


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint (a ValueError)."""


# ---------------------------------------------------------------- writing
def _write_archive(f, arrays: dict) -> None:
    """The archive itself: `np.savez` into the open binary file `f`."""
    np.savez(f, **arrays)


def file_path(path) -> str:
    """`path` (str, bytes or os.PathLike) as a str file name; anything else is refused with a TypeError
    naming `path` (an int would be read by `open` and `os.stat` as a file descriptor)."""
    if isinstance(path, (str, bytes, os.PathLike)):
        p = os.fspath(path)
        if isinstance(p, (str, bytes)):
            return os.fsdecode(p)
    raise TypeError(f"path must be a file name (str, bytes or os.PathLike), got {type(path).__name__}")


def write(path, arrays: dict, meta: dict) -> None:
    """Write `arrays` (name -> numpy array) and `meta` (JSON data) to `path`, atomically.

    `meta` must not use the keys `format`, `version`, `sha256` or
    `meta_sha256`, which are added here.  Raises TypeError for metadata that
    is not strict JSON data (NaN and infinity are not) or nests deeper than
    `MAX_META_DEPTH`, and the OSError of a failed write, after which the file
    at `path` is unchanged.
    """
    path = file_to_write(file_path(path), "net.npz")    # a directory is refused before anything is done
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    for k, v in arrays.items():
        if k == "meta" or not k or "/" in k:
            raise ValueError(f"an array cannot be named {k!r}")
        if v.dtype.name not in ARRAY_DTYPES:
            raise TypeError(f"array {k!r} has dtype {v.dtype}; a checkpoint holds {', '.join(ARRAY_DTYPES)}")
    reserved = {"format", "version", "sha256", "meta_sha256"} & set(meta)
    if reserved:
        raise ValueError(f"metadata keys {sorted(reserved)} are set by the format")
    full = {"format": FORMAT, "version": VERSION, **meta, "sha256": {k: _digest(v) for k, v in arrays.items()}}
    if _depth(full) > MAX_META_DEPTH:
        raise TypeError(f"checkpoint metadata must not nest lists or objects deeper than {MAX_META_DEPTH} levels")
    try:
        full["meta_sha256"] = _meta_digest(full)
        text = json.dumps(full, allow_nan=False)
    except ValueError as e:   # NaN or infinity
        raise TypeError(f"checkpoint metadata must be strict JSON data: {e}") from None
    arrays["meta"] = np.frombuffer(text.encode(), dtype=np.uint8)

    if path.is_dir():   # checked again: it may have been made since
        raise IsADirectoryError(f"cannot save to {str(path)!r}: it is a directory; give a file name such as "
                                f"{str(path / 'net.npz')!r}")
    with atomic_write(path, durable=True) as f:   # a file object keeps numpy from appending ".npz"
        _write_archive(f, arrays)


# ---------------------------------------------------------------- reading
def _what_it_is(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if head.startswith(b"\x93NUMPY"):
        return "it is a single numpy array (.npy), not a checkpoint archive (.npz)"
    return "it is not a zip archive"


class Checkpoint:
    """An open checkpoint: `meta` (checked JSON) and `headers` (name -> (shape, dtype)), no array data.

    Use as a context manager, or call `close()`.
    """

    def __init__(self, path):
        self._zip = self._file = None
        self.path = path = file_path(path)
        mode = os.stat(path).st_mode   # FileNotFoundError and other OSErrors propagate as they are
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):   # a directory: open's IsADirectoryError
            # a FIFO would block open() until a writer came; a pipe or device cannot seek, as zip needs
            self.fail("it is not a regular file (a pipe, device or socket); a checkpoint is read from a file")
        # one open file for everything read: a save replacing the path meanwhile (os.replace) leaves this
        # reader with the file it opened, never the size of one file and the members of another
        self._file = open(path, "rb")
        try:
            f = self._file
            head = f.read(8)
            f.seek(0, os.SEEK_END)
            self.size = f.tell()
            f.seek(0)
            if not head.startswith(b"PK"):
                self.fail(_what_it_is(head))
            try:
                self._zip = zipfile.ZipFile(f)
                infos = self._zip.infolist()
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError,
                    NotImplementedError) as e:
                self.fail(f"the file cannot be read as a checkpoint archive ({e})")
        except BaseException:
            self.close()
            raise
        try:
            self._members = {}
            for info in infos:
                name = info.filename
                if not name.endswith(".npy"):
                    self.fail(f"it holds {name!r}, which is not a numpy array")
                if name[:-4] in self._members:
                    self.fail(f"it holds {name!r} twice")
                self._check_member_size(info)
                self._members[name[:-4]] = info
            if "meta" not in self._members:
                self.fail("it has no 'meta' entry (it is not a gpubp checkpoint)")
            # the metadata first: it lists the arrays, so a file of 10**5 others is refused before their headers
            self.headers = {"meta": self._header("meta")}
            self.meta = self._read_meta()
            self.headers.update({k: self._header(k) for k in self._members if k != "meta"})
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------ helpers
    def fail(self, why):
        raise CheckpointError(f"{self.path}: not a usable gpubp checkpoint: {why}")

    def close(self):
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_member_size(self, info):
        if info.compress_type == zipfile.ZIP_STORED:
            ok = info.compress_size == info.file_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            ok = info.file_size <= _MAX_DEFLATE_RATIO * info.compress_size + 1024
        else:
            self.fail(f"member {info.filename!r} uses an unsupported compression ({info.compress_type})")
        if not ok or info.header_offset + info.compress_size > self.size:
            self.fail(f"member {info.filename!r} claims {info.file_size} bytes that the file "
                      f"({self.size} bytes) cannot hold (the file is damaged)")

    def _header(self, name):
        """`(shape, dtype)` of member `name` from its .npy header, checked against the member's size."""
        info = self._members[name]
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
                offset = f.tell()
        except (ValueError, TypeError, OSError, EOFError, SyntaxError, RuntimeError, NotImplementedError,
                zipfile.BadZipFile, zlib.error) as e:
            self.fail(f"array {name!r} has no readable header ({e})")
        if dtype.hasobject or dtype.name not in ARRAY_DTYPES:
            self.fail(f"array {name!r} has dtype {dtype}; a checkpoint holds only {', '.join(ARRAY_DTYPES)}")
        if fortran and len(shape) > 1:
            self.fail(f"array {name!r} is stored in Fortran order; checkpoints store C order")
        need = offset + int(np.prod(shape, dtype=object)) * dtype.itemsize
        if need != info.file_size:
            self.fail(f"array {name!r} claims shape {shape} of {dtype} ({need - offset} bytes) but its "
                      f"member holds {info.file_size - offset} bytes (the file is damaged)")
        return tuple(int(s) for s in shape), dtype

    def _read_raw(self, name) -> np.ndarray:
        try:
            with self._zip.open(self._members[name]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, EOFError, RuntimeError, NotImplementedError,
                zipfile.BadZipFile, zlib.error) as e:   # zlib.error: a damaged deflated member
            self.fail(f"array {name!r} cannot be read ({e}; the file is damaged)")

    def _read_meta(self) -> dict:
        shape, dtype = self.headers["meta"]
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_META_BYTES:
            self.fail(f"its 'meta' entry is not a JSON text (uint8 of shape {shape} and dtype {dtype})")
        try:
            meta = _strict_json(self._read_raw("meta").tobytes().decode())
        except (UnicodeDecodeError, ValueError) as e:
            self.fail(f"its metadata is not valid JSON ({e})")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            self.fail("its metadata does not name the gpubp checkpoint format")
        version = meta.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version not in READ_VERSIONS:
            newer = not isinstance(version, bool) and isinstance(version, int) and version > max(READ_VERSIONS)
            self.fail(f"format version {_short(version)}; this gpubp reads versions "
                      f"{', '.join(map(str, READ_VERSIONS))}"
                      + (" (a newer gpubp wrote it: upgrade gpubp to load it)" if newer else ""))
        if meta.get("meta_sha256") != _meta_digest(meta):
            self.fail("its metadata does not match its checksum (the file is damaged)")
        sums = meta.get("sha256")
        arrays = sorted(k for k in self._members if k != "meta")
        if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
            self.fail("its metadata field 'sha256' must map array names to checksums")
        if sorted(sums) != arrays:
            self.fail(f"it lists arrays {_names(sorted(sums))} but holds {_names(arrays)}")
        return meta

    # ------------------------------------------------ what readers use
    def field(self, obj, key, types, where=None):
        """`obj[key]` when it is present and of one of `types`; else a ValueError naming the field.

        `where` is the dotted path of `obj` in the metadata (e.g. "config").
        `bool` is not accepted as an `int`.
        """
        name = f"{where}.{key}" if where else key
        if not isinstance(obj, dict) or key not in obj:
            self.fail(f"its metadata has no field {name!r}")
        v = obj[key]
        if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            self.fail(f"field {name!r} must be {_type_names(types)}, got {v!r}")
        if not isinstance(v, types):
            self.fail(f"field {name!r} must be {_type_names(types)}, got {_short(v)}")
        return v

    def check_array(self, name, shape, dtype):
        """Check array `name`'s header (before reading it): present, of `shape` and `dtype`."""
        if name not in self.headers or name == "meta":
            self.fail(f"it has no array {name!r}")
        got_shape, got_dtype = self.headers[name]
        want = np.dtype(dtype)
        if got_shape != tuple(shape) or got_dtype != want:
            self.fail(f"array {name!r} has shape {got_shape} and dtype {got_dtype}; the configuration needs "
                      f"shape {tuple(shape)} and dtype {want}")

    def array(self, name, shape, dtype) -> np.ndarray:
        """Array `name`, after `check_array`, read without pickle and verified against its checksum."""
        self.check_array(name, shape, dtype)
        a = self._read_raw(name)
        if a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
            self.fail(f"array {name!r} does not hold what its header says (the file is damaged)")
        if _digest(a) != self.meta["sha256"][name]:
            self.fail(f"array {name!r} does not match its checksum (the file is damaged)")
        return a


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object",
             bool: "true or false", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _names(names: list, most: int = 8) -> str:
    """`names` as a list for a message: the first `most` of them and how many there are in all."""
    if len(names) <= most:
        return repr(names)
    return f"{repr(names[:most])[:-1]}, ... ({len(names)} in all)]"


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."


def json_data(obj):
    """`obj` (a dict) as plain JSON data, numpy arrays and scalars as lists and numbers; else a TypeError.

    Dict keys must be strings: JSON would turn `{0: "cat"}` into `{"0": "cat"}` (and `{1: "a", "1": "b"}`
    into one key), so what loads would not be what was saved.  It may nest `MAX_META_DEPTH - 1` levels
    of lists and dicts (itself the first, a numpy array's dimensions counted as lists): a checkpoint's
    metadata document holds it one level down and nests at most `MAX_META_DEPTH`."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise TypeError(f"metadata must be a dict, got {type(obj).__name__}")
    too_deep = TypeError(f"metadata must not nest lists or dicts deeper than {MAX_META_DEPTH - 1} levels (the "
                         f"checkpoint's metadata document holds it one level down and nests at most "
                         f"{MAX_META_DEPTH})")
    for o, _ in _containers(obj):   # deeper than the limit is json.dumps's to refuse below
        bad = [k for k in o if not isinstance(k, str)][:1] if isinstance(o, dict) else []
        if bad:
            raise TypeError(f"metadata keys must be strings, as JSON's are: got {bad[0]!r} "
                            f"({type(bad[0]).__name__}); use {str(bad[0])!r}")

    def plain(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON data")
    try:
        data = json.loads(json.dumps(obj, default=plain, allow_nan=False))
    except RecursionError:
        raise too_deep from None
    except (TypeError, ValueError) as e:
        raise TypeError(f"metadata must hold JSON data (numbers, strings, lists, dicts, arrays; no NaN or "
                        f"infinity): {e}") from None
    if _depth(data) > MAX_META_DEPTH - 1:     # a numpy array's dimensions became lists
        raise too_deep
    return data
