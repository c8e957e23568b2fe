"""The checkpoint container on its own (`gpubp.checkpoint`): what `write` refuses, what `Checkpoint`
checks and closes, and the messages readers build from it.  Network-level save/load is in
test_checkpoint.py."""

import zipfile

import numpy as np
import pytest

from gpubp import checkpoint
from gpubp.checkpoint import ARRAY_DTYPES, Checkpoint, CheckpointError, json_data, write
from support.archives import npy, patch_central, write_meta, zip_members


def _arrays():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 4)), "b": rng.standard_normal(4).astype(np.float32)}


def _saved(tmp_path, arrays=None, meta=None, name="c.npz"):
    path = tmp_path / name
    write(path, _arrays() if arrays is None else arrays, {"note": "x"} if meta is None else meta)
    return path


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def _rezip(path, members, compression=zipfile.ZIP_STORED):
    path.write_bytes(zip_members(list(members.items()), compression))
    return path


def _good_meta(arrays, **extra):
    return {"format": checkpoint.FORMAT, "version": checkpoint.VERSION,
            "sha256": {k: checkpoint._digest(v) for k, v in arrays.items()}, **extra}


# ----------------------------------------------------------------- write
@pytest.mark.parametrize("dtype", ARRAY_DTYPES)
def test_every_array_dtype_round_trips_bitwise(tmp_path, dtype):
    a = (np.arange(-6, 6) * 37).reshape(3, 4).astype(dtype)
    path = _saved(tmp_path, {"a": a}, {"k": [1, "two", None, True, 2.5]})
    with Checkpoint(path) as c:
        assert c.headers["a"] == ((3, 4), np.dtype(dtype))
        got = c.array("a", (3, 4), dtype)
        assert c.meta["k"] == [1, "two", None, True, 2.5]
        assert c.meta["format"] == "gpubp-checkpoint" and c.meta["version"] == checkpoint.VERSION
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, a)


@pytest.mark.parametrize("name", ["meta", "", "a/b", "/x"])
def test_array_names_the_archive_cannot_hold_are_refused_and_nothing_is_written(tmp_path, name):
    path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=f"an array cannot be named {name!r}"):
        write(path, {"ok": np.zeros(2), name: np.ones(2)}, {})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


@pytest.mark.parametrize("dtype", ["bool", "float16", "complex64", "uint16", "int8", "object"])
def test_array_dtypes_outside_the_format_are_refused_and_nothing_is_written(tmp_path, dtype):
    path = tmp_path / "c.npz"
    with pytest.raises(TypeError, match=f"array 'a' has dtype {dtype}; a checkpoint holds float32, float64"):
        write(path, {"a": np.zeros(3, dtype=dtype)}, {})
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["format", "version", "sha256", "meta_sha256"])
def test_metadata_keys_the_format_sets_are_refused(tmp_path, key):
    with pytest.raises(ValueError, match=rf"metadata keys \['{key}'\] are set by the format"):
        write(tmp_path / "c.npz", {"a": np.zeros(2)}, {key: 1, "other": 2})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), [1.0, float("nan")]])
