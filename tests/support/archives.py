"""Checkpoint archives built or rewritten by hand: .npy members, zips of them, central-directory fields,
and metadata with the checksum a reader expects (for tests of what `gpubp.checkpoint` refuses)."""

import io
import json
import struct
import warnings
import zipfile

import numpy as np

from gpubp.checkpoint import _meta_digest


def npy(descr, shape, body=b"", fortran=False) -> bytes:
    """A .npy member: a version 1.0 header of `descr`, `shape` and order, then `body` as it is."""
    h = io.BytesIO()
    np.lib.format.write_array_header_1_0(h, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return h.getvalue() + body


def zip_members(members, compression=zipfile.ZIP_STORED) -> bytes:
    """A zip of `(name, data[, external_attr])` members in order (a name twice is allowed)."""
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", compression) as z:
        warnings.simplefilter("ignore")          # "Duplicate name": intended where given
        for name, data, *attr in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            if attr:
                info.external_attr = attr[0]
            z.writestr(info, data)
    return buf.getvalue()


def patch_central(data, name, offset, fmt, value) -> bytes:
    """`data` with the central directory entry of `name` changed at `offset` (struct `fmt`)."""
    b = bytearray(data)
    i = b.find(b"PK\x01\x02")
    while i >= 0:
        n = struct.unpack("<H", b[i + 28:i + 30])[0]
        if b[i + 46:i + 46 + n] == name.encode():
            b[i + offset:i + offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
            return bytes(b)
        i = b.find(b"PK\x01\x02", i + 1)
    raise AssertionError(name)


def write_meta(path, arrays, meta):
    """A checkpoint of `arrays` whose metadata is the JSON value `meta`, with a correct `meta_sha256`
    where `meta` is an object (so only the check under test can refuse it)."""
    if isinstance(meta, dict):
        meta = dict(meta, meta_sha256=_meta_digest(meta))
    with open(path, "wb") as f:
        np.savez(f, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return path