def test_non_finite_metadata_is_refused_and_nothing_is_written(tmp_path, value):
    path = _saved(tmp_path)
    before = path.read_bytes()
    with pytest.raises(TypeError, match="checkpoint metadata must be strict JSON data"):
        write(path, {"a": np.zeros(2)}, {"x": value})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_a_directory_made_at_the_path_during_the_write_is_refused(tmp_path, monkeypatch):
    """The path is checked once before any work and again just before the file is written: a directory
    made there meanwhile is an IsADirectoryError, not a file written inside it or an error from the rename."""
    path = tmp_path / "c.npz"
    digest = checkpoint._meta_digest

    def and_make_the_directory(meta):
        path.mkdir()
        return digest(meta)
    monkeypatch.setattr(checkpoint, "_meta_digest", and_make_the_directory)
    with pytest.raises(IsADirectoryError, match="it is a directory; give a file name such as .*c.npz/net.npz"):
        write(path, {"a": np.zeros(2)}, {})
    assert path.is_dir() and list(path.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["c.npz"]


# ----------------------------------------------------------------- json_data
def test_json_data_gives_plain_json_or_a_type_error():
    assert json_data(None) == {}
    assert json_data({"a": np.arange(3.0), "b": np.int64(4), "c": {"d": np.float32(0.5)}}) == \
        {"a": [0.0, 1.0, 2.0], "b": 4, "c": {"d": 0.5}}
    for not_a_dict in ([1, 2], "x", 3, np.arange(2)):
        with pytest.raises(TypeError, match=f"metadata must be a dict, got {type(not_a_dict).__name__}"):
            json_data(not_a_dict)
    for bad in ({"x": float("nan")}, {"x": [np.inf]}, {"x": np.array([1.0, np.nan])}, {"x": object()}):
        with pytest.raises(TypeError, match="metadata must hold JSON data"):
            json_data(bad)


# ----------------------------------------------------------------- Checkpoint: closing
class _Tracked:
    def __init__(self):
        self.files = []

    def open(self, *args, **kw):
        f = open(*args, **kw)
        self.files.append(f)
        return f


def test_close_and_the_with_block_close_the_file(tmp_path):
    path = _saved(tmp_path)
    c = Checkpoint(path)
    f = c._file
    c.close()
    assert f.closed
    c.close()                                   # a second close is harmless
    with Checkpoint(path) as c:
        f = c._file
        assert not f.closed
    assert f.closed


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04 truncated", "meta-list"])
def test_a_refused_file_is_closed(tmp_path, monkeypatch, content):
    """Every refusal, before or after the archive is opened, closes the file it opened."""
    path = tmp_path / "c.npz"
    if content == "meta-list":
        write_meta(path, {"a": np.zeros(2)}, [1, 2])
    else:
        path.write_bytes(content)
    tracked = _Tracked()
    monkeypatch.setattr(checkpoint, "open", tracked.open, raising=False)
    with pytest.raises(CheckpointError):
        Checkpoint(path)
    assert len(tracked.files) == 1 and tracked.files[0].closed


# ----------------------------------------------------------------- Checkpoint: the metadata
@pytest.mark.parametrize("meta_obj, why", [
    ([1, 2], "its metadata does not name the gpubp checkpoint format"),
    ("gpubp-checkpoint", "its metadata does not name the gpubp checkpoint format"),
    ({"format": "other", "version": 2}, "its metadata does not name the gpubp checkpoint format"),
    ({"version": 2}, "its metadata does not name the gpubp checkpoint format"),
    ("sha256-list", "its metadata field 'sha256' must map array names to checksums"),
    ("sha256-number", "its metadata field 'sha256' must map array names to checksums"),
])
def test_metadata_of_another_shape_is_refused_naming_what_is_wrong(tmp_path, meta_obj, why):
    arrays = {"a": np.arange(3.0)}
    if meta_obj == "sha256-list":
        meta_obj = dict(_good_meta(arrays), sha256=[checkpoint._digest(arrays["a"])])
    elif meta_obj == "sha256-number":
        meta_obj = dict(_good_meta(arrays), sha256={"a": 12345})
    path = write_meta(tmp_path / "c.npz", arrays, meta_obj)
    with pytest.raises(CheckpointError, match=f"not a usable gpubp checkpoint: {why}"):
        Checkpoint(path)


def test_a_consistent_handmade_file_is_read(tmp_path):
    """The control for the refusals above: the same construction with nothing wrong is accepted."""
    arrays = {"a": np.arange(3.0)}
    with Checkpoint(write_meta(tmp_path / "c.npz", arrays, _good_meta(arrays, x=1))) as c:
        assert c.meta["x"] == 1 and np.array_equal(c.array("a", (3,), "float64"), arrays["a"])


def test_the_array_list_in_a_message_shows_at_most_eight_names(tmp_path):
    def refusal(n):
        arrays = {f"a{i}": np.zeros(1) for i in range(n)}
        meta = _good_meta(arrays)
        meta["sha256"]["extra"] = "0" * 64
        with pytest.raises(CheckpointError) as e:
            Checkpoint(write_meta(tmp_path / f"c{n}.npz", arrays, meta))
        return str(e.value).split(": ", 2)[2]
    eight = [f"a{i}" for i in range(8)]
    assert refusal(8) == f"it lists arrays {sorted(eight + ['extra'])[:8]!r}"[:-1] + \
        ", ... (9 in all)] but holds " + repr(sorted(eight))
    nine = sorted(f"a{i}" for i in range(9))
    assert refusal(9) == f"it lists arrays {repr(sorted(nine + ['extra'])[:8])[:-1]}, ... (10 in all)] " \
        f"but holds {repr(nine[:8])[:-1]}, ... (9 in all)]"
    assert refusal(7) == f"it lists arrays {sorted([f'a{i}' for i in range(7)] + ['extra'])!r} but holds " \
        f"{sorted(f'a{i}' for i in range(7))!r}"


def test_the_metadata_size_limit_is_inclusive(tmp_path, monkeypatch):
    """`MAX_META_BYTES` is the largest metadata member read: one of exactly that size is read, one byte
    more is refused before it is read."""
    arrays = {"a": np.arange(3.0)}
    meta = _good_meta(arrays)
    path = write_meta(tmp_path / "c.npz", arrays, meta)
    with Checkpoint(path) as c:
        size = c.headers["meta"][0][0]
    monkeypatch.setattr(checkpoint, "MAX_META_BYTES", size)
    Checkpoint(path).close()
    monkeypatch.setattr(checkpoint, "MAX_META_BYTES", size - 1)
    with pytest.raises(CheckpointError, match=rf"its 'meta' entry is not a JSON text \(uint8 of shape \({size},\)"):
        Checkpoint(path)


# ----------------------------------------------------------------- Checkpoint: field and array
def test_field_refuses_true_and_false_where_a_number_is_asked(tmp_path):
    with Checkpoint(_saved(tmp_path)) as c:
        obj = {"n": True, "x": False, "s": 3}
        with pytest.raises(CheckpointError, match=r"field 'cfg.n' must be an integer, got True"):
            c.field(obj, "n", int, "cfg")
        with pytest.raises(CheckpointError, match=r"field 'x' must be a number or an integer, got False"):
            c.field(obj, "x", (float, int))
        assert c.field(obj, "n", (bool, int)) is True and c.field(obj, "s", int) == 3
        with pytest.raises(CheckpointError, match=r"its metadata has no field 'cfg.missing'"):
            c.field(obj, "missing", int, "cfg")
        with pytest.raises(CheckpointError, match=r"its metadata has no field 'n'"):
            c.field([1, 2], "n", int)


def test_field_messages_shorten_long_values_to_80_characters(tmp_path):
    with Checkpoint(_saved(tmp_path)) as c:
        def got(v):
            with pytest.raises(CheckpointError) as e:
                c.field({"k": v}, "k", int)
            return str(e.value).split(", got ", 1)[1]
        fits = "x" * 78                         # its repr is 80 characters: shown whole
        assert got(fits) == repr(fits)
        long = "y" * 79                         # 81: the first 77 and "..."
        assert got(long) == repr(long)[:77] + "..." and len(got(long)) == 80
        assert got(list(range(1000))) == repr(list(range(1000)))[:77] + "..."


def test_array_checks_the_header_against_what_the_reader_needs_before_reading(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    with Checkpoint(path) as c:
        monkeypatch.setattr(c, "_read_raw", lambda name: pytest.fail(f"{name} was read"))
        with pytest.raises(CheckpointError, match=r"array 'w' has shape \(3, 4\) and dtype float64; the "
                                                  r"configuration needs shape \(4, 3\) and dtype float64"):
            c.array("w", (4, 3), "float64")
        with pytest.raises(CheckpointError, match=r"array 'b' has shape \(4,\) and dtype float32; the "
                                                  r"configuration needs shape \(4,\) and dtype float64"):
            c.array("b", (4,), np.float64)
        for name in ("meta", "nothing"):
            with pytest.raises(CheckpointError, match=f"it has no array {name!r}"):
                c.array(name, (1,), "uint8")


def test_a_one_dimensional_array_marked_fortran_order_is_read(tmp_path):
    """For one dimension Fortran and C order are the same bytes: such a header (which other writers
    may produce) is accepted, and only arrays of two or more dimensions in Fortran order are refused."""
    a = np.arange(5.0)
    path = _saved(tmp_path, {"a": a})
    members = _members(path)
    members["a.npy"] = npy("<f8", (5,), a.tobytes(), fortran=True)
    with Checkpoint(_rezip(path, members)) as c:
        assert np.array_equal(c.array("a", (5,), "float64"), a)


def test_a_damaged_deflated_member_is_a_checkpoint_error_when_read(tmp_path):
    """The header of a compressed array is readable but its data is not: `array` says the file is
    damaged (never a zlib error or a wrong array)."""
    a = np.random.default_rng(1).standard_normal(4096)
    path = _saved(tmp_path, {"a": a})
    members = _members(path)
    _rezip(path, members, zipfile.ZIP_DEFLATED)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("a.npy")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    mid = start + info.compress_size // 2
    data[mid:mid + 64] = bytes(64)             # well past the .npy header, which stays readable
    path.write_bytes(bytes(data))
    with Checkpoint(path) as c:
        assert c.headers["a"] == ((4096,), np.dtype("float64"))
        with pytest.raises(CheckpointError, match=r"array 'a' (cannot be read|does not match its checksum)"):
            c.array("a", (4096,), "float64")


# ----------------------------------------------------------------- Checkpoint: member sizes
def _claiming(path, name, compress_size=None, file_size=None):
    """`path` with `name`'s central directory record claiming other sizes."""
    data = path.read_bytes()
    if compress_size is not None:
        data = patch_central(data, name, 20, "<I", compress_size)
    if file_size is not None:
        data = patch_central(data, name, 24, "<I", file_size)
    out = path.with_name("claiming.npz")
    out.write_bytes(data)
    return out


def _refusal(path):
    with pytest.raises(CheckpointError) as e:
        Checkpoint(path).close()
    return str(e.value)


def test_a_stored_member_must_end_inside_the_file(tmp_path):
    """A stored member may claim sizes up to the end of the file and not a byte beyond."""
    path = _saved(tmp_path, {"first": np.arange(5.0), "a": np.arange(3.0)})
    size = path.stat().st_size
    with zipfile.ZipFile(path) as z:
        offset = z.getinfo("a.npy").header_offset
    assert offset > 0
    to_the_end = size - offset
    # up to the end: the size check passes, and the .npy header then finds the member's size wrong
    assert "'a' claims shape (3,)" in _refusal(_claiming(path, "a.npy", to_the_end, to_the_end))
    for beyond in (to_the_end + 1, size, 2 * size):    # from its own start, from the file's
        why = _refusal(_claiming(path, "a.npy", beyond, beyond))
        assert f"member 'a.npy' claims {beyond} bytes that the file ({size} bytes) cannot hold" in why


def test_a_deflated_member_may_claim_at_most_1100_times_its_size_plus_1024_bytes(tmp_path):
    path = _rezip(tmp_path / "c.npz", _members(_saved(tmp_path, {"a": np.arange(3.0)}, name="s.npz")),
                  zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(path) as z:
        packed = z.getinfo("a.npy").compress_size
    most = 1100 * packed + 1024
    assert "cannot hold" not in _refusal(_claiming(path, "a.npy", file_size=most))
    assert f"member 'a.npy' claims {most + 1} bytes" in _refusal(_claiming(path, "a.npy", file_size=most + 1))
