"""save/load round trips, and damaged or mismatched files are refused."""

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp.checkpoint import _meta_digest
from support.archives import npy as _npy
from support.archives import patch_central as _patch_central
from support.archives import write_meta
from support.archives import zip_members as _zip


def trained(tmp_path, opt):
    rng = np.random.default_rng(3)
    net = gpubp.MLP([5, 7, 3], activation=["gelu"], loss="cross_entropy", backend="numpy",
                    dtype="float64", seed=3)
    X, y = rng.standard_normal((20, 5)), rng.integers(0, 3, 20)
    net.fit(X, y, epochs=2, batch_size=6, optimizer=opt, progress=False)
    path = tmp_path / "net.npz"
    net.save(path)
    return net, path, X, y


@pytest.mark.parametrize("opt", [gpubp.optim.SGD(0.1, momentum=0.9), gpubp.optim.Adam(0.01),
                                 gpubp.optim.AdamW(0.01, weight_decay=0.1),
                                 gpubp.optim.SGD(0.1, momentum=0.8, weight_decay=0.01, nesterov=True)],
                         ids=["momentum", "adam", "adamw", "nesterov"])
def test_round_trip_resumes_training_identically(tmp_path, opt):
    net, path, X, y = trained(tmp_path, opt)
    back = gpubp.MLP.load(path, backend="numpy")
    assert back.config() == net.config()
    assert back.optimizer.hyper() == opt.hyper()
    for (W, b), (W2, b2) in zip(net.get_params(), back.get_params()):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    assert type(back.optimizer) is type(opt) and back.optimizer.t == opt.t
    # one more step from each gives the same bits: the optimizer state came back whole
    l1 = net.train_step(X, y, opt)
    l2 = back.train_step(X, y, back.optimizer)
    assert l1 == l2
    for (W, b), (W2, b2) in zip(net.get_params(), back.get_params()):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)


def test_file_is_not_a_pickle(tmp_path):
    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = json.loads(np.load(io.BytesIO(z.read("meta.npy"))).tobytes())
    assert sorted(names) == ["meta.npy", "opt.m.npy", "opt.v.npy", "params.npy"]
    assert meta["format"] == "gpubp-checkpoint" and meta["config"]["layer_sizes"] == [5, 7, 3]


def test_damaged_files_are_refused(tmp_path):
    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    data = path.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be read"):
        gpubp.MLP.load(cut)
    # flip one byte inside the parameters: the checksum notices
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    p = bytearray(entries["params.npy"])
    p[-3] ^= 0xFF
    entries["params.npy"] = bytes(p)
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(bad, "w") as z:
        for n, d in entries.items():
            z.writestr(n, d)
    with pytest.raises(ValueError, match="checksum"):
        gpubp.MLP.load(bad)
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    with pytest.raises(ValueError, match="no 'meta'"):
        gpubp.MLP.load(other)
    with pytest.raises(FileNotFoundError):
        gpubp.MLP.load(tmp_path / "missing.npz")


def test_mismatched_parameters_are_refused(tmp_path):
    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    meta["config"]["layer_sizes"] = [5, 8, 3]        # the parameters no longer fit
    bad = tmp_path / "mismatch.npz"
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="metadata does not match its checksum"):
        gpubp.MLP.load(bad)
    meta["meta_sha256"] = _meta_digest(meta)          # a consistent file of a mismatched network
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match=r"layer shapes \[\[7, 5\], \[3, 7\]\].*do not fit"):
        gpubp.MLP.load(bad)


def test_metadata_round_trip(tmp_path):
    net = gpubp.MLP([3, 2], backend="numpy")
    net.save(tmp_path / "m.npz", metadata={"mean": np.arange(3.0), "name": "x"})
    assert gpubp.MLP.load(tmp_path / "m.npz").metadata == {"mean": [0.0, 1.0, 2.0], "name": "x"}
    with pytest.raises(TypeError, match="JSON"):
        net.save(tmp_path / "n.npz", metadata={"f": object()})


# ----------------------------------------------------------------- helpers: rewrite a checkpoint consistently
def read_all(path):
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(arrays.pop("meta").tobytes())


def write_consistent(path, arrays, meta):
    """A checkpoint whose checksums all agree with its (possibly wrong) content."""
    from gpubp.checkpoint import _digest

    return write_meta(path, arrays, dict(meta, sha256={k: _digest(v) for k, v in arrays.items()}))


def same_params(a, b):
    return all(np.array_equal(p, q) for (W, c), (W2, c2) in zip(a.get_params(), b.get_params())
               for p, q in ((W, W2), (c, c2)))


# ----------------------------------------------------------------- atomic save
def test_a_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    net, path, X, y = trained(tmp_path, gpubp.optim.Adam(0.01))
    before = path.read_bytes()
    real_savez = np.savez

    def disk_full(f, **arrays):           # writes half an archive, then the disk is full
        buf = io.BytesIO()
        real_savez(buf, **arrays)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    other = gpubp.MLP([5, 7, 3], activation=["gelu"], loss="cross_entropy", backend="numpy",
                      dtype="float64", seed=99)
    with pytest.raises(OSError, match="No space left"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz"]
    assert same_params(gpubp.MLP.load(path, backend="numpy"), net)


def test_saving_to_a_directory_is_refused_and_writes_nothing(tmp_path):
    """A directory as the path is refused before anything is written (no temporary beside it)."""
    target = tmp_path / "models"
    target.mkdir()
    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        net.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models"]
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("name", ["out/", "out/.", "sub/out/", "./"])
def test_saving_to_a_name_ending_in_a_separator_is_refused_and_writes_nothing(tmp_path, monkeypatch, name):
    """`Path` drops a trailing "/" (and a last "."): `save("out/")` wrote a file named `out`, and over an
    existing file `out` replaced it; `gpubp train --save out/` is refused, and so is this now."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "out").write_bytes(b"keep")
    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    for path in (name, name.encode()):
        with pytest.raises(IsADirectoryError, match="directory; give a file name"):
            net.save(path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["sub", "sub/out"]
    assert (tmp_path / "sub" / "out").read_bytes() == b"keep"
    with pytest.raises(ValueError, match="not a file name"):
        net.save("")


def test_save_writes_a_synced_temporary_then_replaces(tmp_path, monkeypatch):
    import os

    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    calls = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", str(a), str(b))),
                                                     real_replace(a, b))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync",)), real_fsync(fd))[1])
    net.save(tmp_path / "m.npz")
    kinds = [c[0] for c in calls]
    assert "fsync" in kinds and "replace" in kinds and kinds.index("fsync") < kinds.index("replace")
    _, src, dst = next(c for c in calls if c[0] == "replace")
    assert dst == str(tmp_path / "m.npz") and src != dst and str(tmp_path) == str(Path(src).parent)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open descriptors in /proc/self/fd")
def test_a_durable_write_syncs_the_whole_file_then_its_folder_and_a_plain_one_syncs_nothing(tmp_path, monkeypatch):
    """gpubp.files.atomic_write(durable=True): the temporary file is flushed and synced with every byte
    written, renamed, then its folder synced (the rename survives a crash), leaving no descriptor open;
    without `durable` (the default: plots, CLI outputs) nothing is synced."""
    import os
    import stat

    from gpubp.files import atomic_write

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("folder" if stat.S_ISDIR(st.st_mode) else "file", st.st_size if stat.S_ISREG(st.st_mode)
                       else None))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b))[1])
    open_fds = len(os.listdir("/proc/self/fd"))
    with atomic_write(tmp_path / "d.bin", durable=True) as f:
        for _ in range(1000):
            f.write(b"x" * 99)              # small writes: the last ones sit in the file object's buffer
    assert events == [("file", 99000), ("replace", None), ("folder", None)]
    assert len(os.listdir("/proc/self/fd")) == open_fds
    events.clear()
    with atomic_write(tmp_path / "p.bin") as f:
        f.write(b"y" * 10)
    assert events == [("replace", None)] and (tmp_path / "p.bin").read_bytes() == b"y" * 10
    assert (tmp_path / "d.bin").stat().st_size == 99000 and len(os.listdir("/proc/self/fd")) == open_fds


# ----------------------------------------------------------------- exact resume
@pytest.mark.parametrize("make_opt", [lambda: gpubp.optim.Adam(0.01), lambda: gpubp.optim.SGD(0.05, momentum=0.9)],
                         ids=["adam", "sgd-momentum"])
def test_fit_save_load_fit_equals_one_uninterrupted_fit(tmp_path, make_opt):
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((45, 4)), rng.integers(0, 3, 45)

    def fresh():
        return gpubp.MLP([4, 8, 3], activation="tanh", loss="cross_entropy", backend="numpy", seed=11)

    whole = fresh()
    whole.fit(X, y, epochs=4, batch_size=8, optimizer=make_opt(), shuffle=True, progress=False, standardize=True)
    first = fresh()
    first.fit(X, y, epochs=2, batch_size=8, optimizer=make_opt(), shuffle=True, progress=False, standardize=True)
    first.save(tmp_path / "half.npz")
    resumed = gpubp.MLP.load(tmp_path / "half.npz", backend="numpy")
    resumed.fit(X, y, epochs=2, batch_size=8, optimizer=resumed.optimizer, shuffle=True, progress=False)
    assert resumed.optimizer.t == whole.optimizer.t
    assert same_params(resumed, whole)
    for k in resumed.optimizer.state:
        assert np.array_equal(resumed.optimizer.state[k], whole.optimizer.state[k])


@pytest.mark.parametrize("seed", [None, 0, 123, 2 ** 64 + 5, 2 ** 70, np.int64(7), np.uint64(2 ** 64 - 1)],
                         ids=lambda s: repr(s))
def test_every_constructor_seed_can_be_saved_and_loaded(tmp_path, seed):
    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=seed)
    net.save(tmp_path / "s.npz")
    back = gpubp.MLP.load(tmp_path / "s.npz", backend="numpy")
    assert back.seed == (None if seed is None else int(seed))
    assert same_params(back, net)
    assert back._rng.bit_generator.state == net._rng.bit_generator.state


# ----------------------------------------------------------------- validate before allocating
def test_a_small_file_claiming_a_huge_network_is_refused_at_once(tmp_path):
    import time

    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    net.save(tmp_path / "small.npz")
    arrays, meta = read_all(tmp_path / "small.npz")
    meta["config"]["layer_sizes"] = [10 ** 6, 10 ** 6]
    meta["shapes"] = [[10 ** 6, 10 ** 6]]
    bad = write_consistent(tmp_path / "huge.npz", arrays, meta)
    assert bad.stat().st_size < 4096
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="params"):
        gpubp.MLP.load(bad, backend="numpy")
    assert time.perf_counter() - t0 < 1.0

    # the array's header agrees with the claim, but the data is not there
    total = gpubp.params.ParamLayout((10 ** 6, 10 ** 6)).total
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (total,)})
    meta["sha256"] = {"params": "0" * 64}
    meta["meta_sha256"] = _meta_digest(meta)
    liar = tmp_path / "liar.npz"
    with zipfile.ZipFile(liar, "w") as z:
        z.writestr("params.npy", hdr.getvalue())
        mb = io.BytesIO()
        np.save(mb, np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        z.writestr("meta.npy", mb.getvalue())
    assert liar.stat().st_size < 4096
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="params.*damaged"):
        gpubp.MLP.load(liar, backend="numpy")
    assert time.perf_counter() - t0 < 1.0


def _adam_file(tmp_path):
    net, path, X, y = trained(tmp_path, gpubp.optim.Adam(0.01))
    return read_all(path)


def test_an_adam_eps_that_rounds_to_zero_in_the_files_dtype_is_refused(tmp_path):
    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)        # float32
    net.train_step(np.ones((2, 3)), np.ones((2, 2)), gpubp.optim.Adam(0.01))
    net.save(tmp_path / "a.npz")
    arrays, meta = read_all(tmp_path / "a.npz")
    meta["optimizer"]["hyper"]["eps"] = 1e-50                  # positive, but 0 in float32: 0 / 0 in training
    bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(ValueError, match=r"optimizer\.hyper.*eps=1e-50 rounds to 0 in float32"):
        gpubp.MLP.load(bad, backend="numpy")


def test_non_finite_parameters_are_refused(tmp_path):
    for value in (np.nan, np.inf, -np.inf):
        arrays, meta = _adam_file(tmp_path)
        arrays["params"][3] = value
        bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
        with pytest.raises(ValueError, match="'params'.*NaN or infinite"):
            gpubp.MLP.load(bad, backend="numpy")


@pytest.mark.parametrize("spoil, field", [
    (lambda a, m: m["optimizer"].__setitem__("t", -1), "optimizer.t"),
    (lambda a, m: m["optimizer"].__setitem__("t", 2 ** 40), "optimizer.t"),
    (lambda a, m: m["optimizer"].__setitem__("t", 10 ** 400), r"optimizer.t.*got 1000+\.\.\.$"),
    (lambda a, m: a["opt.v"].__setitem__(2, -1e-3), "'opt.v'.*negative"),
    (lambda a, m: a["opt.v"].__setitem__(2, np.nan), "'opt.v'.*NaN"),
    (lambda a, m: a["opt.m"].__setitem__(0, np.inf), "'opt.m'.*NaN or infinite"),
], ids=["negative-step", "step-overflow", "step-400-digits", "negative-v", "nan-v", "inf-m"])
def test_impossible_optimizer_state_is_refused(tmp_path, spoil, field):
    arrays, meta = _adam_file(tmp_path)
    spoil(arrays, meta)
    bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(ValueError, match=field):
        gpubp.MLP.load(bad, backend="numpy")


def _pop(d, k):
    d.pop(k)


MALFORMED = [
    ("no-config", lambda a, m: _pop(m, "config"), "'config'"),
    ("config-not-object", lambda a, m: m.__setitem__("config", [1, 2]), "'config'"),
    ("no-layer-sizes", lambda a, m: _pop(m["config"], "layer_sizes"), "config.layer_sizes"),
    ("layer-sizes-text", lambda a, m: m["config"].__setitem__("layer_sizes", "5,7,3"), "config.layer_sizes"),
    ("layer-sizes-floats", lambda a, m: m["config"].__setitem__("layer_sizes", [5.0, 7, 3]), "config.layer_sizes"),
    ("layer-sizes-zero", lambda a, m: m["config"].__setitem__("layer_sizes", [5, 0, 3]), "config.layer_sizes"),
    ("layer-sizes-one", lambda a, m: m["config"].__setitem__("layer_sizes", [5]), "config.layer_sizes"),
    ("layer-sizes-bool", lambda a, m: m["config"].__setitem__("layer_sizes", [5, True, 3]), "config.layer_sizes"),
    ("no-activation", lambda a, m: _pop(m["config"], "activation"), "config.activation"),
    ("bad-activation", lambda a, m: m["config"].__setitem__("activation", ["swish2"]), "config.activation"),
    ("activation-number", lambda a, m: m["config"].__setitem__("activation", [3]), "config.activation"),
    ("activation-count", lambda a, m: m["config"].__setitem__("activation", ["relu", "relu"]), "config.activation"),
    ("bad-output-activation", lambda a, m: m["config"].__setitem__("output_activation", "soft"),
     "config.output_activation"),
    ("output-activation-type", lambda a, m: m["config"].__setitem__("output_activation", None),
     "config.output_activation"),
    ("logit-loss-needs-identity", lambda a, m: m["config"].__setitem__("output_activation", "sigmoid"),
     "config.output_activation"),
    ("bad-loss", lambda a, m: m["config"].__setitem__("loss", "hinge"), "config.loss"),
    ("bad-dtype", lambda a, m: m["config"].__setitem__("dtype", "float16"), "config.dtype"),
    ("dtype-type", lambda a, m: m["config"].__setitem__("dtype", 64), "config.dtype"),
    ("bad-precision", lambda a, m: m["config"].__setitem__("precision", "fp8"), "config.precision"),
    ("precision-type", lambda a, m: m["config"].__setitem__("precision", 32), "config.precision"),
    ("tf32-in-float64", lambda a, m: m["config"].__setitem__("precision", "tf32"), "config.precision"),
    ("bf16-in-float64", lambda a, m: m["config"].__setitem__("precision", "bf16"), "config.precision"),
    ("3xtf32-in-float64", lambda a, m: m["config"].__setitem__("precision", "3xtf32"), "config.precision"),
    ("negative-seed", lambda a, m: m["config"].__setitem__("seed", -3), "config.seed"),
    ("seed-text", lambda a, m: m["config"].__setitem__("seed", "abc"), "config.seed"),
    ("no-optimizer-name", lambda a, m: _pop(m["optimizer"], "name"), "optimizer.name"),
    ("unknown-optimizer", lambda a, m: m["optimizer"].__setitem__("name", "rmsprop"), "optimizer.name"),
    ("bad-hyper", lambda a, m: m["optimizer"]["hyper"].__setitem__("lr", -1.0), "optimizer.hyper"),
    ("unknown-hyper", lambda a, m: m["optimizer"]["hyper"].__setitem__("gamma", 2), "optimizer.hyper"),
    ("hyper-type", lambda a, m: m["optimizer"].__setitem__("hyper", "fast"), "optimizer.hyper"),
    ("step-text", lambda a, m: m["optimizer"].__setitem__("t", "3"), "optimizer.t"),
    ("step-float", lambda a, m: m["optimizer"].__setitem__("t", 3.5), "optimizer.t"),
    ("state-names", lambda a, m: m["optimizer"].__setitem__("state", ["m"]), "optimizer.state"),
    ("no-rng", lambda a, m: _pop(m, "rng"), "'rng'"),
    ("rng-kind", lambda a, m: m["rng"].__setitem__("bit_generator", "Mystery"), "rng.bit_generator"),
    ("rng-state", lambda a, m: m["rng"].__setitem__("state", {"state": "x"}), "rng"),
    ("metadata-type", lambda a, m: m.__setitem__("metadata", [1]), "'metadata'"),
    ("shapes", lambda a, m: m.__setitem__("shapes", [[1, 1], [1, 1]]), "'shapes'"),
    ("params-dtype", lambda a, m: a.__setitem__("params", a["params"].astype(np.float32)), "'params'.*dtype"),
    ("params-big-endian", lambda a, m: a.__setitem__("params", a["params"].astype(">f8")), "'params'.*dtype"),
    ("params-shape", lambda a, m: a.__setitem__("params", a["params"][:-1]), "'params'.*shape"),
    ("params-2d", lambda a, m: a.__setitem__("params", a["params"].reshape(1, -1)), "'params'.*shape"),
    ("state-shape", lambda a, m: a.__setitem__("opt.m", a["opt.m"][:10]), "'opt.m'.*shape"),
    ("no-params", lambda a, m: _pop(a, "params"), "'params'"),
    ("no-state", lambda a, m: _pop(a, "opt.v"), "'opt.v'"),
    ("extra-array", lambda a, m: a.__setitem__("extra", np.zeros(3)), "'extra'"),
    ("complex-array", lambda a, m: a.__setitem__("params", a["params"].astype("complex128")), "'params'.*dtype"),
    ("padding", lambda a, m: a["params"].__setitem__(-1, 1.0), "'params'.*padding"),
]


@pytest.mark.parametrize("spoil, field", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_every_malformed_field_is_a_value_error_naming_it(tmp_path, spoil, field):
    arrays, meta = _adam_file(tmp_path)
    spoil(arrays, meta)
    bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(ValueError, match=field):
        gpubp.MLP.load(bad, backend="numpy")


@pytest.mark.parametrize("field, value", [("dtype", 64), ("loss", None), ("output_activation", 1)])
def test_a_field_of_the_wrong_type_is_named_once(tmp_path, field, value):
    """A configuration field of the wrong type is named by one plain message, not one nested in
    another (the path and "not a usable gpubp checkpoint" twice)."""
    arrays, meta = _adam_file(tmp_path)
    meta["config"][field] = value
    bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(ValueError, match=f"field 'config.{field}' must be a string, got {value!r}$") as info:
        gpubp.MLP.load(bad, backend="numpy")
    assert str(info.value).count("not a usable gpubp checkpoint") == 1


def test_a_bad_backend_argument_is_blamed_on_the_argument(tmp_path):
    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    for backend in ("tpu", 3, None):
        with pytest.raises(ValueError, match="backend") as e:
            gpubp.MLP.load(path, backend=backend)
        assert "checkpoint" not in str(e.value) and str(path) not in str(e.value)


def test_a_backend_that_cannot_run_the_precision_is_blamed_not_the_file(tmp_path):
    """A sound bf16 checkpoint loaded onto a backend without bf16 (the default cuda backend, which
    needs tensor_core_gemms=True) is refused naming the backend and the mode, not as a damaged file."""
    from gpubp.backends import NumpyBackend
    from gpubp.checkpoint import CheckpointError

    class Float32Only(NumpyBackend):
        name = "f32only"
        precisions = ("float32", "tf32")

    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0, precision="bf16")
    net.save(tmp_path / "bf16.npz")
    with pytest.raises(ValueError, match=r"backend 'f32only'.*'bf16'") as e:
        gpubp.MLP.load(tmp_path / "bf16.npz", backend=Float32Only())
    assert not isinstance(e.value, CheckpointError) and "not a usable" not in str(e.value)
    assert gpubp.MLP.load(tmp_path / "bf16.npz", backend="numpy").precision == "bf16"


@pytest.mark.parametrize("content, why", [
    (b"", "empty"),
    (b"layer_sizes = [5, 7, 3]\n", "not a zip archive"),
    (bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), "not a zip archive"),
    (b"PK\x03\x04" + b"\0" * 200, "cannot be read"),
], ids=["empty", "text", "random-bytes", "broken-zip"])
def test_non_checkpoint_files_are_refused_clearly(tmp_path, content, why):
    p = tmp_path / "thing.npz"
    p.write_bytes(content)
    with pytest.raises(ValueError, match=f"not a usable gpubp checkpoint: .*{why}"):
        gpubp.MLP.load(p, backend="numpy")


def test_a_npy_file_is_refused_clearly(tmp_path):
    net = gpubp.MLP([3, 2], backend="numpy")
    p = tmp_path / "params.npy"
    np.save(p, net.get_params()[0][0])
    with pytest.raises(ValueError, match=r"single numpy array \(\.npy\)"):
        gpubp.MLP.load(p, backend="numpy")
    # an archive with a pickled member is refused, and no code runs
    q = tmp_path / "pickled.npz"
    np.savez(q, meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="dtype object"):
        gpubp.MLP.load(q, backend="numpy")


def test_checkpoint_json_is_strict(tmp_path):
    net = gpubp.MLP([3, 2], backend="numpy")
    with pytest.raises(TypeError, match="JSON"):
        net.save(tmp_path / "n.npz", metadata={"scale": float("nan")})
    assert not (tmp_path / "n.npz").exists()
    net.save(tmp_path / "ok.npz", metadata={"scale": 1.0})
    arrays, meta = read_all(tmp_path / "ok.npz")
    meta["metadata"] = {"scale": float("inf")}
    bad = write_consistent(tmp_path / "inf.npz", arrays, meta)  # json.dumps writes Infinity
    with pytest.raises(ValueError, match="not valid JSON"):
        gpubp.MLP.load(bad, backend="numpy")


def _imports(module):
    src = (Path(gpubp.__file__).parent / f"{module}.py").read_text()
    return [l.strip() for l in src.splitlines() if l.lstrip().startswith(("import ", "from "))]


def test_checkpoint_module_does_not_import_the_network():
    """The file format stands alone: of gpubp it imports only the atomic file writer (and its check of
    the name), which imports nothing of gpubp."""
    imports = _imports("checkpoint")
    assert imports and not any("network" in l for l in imports)
    assert [l for l in imports if l.startswith("from .")] == ["from .files import atomic_write, file_to_write"]
    assert not any(l.startswith("from .") or "gpubp" in l for l in _imports("files"))


def test_version_1_files_without_generator_state_still_load(tmp_path):
    net, path, X, y = trained(tmp_path, gpubp.optim.SGD(0.1, momentum=0.9))
    arrays, meta = read_all(path)
    meta["version"] = 1
    del meta["rng"]
    old = write_consistent(tmp_path / "v1.npz", arrays, meta)
    back = gpubp.MLP.load(old, backend="numpy")
    assert same_params(back, net) and back.optimizer.t == net.optimizer.t
    meta["version"] = 3
    with pytest.raises(ValueError, match="format version 3"):
        gpubp.MLP.load(write_consistent(tmp_path / "v3.npz", arrays, meta), backend="numpy")


def test_an_sgd_file_from_before_nesterov_loads_as_classical_momentum(tmp_path):
    """Files written before SGD had `nesterov` hold no such hyper-parameter: they trained with classical
    momentum, and load so."""
    net, path, X, y = trained(tmp_path, gpubp.optim.SGD(0.1, momentum=0.9))
    arrays, meta = read_all(path)
    del meta["optimizer"]["hyper"]["nesterov"]
    back = gpubp.MLP.load(write_consistent(tmp_path / "old.npz", arrays, meta), backend="numpy")
    assert back.optimizer.nesterov is False
    assert net.train_step(X, y, net.optimizer) == back.train_step(X, y, back.optimizer)
    assert same_params(back, net)


@pytest.mark.parametrize("nesterov, momentum, words", [("yes", 0.9, "nesterov must be True or False"),
                                                       (True, 0.0, "Nesterov momentum needs a momentum")])
def test_an_impossible_nesterov_setting_is_refused_naming_the_field(tmp_path, nesterov, momentum, words):
    _, path, _, _ = trained(tmp_path, gpubp.optim.SGD(0.1, momentum=0.9))
    arrays, meta = read_all(path)
    meta["optimizer"]["hyper"].update(nesterov=nesterov, momentum=momentum)
    with pytest.raises(ValueError, match=f"optimizer.hyper.*{words}"):
        gpubp.MLP.load(write_consistent(tmp_path / "bad.npz", arrays, meta), backend="numpy")


def test_random_damage_gives_a_value_error_or_the_same_network(tmp_path):
    net, path, _, _ = trained(tmp_path, gpubp.optim.Adam(0.01))
    data = path.read_bytes()
    rng = np.random.default_rng(2024)
    bad = tmp_path / "damaged.npz"
    for trial in range(150):
        b = bytearray(data)
        if trial % 3 == 0:
            b = b[: rng.integers(0, len(b))]
        else:
            for _ in range(rng.integers(1, 4)):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
        bad.write_bytes(bytes(b))
        try:
            back = gpubp.MLP.load(bad, backend="numpy")
        except ValueError:
            continue
        assert same_params(back, net) and back.optimizer.t == net.optimizer.t   # damage outside the data


def test_no_array_data_is_read_before_the_configuration_is_checked(tmp_path, monkeypatch):
    arrays, meta = _adam_file(tmp_path)
    meta["config"]["loss"] = "hinge"
    bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
    read = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, *a, **k: (read.append(1), real(f, *a, **k))[1])
    with pytest.raises(ValueError, match="config.loss"):
        gpubp.MLP.load(bad, backend="numpy")
    assert len(read) == 1                       # the metadata only


def test_standardization_target_shape_and_init_come_back(tmp_path):
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((30, 3)) * 5 + 2, rng.standard_normal(30)
    net = gpubp.MLP([3, 4, 1], backend="numpy", seed=2, init="xavier")
    net.fit(X, y, epochs=1, batch_size=10, optimizer="sgd", progress=False, standardize=True)
    net.save(tmp_path / "s.npz")
    back = gpubp.MLP.load(tmp_path / "s.npz", backend="numpy")
    assert back.config() == net.config() and back.init == "xavier"
    assert back.target_ndim == net.target_ndim == 1
    for a, b in zip(back.standardization, net.standardization):
        assert np.array_equal(a, b)
    assert np.array_equal(back.predict(X), net.predict(X)) and back.predict(X).shape == (30,)


STANDARDIZED_MALFORMED = [
    ("bad-init", lambda a, m: m["config"].__setitem__("init", "orthogonal"), "config.init"),
    ("standardization-type", lambda a, m: m.__setitem__("standardization", "yes"), "'standardization'"),
    ("no-mean", lambda a, m: _pop(a, "input_mean"), "'input_mean'"),
    ("mean-shape", lambda a, m: a.__setitem__("input_mean", a["input_mean"][:2]), "'input_mean'.*shape"),
    ("std-zero", lambda a, m: a["input_std"].__setitem__(1, 0.0), "'input_std'.*<= 0"),
    ("mean-nan", lambda a, m: a["input_mean"].__setitem__(0, np.nan), "'input_mean'.*NaN"),
    ("target-ndim", lambda a, m: m.__setitem__("target_ndim", 3), "'target_ndim'"),
    ("target-ndim-400-digits", lambda a, m: m.__setitem__("target_ndim", 10 ** 400), r"'target_ndim'.*0\.\.\.$"),
    ("target-ndim-type", lambda a, m: m.__setitem__("target_ndim", "1"), "'target_ndim'"),
]


def _standardized_file(tmp_path):
    """The arrays and metadata of a small regression network saved with its input standardisation."""
    rng = np.random.default_rng(8)
    net = gpubp.MLP([3, 4, 1], backend="numpy", seed=2)
    net.fit(rng.standard_normal((20, 3)), rng.standard_normal(20), epochs=1, batch_size=10, optimizer="sgd",
            progress=False, standardize=True)
    net.save(tmp_path / "s.npz")
    return read_all(tmp_path / "s.npz")


@pytest.mark.parametrize("spoil, field", [m[1:] for m in STANDARDIZED_MALFORMED],
                         ids=[m[0] for m in STANDARDIZED_MALFORMED])
def test_malformed_standardization_fields_are_named(tmp_path, spoil, field):
    arrays, meta = _standardized_file(tmp_path)
    spoil(arrays, meta)
    with pytest.raises(ValueError, match=field):
        gpubp.MLP.load(write_consistent(tmp_path / "bad.npz", arrays, meta), backend="numpy")


# ----------------------------------------------------------------- strict JSON metadata
def write_meta_text(path, arrays, body):
    """A checkpoint whose metadata is the JSON text `body` (an object without `meta_sha256`), followed by
    the checksum a lenient reader computes of it: only a strict parser can tell the file is wrong."""
    from gpubp.checkpoint import _digest

    assert body.rstrip().endswith("}")
    try:
        digest = _meta_digest(json.loads(body))
    except RecursionError:          # too deep for Python's parser: no reader gets as far as the checksum
        digest = "0" * 64
    text = body.rstrip()[:-1] + f', "meta_sha256": "{digest}"}}'
    if digest != "0" * 64:
        assert all(json.loads(text)["sha256"][k] == _digest(v) for k, v in arrays.items())
    with open(path, "wb") as f:
        np.savez(f, **arrays, meta=np.frombuffer(text.encode(), dtype=np.uint8))
    return path


def _body(arrays, meta):
    from gpubp.checkpoint import _digest

    meta = dict(meta, sha256={k: _digest(v) for k, v in arrays.items()})
    meta.pop("meta_sha256", None)
    return json.dumps(meta)


@pytest.mark.parametrize("edit, why", [
    (lambda t: t.replace('"scale": 7.5', '"scale": 1e999'), "1e999 is not finite"),
    (lambda t: t.replace('"scale": 7.5', '"scale": -1e400'), "-1e400 is not finite"),
    (lambda t: t.replace('"lr": 0.01', '"lr": 1e999'), "1e999 is not finite"),
    (lambda t: '{"config": {"layer_sizes": [5, 8, 3]}, ' + t[1:], "key 'config' twice"),
    (lambda t: t.replace('"scale": 7.5', '"scale": 7.5, "scale": 8.5'), "key 'scale' twice"),
    (lambda t: t.replace('"scale": 7.5', '"scale": ' + "[" * 150 + "]" * 150), "deeper than 100 levels"),
    (lambda t: t.replace('"scale": 7.5', '"scale": ' + "[" * 100000 + "]" * 100000), "deeper than 100 levels"),
    (lambda t: t.replace('"scale": 7.5', '"scale": ' + '{"a": ' * 5000 + "1" + "}" * 5000),
     "deeper than 100 levels"),
], ids=["overflow-metadata", "overflow-negative", "overflow-lr", "duplicate-config", "duplicate-metadata-key",
        "nested-150", "nested-100000-lists", "nested-5000-objects"])
def test_metadata_that_only_a_lenient_parser_reads_is_refused(tmp_path, edit, why):
    """A number that overflows to infinity would load as inf (and the network could not be saved
    again); a duplicated key is read differently by different parsers; deep nesting crashed the
    reader with a RecursionError: each is a ValueError saying what is wrong."""
    net, path, _, _ = trained(tmp_path, gpubp.optim.Adam(0.01))
    net.save(path, metadata={"scale": 7.5})
    arrays, meta = read_all(path)
    body = _body(arrays, meta)
    assert '"scale": 7.5' in body and '"lr": 0.01' in body
    bad = write_meta_text(tmp_path / "bad.npz", arrays, edit(body))
    with pytest.raises(ValueError, match=f"not valid JSON.*{why}"):
        gpubp.MLP.load(bad, backend="numpy")
    # the same text without the edit loads: the helper writes files a strict reader accepts
    ok = write_meta_text(tmp_path / "ok.npz", arrays, body)
    assert gpubp.MLP.load(ok, backend="numpy").metadata == {"scale": 7.5}


@pytest.mark.parametrize("version", [True, 1.0, 2.0, "2", None, [2]], ids=repr)
def test_format_version_must_be_an_integer(tmp_path, version):
    """`true == 1` and `2.0 == 2` in Python: the version field's type is checked, not just its value."""
    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    arrays, meta = read_all(path)
    meta["version"] = version
    with pytest.raises(ValueError, match=f"format version {re.escape(repr(version))};"):
        gpubp.MLP.load(write_consistent(tmp_path / "v.npz", arrays, meta), backend="numpy")



@pytest.mark.parametrize("version", [3, 2 ** 70, 0, -1])
def test_a_file_of_a_future_format_version_says_so(tmp_path, version):
    """A file written by a newer gpubp (a version above those read) is refused saying to upgrade; one of
    an impossible version (0, negative) is just refused."""
    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    arrays, meta = read_all(path)
    meta["version"] = version
    with pytest.raises(ValueError, match=f"format version {version}; this gpubp reads versions 1, 2") as e:
        gpubp.MLP.load(write_consistent(tmp_path / "v.npz", arrays, meta), backend="numpy")
    assert ("newer gpubp wrote it: upgrade" in str(e.value)) == (version > 2)

def test_metadata_nesting_is_limited_when_saving_as_when_loading(tmp_path):
    from gpubp.checkpoint import MAX_META_DEPTH

    net = gpubp.MLP([3, 2], backend="numpy", seed=0)

    def nested(n, leaf=1):
        d = leaf
        for _ in range(n):
            d = [d]
        return d
    # the metadata sits two levels down in the file: {"metadata": {"x": ...}}
    net.save(tmp_path / "ok.npz", metadata={"x": nested(MAX_META_DEPTH - 2)})
    assert gpubp.MLP.load(tmp_path / "ok.npz", backend="numpy").metadata == {"x": nested(MAX_META_DEPTH - 2)}
    # the message gives the metadata's own limit, MAX_META_DEPTH - 1: {"x": nested(MAX_META_DEPTH - 1)} is
    # MAX_META_DEPTH levels deep, one too many, and not "deeper than MAX_META_DEPTH levels"
    for n in (MAX_META_DEPTH - 1, 5000):          # 5000 levels crashed json.dumps with a RecursionError
        with pytest.raises(TypeError, match=f"deeper than {MAX_META_DEPTH - 1} levels"):
            net.save(tmp_path / "deep.npz", metadata={"x": nested(n)})
        assert not (tmp_path / "deep.npz").exists()
    # a numpy array is saved as nested lists: its dimensions count
    net.save(tmp_path / "ok.npz", metadata={"x": nested(MAX_META_DEPTH - 5, np.zeros((1, 1, 1)))})
    with pytest.raises(TypeError, match=f"deeper than {MAX_META_DEPTH - 1} levels"):
        net.save(tmp_path / "deep.npz", metadata={"x": nested(MAX_META_DEPTH - 5, np.zeros((1, 1, 1, 1)))})
    assert not (tmp_path / "deep.npz").exists()
    cyclic = {"a": []}
    cyclic["a"].append(cyclic)
    with pytest.raises(TypeError, match="deeper than"):     # the format's own writer, given a cycle: no hang
        gpubp.checkpoint.write(tmp_path / "c.npz", {"x": np.zeros(2)}, {"m": cyclic})
    assert not (tmp_path / "c.npz").exists()


# ----------------------------------------------------------------- the shuffling generator's state
@pytest.mark.parametrize("kind", ["PCG64", "PCG64DXSM", "Philox", "SFC64"])
def test_every_bit_generator_state_comes_back_whole(tmp_path, kind):
    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    net._rng = np.random.Generator(getattr(np.random, kind)(12))
    net._rng.random(3)
    net._rng.integers(0, 2 ** 31, dtype=np.uint32)     # a buffered half word (has_uint32) where there is one
    net.save(tmp_path / "g.npz")
    back = gpubp.MLP.load(tmp_path / "g.npz", backend="numpy")
    assert type(back._rng.bit_generator).__name__ == kind
    from gpubp.network import _rng_state_for_file

    assert _rng_state_for_file(back._rng) == _rng_state_for_file(net._rng)
    assert np.array_equal(back._rng.permutation(50), net._rng.permutation(50))


def _philox_file(tmp_path):
    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    net._rng = np.random.Generator(np.random.Philox(5))
    net.save(tmp_path / "p.npz")
    return read_all(tmp_path / "p.npz")


RNG_MALFORMED = [
    # numpy takes it and indexes its 4-word buffer with it: the next shuffle read outside memory (a crash)
    ("philox-buffer-pos-negative", "Philox", lambda r: r.__setitem__("buffer_pos", -10 ** 6), "rng.buffer_pos"),
    ("philox-buffer-pos-large", "Philox", lambda r: r.__setitem__("buffer_pos", 400), "rng.buffer_pos"),
    ("philox-counter-short", "Philox", lambda r: r["state"].__setitem__("counter", [1, 2, 3]), "rng.state.counter"),
    ("philox-key-nested", "Philox", lambda r: r["state"].__setitem__("key", [[1], 2]), "rng.state.key"),
    ("philox-no-buffer", "Philox", lambda r: _pop(r, "buffer"), "rng"),
    # numpy converts these without a word: a float or a boolean is not a generator's state
    ("pcg-state-float", "PCG64", lambda r: r["state"].__setitem__("state", 1.5), "rng.state.state"),
    ("pcg-state-bool", "PCG64", lambda r: r["state"].__setitem__("state", True), "rng.state.state"),
    ("pcg-state-negative", "PCG64", lambda r: r["state"].__setitem__("state", -1), "rng.state.state"),
    ("pcg-inc-huge", "PCG64", lambda r: r["state"].__setitem__("inc", 2 ** 128), "rng.state.inc"),
    ("pcg-has-uint32", "PCG64", lambda r: r.__setitem__("has_uint32", 5), "rng.has_uint32"),
    ("pcg-uinteger", "PCG64", lambda r: r.__setitem__("uinteger", 2 ** 32), "rng.uinteger"),
    ("pcg-extra-field", "PCG64", lambda r: r.__setitem__("extra", 0), "rng"),
    ("pcg-state-list", "PCG64", lambda r: r.__setitem__("state", [1, 2]), "rng.state"),
]


@pytest.mark.parametrize("kind, spoil, field", [m[1:] for m in RNG_MALFORMED], ids=[m[0] for m in RNG_MALFORMED])
def test_an_impossible_generator_state_is_refused(tmp_path, kind, spoil, field):
    if kind == "Philox":
        arrays, meta = _philox_file(tmp_path)
    else:
        arrays, meta = read_all(trained(tmp_path, gpubp.optim.Adam())[1])
    assert meta["rng"]["bit_generator"] == kind
    spoil(meta["rng"])
    bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(ValueError, match=f"field '{re.escape(field)}'.*not a valid {kind} state"):
        gpubp.MLP.load(bad, backend="numpy")


@pytest.mark.parametrize("kind, spoil, want", [
    ("PCG64", lambda r: r.__setitem__("uinteger", 2 ** 32), "an integer in [0, 2**32)"),   # numpy's uint32
    ("PCG64", lambda r: r.__setitem__("has_uint32", 2), "an integer in [0, 2)"),
    ("PCG64", lambda r: r["state"].__setitem__("inc", -1), "an integer in [0, 2**128)"),
    ("Philox", lambda r: r.__setitem__("buffer_pos", 5), "an integer in [0, 5)"),
    ("Philox", lambda r: r["state"].__setitem__("counter", [1, 2, 3]), "a list of 4 integers in [0, 2**64)"),
    ("Philox", lambda r: r["state"].__setitem__("key", 7), "a list of 2 integers in [0, 2**64)"),
], ids=["uinteger", "has_uint32", "inc", "buffer_pos", "counter", "key"])
def test_a_refused_generator_field_says_what_it_must_be(tmp_path, kind, spoil, want):
    """The range each field of numpy's bit generator state holds (uint32, a flag, uint128, Philox's
    index into its 4-word buffer, uint64 words), written as powers of two from 2**32 up."""
    arrays, meta = _philox_file(tmp_path) if kind == "Philox" else read_all(trained(tmp_path, "adam")[1])
    spoil(meta["rng"])
    with pytest.raises(ValueError, match=f"must be {re.escape(want)}, got"):
        gpubp.MLP.load(write_consistent(tmp_path / "bad.npz", arrays, meta), backend="numpy")


_PCG64 = np.random.PCG64


def _set_converting(self, value):
    _PCG64.state.__set__(self, dict(value, uinteger=value["uinteger"] // 2))


def _refuse(self, value):
    raise ValueError("numpy says no")


# numpys whose PCG64 state setter refuses what it is given, or converts it (takes another number)
_NumpyRefuses = type("PCG64", (_PCG64,), {"state": property(_PCG64.state.__get__, _refuse)})
_NumpyConverts = type("PCG64", (_PCG64,), {"state": property(_PCG64.state.__get__, _set_converting)})


@pytest.mark.parametrize("fake, words", [(_NumpyRefuses, r"\(ValueError: numpy says no\)"),
                                         (_NumpyConverts, r"\(the generator does not take it as it is\)")],
                         ids=["refuses", "converts"])
def test_a_generator_state_numpy_refuses_or_changes_is_refused(tmp_path, monkeypatch, fake, words):
    """The generator state is given to numpy's own setter, then read back: a state the setter refuses, or
    one it takes as something else, is the file's error naming 'rng', never a generator other than the
    one saved (numpy's setters convert and check too little: docs/spec.md, "Checkpoints")."""
    arrays, meta = read_all(trained(tmp_path, "adam")[1])
    meta["rng"]["uinteger"] = 7
    path = write_consistent(tmp_path / "n.npz", arrays, meta)
    assert gpubp.MLP.load(path, backend="numpy")._rng.bit_generator.state["uinteger"] == 7
    monkeypatch.setattr(np.random, "PCG64", fake)
    with pytest.raises(ValueError, match=f"field 'rng': not a valid PCG64 state {words}"):
        gpubp.MLP.load(path, backend="numpy")


# ----------------------------------------------------------------- fields the constructor refuses
@pytest.mark.parametrize("state", [[1, "m"], [None, None], [{"m": 1}, "v"], [["m"], "v"]], ids=repr)
def test_optimizer_state_names_of_other_types_are_named(tmp_path, state):
    """sorted() of a list mixing types raised a TypeError out of load."""
    arrays, meta = _adam_file(tmp_path)
    meta["optimizer"]["state"] = state
    with pytest.raises(ValueError, match="field 'optimizer.state'"):
        gpubp.MLP.load(write_consistent(tmp_path / "bad.npz", arrays, meta), backend="numpy")


def _refused_before_any_array_is_read(monkeypatch, path, match):
    read = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, *a, **k: (read.append(1), real(f, *a, **k))[1])
    with pytest.raises(ValueError, match=match):
        gpubp.MLP.load(path, backend="numpy")
    assert len(read) == 1                       # the metadata only


@pytest.mark.parametrize("seed", [[1, 2], [0], 2.0, True, -1, "7"], ids=repr)
def test_a_seed_the_constructor_refuses_is_named_before_arrays_are_read(tmp_path, monkeypatch, seed):
    """A list seed passed the file's checks, then the constructor refused it after every array was
    read, in an error that did not name the field."""
    arrays, meta = _adam_file(tmp_path)
    meta["config"]["seed"] = seed
    bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
    _refused_before_any_array_is_read(monkeypatch, bad, "field 'config.seed': must be null or a non-negative integer")


def test_a_file_of_cross_entropy_on_one_output_is_refused_naming_the_loss(tmp_path, monkeypatch):
    """The constructor refuses 'cross_entropy' on one output since it learns nothing; a file saved
    before that is refused by load with a ValueError naming config.loss, before reading arrays."""
    with pytest.raises(ValueError, match="at least 2 outputs"):
        gpubp.MLP([3, 4, 1], loss="cross_entropy", backend="numpy")
    net = gpubp.MLP([3, 4, 1], loss="binary_cross_entropy", backend="numpy", seed=1)
    net.fit(np.eye(3), np.array([0, 1, 1]), epochs=1, batch_size=3, optimizer="adam", progress=False)
    net.save(tmp_path / "old.npz")
    arrays, meta = read_all(tmp_path / "old.npz")
    meta["config"]["loss"] = "cross_entropy"      # what an older gpubp wrote for such a network
    old = write_consistent(tmp_path / "old.npz", arrays, meta)
    _refused_before_any_array_is_read(monkeypatch, old, r"field 'config.loss': 'cross_entropy' needs at least 2 "
                                                         r"outputs.*binary_cross_entropy")


# ----------------------------------------------------------------- where a save goes
def test_saving_over_a_private_checkpoint_keeps_it_private(tmp_path):
    """The temporary file renamed over the target had the default mode: re-saving a 0600
    checkpoint made it 0644, readable by everyone."""
    import os
    import stat

    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    path = tmp_path / "private.npz"
    net.save(path)
    for mode in (0o600, 0o640, 0o444):
        os.chmod(path, mode)
        net.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == mode
    os.chmod(path, 0o4750)                         # read, write and execute bits only: no setuid copied
    net.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o750
    fresh = tmp_path / "new.npz"
    umask = os.umask(0o022)
    os.umask(umask)
    net.save(fresh)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask


def test_a_long_file_name_that_fits_can_be_saved(tmp_path):
    """The temporary file's name added 18 characters to the target's: a name of 240 characters
    (the limit is 255) could not be saved."""
    name = "n" * 236 + ".npz"
    net = gpubp.MLP([3, 2], backend="numpy", seed=4)
    net.save(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    assert same_params(gpubp.MLP.load(tmp_path / name, backend="numpy"), net)


def test_save_writes_exactly_the_path_given(tmp_path):
    net = gpubp.MLP([3, 2], backend="numpy", seed=4)
    net.save(str(tmp_path / "no_suffix"))
    net.save(tmp_path / "other.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no_suffix", "other.bin"]
    for name in ("no_suffix", "other.bin"):
        assert same_params(gpubp.MLP.load(tmp_path / name, backend="numpy"), net)


def test_an_unwritable_folder_is_named_and_the_previous_file_kept(tmp_path, monkeypatch):
    """The error named the hidden temporary file ('.net.npz.1a2b3c.tmp'), not the file saved."""
    import builtins
    import errno

    import gpubp.files

    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    path = tmp_path / "net.npz"
    net.save(path)
    before = path.read_bytes()

    def read_only(file, mode="r", *a, **k):        # what a read-only folder answers (as root, chmod is not enough)
        if "x" in mode or "w" in mode:
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return builtins.open(file, mode, *a, **k)
    monkeypatch.setattr(gpubp.files, "open", read_only, raising=False)
    with pytest.raises(PermissionError) as e:
        gpubp.MLP([3, 2], backend="numpy", seed=1).save(path)
    assert e.value.filename == str(path) and e.value.errno == errno.EACCES
    assert "Permission denied" in str(e.value) and str(tmp_path) in str(e.value) and ".tmp" not in str(e.value)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["net.npz"]


def test_a_read_only_folder_really_refuses(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    net.save(folder / "net.npz")
    before = (folder / "net.npz").read_bytes()
    os.chmod(folder, 0o555)
    try:
        with pytest.raises(PermissionError) as e:
            net.save(folder / "net.npz")
        assert e.value.filename == str(folder / "net.npz")
    finally:
        os.chmod(folder, 0o755)
    assert (folder / "net.npz").read_bytes() == before and [p.name for p in folder.iterdir()] == ["net.npz"]


def test_concurrent_saves_to_one_path_leave_one_whole_file(tmp_path):
    import threading

    path = tmp_path / "shared.npz"
    nets = [gpubp.MLP([4, 6, 3], backend="numpy", seed=s) for s in range(4)]
    errors = []

    def save_many(net):
        try:
            for _ in range(15):
                net.save(path)
        except Exception as e:      # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=save_many, args=(n,)) for n in nets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.npz"]     # no temporary left
    back = gpubp.MLP.load(path, backend="numpy")
    assert back.seed in range(4) and same_params(back, nets[back.seed])


def test_a_save_replacing_the_file_while_it_is_loaded_gives_the_old_network(tmp_path, monkeypatch):
    """A save lands (os.replace) after load has opened the file and measured it, before it reads the
    archive: load reads the one file it opened, the old network, not the new file's members checked
    against the old file's size (which called a whole file damaged)."""
    path = tmp_path / "net.npz"
    old = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    old.save(path)
    gpubp.MLP([3, 64, 2], backend="numpy", seed=1).save(tmp_path / "new.npz")
    real = zipfile.ZipFile

    def racing(*args, **kw):
        monkeypatch.setattr(zipfile, "ZipFile", real)
        (tmp_path / "new.npz").replace(path)       # the concurrent save lands now
        return real(*args, **kw)

    monkeypatch.setattr(zipfile, "ZipFile", racing)
    back = gpubp.MLP.load(path, backend="numpy")
    assert back.sizes == (3, 4, 2) and same_params(back, old)
    assert gpubp.MLP.load(path, backend="numpy").sizes == (3, 64, 2)


# ----------------------------------------------------------------- exact resumes, every configuration
RESUMES = [
    ("sgd-f32", dict(), lambda: gpubp.optim.SGD(0.05)),
    ("sgd-wd-f64", dict(dtype="float64"), lambda: gpubp.optim.SGD(0.05, momentum=0.8, weight_decay=0.01)),
    ("adam-tf32", dict(precision="tf32"), lambda: gpubp.optim.Adam(0.01, betas=(0.8, 0.99), eps=1e-6)),
    ("adamw-bf16", dict(precision="bf16"), lambda: gpubp.optim.AdamW(0.01, weight_decay=0.05)),
    ("adam-3xtf32", dict(precision="3xtf32", init="kaiming"), lambda: gpubp.optim.Adam(0.01)),
    ("sgd-xavier-seed0", dict(seed=0, init="xavier"), lambda: gpubp.optim.SGD(0.05, momentum=0.9)),
    ("sgd-nesterov", dict(seed=4), lambda: gpubp.optim.SGD(0.05, momentum=0.9, nesterov=True)),
    ("adam-bigseed", dict(seed=2 ** 90 + 1), lambda: gpubp.optim.Adam(0.01)),
]


@pytest.mark.parametrize("kw, make_opt", [r[1:] for r in RESUMES], ids=[r[0] for r in RESUMES])
@pytest.mark.parametrize("task", ["regression-2d", "regression-1d", "multiclass", "binary"])
def test_fit_save_load_fit_is_one_fit_bitwise(tmp_path, kw, make_opt, task):
    rng = np.random.default_rng(17)
    X = rng.standard_normal((37, 4)) * 3 + 1
    n_out, loss, Y = {"regression-2d": (2, "mse", rng.standard_normal((37, 2))),
                      "regression-1d": (1, "half_sse", rng.standard_normal(37)),
                      "multiclass": (3, "cross_entropy", rng.integers(0, 3, 37)),
                      "binary": (1, "binary_cross_entropy", rng.integers(0, 2, 37))}[task]
    kw = dict(dict(seed=9), **kw)      # both halves start alike (seed None: test_a_seedless_network_...)

    def fresh():
        return gpubp.MLP([4, 6, 5, n_out], activation=["silu", "leaky_relu"], loss=loss, backend="numpy", **kw)

    def fit(net, opt, epochs, standardize):
        net.fit(X, Y, epochs=epochs, batch_size=8, optimizer=opt, shuffle=True, progress=False,
                standardize=standardize)
    whole = fresh()
    fit(whole, make_opt(), 3, True)
    first = fresh()
    fit(first, make_opt(), 1, True)
    first.save(tmp_path / "half.npz", metadata={"task": task, "n": 1, "x": 0.5, "ok": True, "none": None,
                                                  "list": [1, "a", [2.5]], "nested": {"a": {"b": []}}})
    back = gpubp.MLP.load(tmp_path / "half.npz", backend="numpy")
    assert back.config() == first.config() and back.precision == first.precision
    assert back.target_ndim == (2 if task == "regression-2d" else 1) == whole.target_ndim
    assert back.metadata == {"task": task, "n": 1, "x": 0.5, "ok": True, "none": None, "list": [1, "a", [2.5]],
                             "nested": {"a": {"b": []}}}
    assert type(back.optimizer) is type(whole.optimizer) and back.optimizer.hyper() == whole.optimizer.hyper()
    fit(back, back.optimizer, 2, False)
    assert back.optimizer.t == whole.optimizer.t
    assert same_params(back, whole)
    for k in whole.optimizer.state:
        assert np.array_equal(back.optimizer.state[k], whole.optimizer.state[k])
    assert np.array_equal(back.predict(X), whole.predict(X)) and back.predict(X).shape == whole.predict(X).shape


def test_a_seedless_network_resumes_exactly(tmp_path):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((30, 3)), rng.integers(0, 2, 30)
    net = gpubp.MLP([3, 5, 2], loss="cross_entropy", backend="numpy", seed=None)
    net.fit(X, y, epochs=1, batch_size=7, optimizer="adam", progress=False)
    net.save(tmp_path / "s.npz")
    back = gpubp.MLP.load(tmp_path / "s.npz", backend="numpy")
    assert back.seed is None
    for n in (net, back):
        n.fit(X, y, epochs=2, batch_size=7, optimizer=n.optimizer, progress=False)
    assert same_params(back, net)



def test_a_scheduled_fit_resumes_exactly_with_the_schedule_offset_by_the_steps_taken(tmp_path):
    """A schedule counts steps from 1 in each fit call (docs/spec.md): the checkpoint holds no schedule
    position, so a resumed fit restarts it, and the documented recipe (the schedule offset by the steps
    already taken, `net.optimizer.t`) gives bitwise one uninterrupted fit."""
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((29, 3)), rng.integers(0, 3, 29)
    sched = gpubp.schedules.cosine(0.05, total_steps=5 * 4, warmup_steps=3)

    def fresh():
        return gpubp.MLP([3, 6, 3], loss="cross_entropy", backend="numpy", seed=3)

    def fit(net, epochs, schedule):
        net.fit(X, y, epochs=epochs, batch_size=8, optimizer="adam", lr_schedule=schedule, progress=False)
    whole = fresh()
    fit(whole, 5, sched)
    first = fresh()
    fit(first, 2, sched)
    first.save(tmp_path / "half.npz")
    done = gpubp.MLP.load(tmp_path / "half.npz", backend="numpy").optimizer.t
    assert done == 2 * 4
    restarted, resumed = (gpubp.MLP.load(tmp_path / "half.npz", backend="numpy") for _ in range(2))
    fit(restarted, 3, sched)                                   # the schedule starts again at its warm-up
    fit(resumed, 3, lambda step: sched(step + done))           # the recipe of the docs
    assert same_params(resumed, whole) and resumed.optimizer.lr == whole.optimizer.lr
    assert not same_params(restarted, whole)


# ----------------------------------------------------------------- bounded fuzzing
ODD_VALUES = [None, True, False, -1, 0, 3, 2 ** 70, -2 ** 70, 1.5, -0.0, 1e308, "x", "", [], {}, [1, "a"],
              [None], {"a": 1}, ["relu"], [[]], "PCG64"]
_DELETE = object()


def _leaf_paths(obj, prefix=()):
    """Every key path into dicts and lists of `obj`, the containers' own paths included."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _leaf_paths(v, prefix + (k,))


def _set_path(obj, path, value):
    for k in path[:-1]:
        obj = obj[k]
    if value is _DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def _loads_sanely_or_value_error(path, X, y):
    try:
        net = gpubp.MLP.load(path, backend="numpy")
    except ValueError:
        return False
    # what loaded must also run: a state numpy takes but cannot use would fail (or crash) here
    assert net.sizes == (5, 7, 3) and net.loss == "cross_entropy"
    try:
        with np.errstate(all="ignore"):
            net.fit(X, y, epochs=1, batch_size=7, optimizer=net.optimizer or "sgd", shuffle=True, progress=False)
    except FloatingPointError:      # a learning rate of 1e308 is valid, and diverges as documented
        pass
    net.save(path.with_name("again.npz"))           # and save again
    return True


def test_every_metadata_field_with_every_odd_value_is_loaded_or_refused_clearly(tmp_path):
    """Each field of a valid file (nested ones, list items and containers included) replaced by
    values of every JSON type, or deleted, with consistent checksums: load raises a ValueError or
    gives a network that trains and saves; never another exception."""
    import copy

    net, path, X, y = trained(tmp_path, gpubp.optim.Adam(0.01))
    net.save(path, metadata={"note": "x", "list": [1, 2]})
    arrays, meta = read_all(path)
    paths = [p for p in _leaf_paths(meta) if p[0] not in ("sha256", "meta_sha256")]
    assert len(paths) > 30
    bad = tmp_path / "fuzz.npz"
    loaded = 0
    for p in paths:
        for value in ODD_VALUES + [_DELETE]:
            m = copy.deepcopy(meta)
            _set_path(m, p, value)
            write_consistent(bad, arrays, m)
            try:
                loaded += _loads_sanely_or_value_error(bad, X, y)
            except Exception as e:
                raise AssertionError(f"{'.'.join(map(str, p))} = {value!r}: {type(e).__name__}: {e}") from e
    assert 0 < loaded < len(paths) * len(ODD_VALUES) // 4     # most odd values are refused, a few are fine


def test_rewritten_archives_are_refused_quickly_and_clearly(tmp_path):
    """Members missing, extra, twice, directories, symbolic links, other compressions, encrypted,
    sizes the file cannot hold, a zip bomb, and .npy headers of other dtypes, orders and huge
    shapes: each a ValueError naming the problem, in well under a second, nothing large allocated."""
    import time
    import tracemalloc

    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    with zipfile.ZipFile(path) as z:
        ent = {n: z.read(n) for n in z.namelist()}
    base = list(ent.items())
    params = np.load(io.BytesIO(ent["params.npy"]))
    n = params.size

    def with_params(member):
        return [(k, member if k == "params.npy" else v) for k, v in base]
    cases = [
        (_zip([e for e in base if e[0] != "opt.m.npy"]), r"lists arrays .* but holds"),
        (_zip(base + [("extra.npy", ent["opt.m.npy"])]), r"holds \[.*'extra'"),
        (_zip(base + [("params.npy", ent["params.npy"])]), "twice"),
        (_zip(base + [("models/", b"")]), "not a numpy array"),
        (_zip(base + [("../../etc/x.npy", ent["opt.m.npy"])]), r"'\.\./\.\./etc/x'"),
        (_zip(base + [("link.npy", b"/etc/passwd", 0o120777 << 16)]), r"holds \['link'"),
        (_zip(base, zipfile.ZIP_BZIP2), "unsupported compression"),
        (_zip(base, zipfile.ZIP_LZMA), "unsupported compression"),
        (_patch_central(_zip(base), "params.npy", 8, "<H", 1), "'params' has no readable header.*encrypted"),
        (_patch_central(_zip(base), "params.npy", 24, "<I", 0xFFFFFFF0), "'params.npy' claims 4294967280 bytes"),
        (_patch_central(_zip(base), "params.npy", 42, "<I", 0xFFFFFFF0), "'params.npy' claims"),
        (_patch_central(_zip(base, zipfile.ZIP_DEFLATED), "params.npy", 24, "<I", 2 ** 31), "'params.npy' claims"),
        (_zip(with_params(_npy("<f8", (10 ** 12,)))), r"'params' claims shape \(1000000000000,\)"),
        (_zip(with_params(_npy("<f8", (10 ** 12,))), zipfile.ZIP_DEFLATED), "'params' claims shape"),
        (_zip(with_params(_npy("<f8", (-1, -n), params.tobytes()))), r"'params' has shape \(-1, -"),
        (_zip(with_params(_npy("|O", (n,), params.tobytes()))), "'params' has dtype object"),
        (_zip(with_params(_npy("<f2", (4 * n,), params.tobytes()))), "'params' has dtype float16"),
        (_zip(with_params(_npy(">f8", (n,), params.byteswap().tobytes()))), r"'params' has .*dtype >f8"),
        (_zip(with_params(_npy([("a", "<f8")], (n,), params.tobytes()))), r"'params' has dtype \[\('a'"),
        (_zip(with_params(_npy("<f8", (n, 1), params.tobytes(), fortran=True))), "Fortran order"),
        (_zip(with_params(_npy("<c16", (n // 2,), params.tobytes()))), "'params' has dtype complex128"),
        (_zip(with_params(b"\x93NUMPY\x03\x00" + _npy("<f8", (n,), params.tobytes())[8:])), "npy version"),
        (_zip(with_params(b"\x93NUMPY\x01\x00\xff\xff{" + b" " * 65534 + params.tobytes())), "no readable header"),
        (_zip(with_params(_npy("<f8", (n,))[:10] + b"__import__('os').system('false')" + b" " * 90)),
         "no readable header"),
    ]
    bomb = io.BytesIO()                  # 200 MB of zeros in a 200 KB file, under a header of 160 numbers
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in base:
            if k != "params.npy":
                z.writestr(k, v)
        with z.open("params.npy", "w", force_zip64=True) as f:
            f.write(_npy("<f8", (n,)))
            for _ in range(200):
                f.write(bytes(2 ** 20))
    cases.append((bomb.getvalue(), r"'params' claims shape .* but its member holds 2097152\d\d bytes"))
    bad = tmp_path / "bad.npz"
    for data, why in cases:
        bad.write_bytes(data)
        tracemalloc.start()
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=f"not a usable gpubp checkpoint: .*{why}"):
            gpubp.MLP.load(bad, backend="numpy")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert time.perf_counter() - t0 < 1.0 and peak < 8 * 2 ** 20, why


def test_bounded_byte_fuzzing_gives_a_value_error_or_the_same_network(tmp_path):
    """A few hundred mutations of a valid file (cut, flipped, inserted bytes, 2- and 4-byte fields
    of the zip records set to extremes): a ValueError or the very same network, never another
    exception, never other parameters."""
    import struct

    net, path, _, _ = trained(tmp_path, gpubp.optim.AdamW(0.01))
    for compressed in (False, True):
        if compressed:                      # the same members deflated
            arrays, meta = read_all(path)
            with open(path, "wb") as f:
                np.savez_compressed(f, **arrays, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
            assert same_params(gpubp.MLP.load(path, backend="numpy"), net)
        data = path.read_bytes()
        rng = np.random.default_rng(7 + compressed)
        bad = tmp_path / "fuzzed.npz"
        outcomes = {"refused": 0, "same": 0}
        for trial in range(300):
            b = bytearray(data)
            kind = trial % 5
            if kind == 0:
                b = b[: rng.integers(0, len(b))]
            elif kind == 1:
                for _ in range(rng.integers(1, 4)):
                    b[rng.integers(0, len(b))] = rng.integers(0, 256)
            elif kind == 2:
                i = rng.integers(0, len(b))
                b[i:i] = rng.integers(0, 256, rng.integers(1, 20), dtype=np.uint8).tobytes()
            elif kind == 3:
                i = rng.integers(0, len(b) - 4)
                b[i:i + 4] = struct.pack("<I", int(rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000])))
            else:
                i = rng.integers(0, len(b) - 2)
                b[i:i + 2] = struct.pack("<H", int(rng.choice([0, 8, 12, 99, 0xFFFF])))
            bad.write_bytes(bytes(b))
            try:
                back = gpubp.MLP.load(bad, backend="numpy")
            except ValueError:
                outcomes["refused"] += 1
                continue
            except Exception as e:
                raise AssertionError(f"trial {trial} (kind {kind}): {type(e).__name__}: {e}") from e
            outcomes["same"] += 1
            assert same_params(back, net) and back.optimizer.t == net.optimizer.t
            for k in net.optimizer.state:
                assert np.array_equal(back.optimizer.state[k], net.optimizer.state[k])
        assert outcomes["refused"] > 200, outcomes


def test_a_fifo_or_device_is_refused_without_waiting(tmp_path):
    """A named pipe made load wait forever in open() for a writer; a pipe (`<(cat net.npz)`)
    raised io.UnsupportedOperation: neither can hold a zip archive, which needs seeking."""
    import os
    import subprocess
    import sys

    fifo = tmp_path / "net.npz"
    os.mkfifo(fifo)
    code = ("import gpubp, sys\n"
            "try:\n    gpubp.MLP.load(sys.argv[1], backend='numpy')\n"
            "except ValueError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60)
    assert "refused:" in out.stdout and "not a regular file" in out.stdout, out
    with pytest.raises(ValueError, match="not a regular file"):
        gpubp.MLP.load("/dev/null", backend="numpy")
    r, w = os.pipe()
    try:
        os.write(w, b"PK\x03\x04")
        with pytest.raises(ValueError, match="not a regular file"):
            gpubp.MLP.load(f"/dev/fd/{r}", backend="numpy")
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(IsADirectoryError):
        gpubp.MLP.load(tmp_path, backend="numpy")


# ----------------------------------------------------------------- gpubp predict's loading
def test_predict_reports_checkpoint_problems_without_a_traceback(tmp_path, capsys, monkeypatch):
    """A checkpoint whose network does not fit the backend's free memory (the constructor's
    MemoryError) came out of `gpubp predict` as a traceback; train reports it as a usage error."""
    from gpubp import cli
    from gpubp.backends.numpy_backend import NumpyBackend

    net = gpubp.MLP([4, 8, 3], loss="cross_entropy", backend="numpy", seed=0)
    net.save(tmp_path / "net.npz")
    np.save(tmp_path / "x.npy", np.zeros((2, 4)))
    arrays, meta = read_all(tmp_path / "net.npz")
    meta["rng"]["buffer_pos"] = 3
    write_consistent(tmp_path / "bad.npz", arrays, meta)
    monkeypatch.setattr(NumpyBackend, "free_memory", lambda self: 1000, raising=False)
    for ckpt, why in (("net.npz", "need [0-9,]+ bytes, but only 1,000 bytes"), ("bad.npz", "field 'rng'")):
        with pytest.raises(SystemExit) as e:
            cli.main(["predict", str(tmp_path / ckpt), str(tmp_path / "x.npy"), "--backend", "numpy"])
        out, err = capsys.readouterr()
        assert e.value.code == 2 and re.search(why, err) and "Traceback" not in out + err, err


@pytest.mark.parametrize("metadata, key", [({0: "cat", 1: "dog"}, "0"), ({1: "a", "1": "b"}, "1"),
                                           ({"classes": {2.5: "x"}}, "2.5"), ({"a": [{None: 1}]}, "None"),
                                           ({"a": [{True: 1}]}, "True")], ids=["int", "int-and-str", "float",
                                                                            "none", "bool"])
def test_metadata_keys_must_be_strings(tmp_path, metadata, key):
    """JSON turned {0: 'cat'} into {'0': 'cat'} and {1: 'a', '1': 'b'} into {'1': 'b'}: the network
    loaded with other metadata than it was saved with. Now save says so, and writes nothing."""
    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    with pytest.raises(TypeError, match=f"metadata keys must be strings.*use '{re.escape(key)}'"):
        net.save(tmp_path / "m.npz", metadata=metadata)
    assert not (tmp_path / "m.npz").exists()
    net.metadata = metadata
    with pytest.raises(TypeError, match="metadata keys must be strings"):
        net.save(tmp_path / "m.npz")
    cyclic = {"a": []}
    cyclic["a"].append(cyclic)
    with pytest.raises(TypeError, match="metadata must"):
        net.save(tmp_path / "m.npz", metadata=cyclic)


def test_save_refuses_what_load_would_refuse_and_keeps_the_good_file(tmp_path):
    """An update that overflowed left infinite parameters (train_step reports it at its next call);
    save wrote them over the last good checkpoint, and load then refused that file."""
    import warnings

    net = gpubp.MLP([2, 3, 1], backend="numpy", seed=0)
    X, y = np.full((4, 2), 100.0), np.full(4, 1e3)
    path = tmp_path / "net.npz"
    net.save(path)
    before = path.read_bytes()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        net.train_step(X, y, gpubp.optim.SGD(1e38, momentum=0.5))   # the loss is finite, the update is not
    assert not all(np.isfinite(W).all() for W, _ in net.get_params())
    with pytest.raises(ValueError, match="array 'params' holds NaN or infinite values.*left as it was"):
        net.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["net.npz"]
    net.set_params(gpubp.MLP([2, 3, 1], backend="numpy", seed=1).get_params())   # finite again
    net.optimizer.state["velocity"][0] = np.inf
    with pytest.raises(ValueError, match="array 'opt.velocity' holds NaN or infinite"):
        net.save(path)
    assert path.read_bytes() == before


def test_save_writes_only_seeds_that_load_accepts(tmp_path):
    """save wrote a list seed (set after construction) that load then refused."""
    net = gpubp.MLP([3, 2], backend="numpy", seed=1)
    net.seed = [1, 2]
    with pytest.raises(ValueError, match=r"seed \[1, 2\] cannot be saved"):
        net.save(tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()
    net.seed = np.uint64(2 ** 64 - 1)
    net.save(tmp_path / "s.npz")
    assert gpubp.MLP.load(tmp_path / "s.npz", backend="numpy").seed == 2 ** 64 - 1



@pytest.mark.parametrize("make_opt", [lambda: gpubp.optim.Adam(0.01), lambda: gpubp.optim.SGD(0.1, momentum=0.9),
                                      lambda: gpubp.optim.AdamW(0.02), lambda: gpubp.optim.SGD(0.1)])
def test_an_assigned_optimizer_not_yet_bound_is_saved_as_a_fresh_one(tmp_path, make_opt):
    """`net.optimizer` is a plain attribute: one assigned and never stepped has no state buffers yet, and
    save wrote a file listing none, which load refused ("optimizer.state [] does not fit Adam(...)").
    It is saved with the state binding would give it (zeros), and trains on as the assigned one."""
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((20, 3)), rng.integers(0, 2, 20)
    net = gpubp.MLP([3, 4, 2], loss="cross_entropy", backend="numpy", seed=0)
    net.optimizer = make_opt()
    net.save(tmp_path / "n.npz")
    back = gpubp.MLP.load(tmp_path / "n.npz", backend="numpy")
    assert type(back.optimizer) is type(net.optimizer) and back.optimizer.hyper() == net.optimizer.hyper()
    for n in (net, back):
        n.fit(X, y, epochs=2, batch_size=6, optimizer=n.optimizer, progress=False)
    assert same_params(back, net)


def test_save_refuses_an_optimizer_load_would_refuse_and_writes_nothing(tmp_path):
    """An optimizer assigned to `net.optimizer` that holds another network's state (or is not gpubp's, or
    has an eps the network's dtype rounds to 0) was written (or failed with an AttributeError): load would
    give this network the other's moments, or refuse the file."""
    rng = np.random.default_rng(2)
    net = gpubp.MLP([3, 4, 2], backend="numpy", seed=0)
    other = gpubp.MLP([3, 4, 2], backend="numpy", seed=1)
    other.train_step(rng.standard_normal((5, 3)), rng.standard_normal((5, 2)), "adam")
    for opt, exc, words in [(other.optimizer, ValueError, "state of another network"),
                            (gpubp.optim.Adam(eps=1e-50), ValueError, "rounds to 0 in float32"),
                            ("adam", TypeError, "not one of gpubp's")]:
        net.optimizer = opt
        with pytest.raises(exc, match=f"{words}.*left as it was"):
            net.save(tmp_path / "n.npz")
        assert not (tmp_path / "n.npz").exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ndim, saved", [(np.int64(1), 1), (np.int32(2), 2), (None, None), (3, None), (0, None),
                                         (True, None), ("1", None), (1.0, None)])
def test_save_writes_only_a_target_ndim_that_load_accepts(tmp_path, ndim, saved):
    """`target_ndim` is a plain attribute: a numpy integer failed inside json ("int64 is not JSON
    serializable") and 3, True or "1" were written into files that load refused."""
    net = gpubp.MLP([3, 1], backend="numpy", seed=1)
    net.target_ndim = ndim
    if ndim is not None and saved is None:
        with pytest.raises(ValueError, match="target_ndim .* cannot be saved: it must be None, 1 or 2"):
            net.save(tmp_path / "t.npz")
        assert not (tmp_path / "t.npz").exists()
        return
    net.save(tmp_path / "t.npz")
    back = gpubp.MLP.load(tmp_path / "t.npz", backend="numpy")
    assert back.target_ndim == saved and back.predict(np.ones((2, 3))).shape == ((2,) if saved == 1 else (2, 1))

def test_a_small_file_claiming_millions_of_layers_is_refused_at_once(tmp_path):
    """A 6 MB file of layer_sizes [5, 1, 1, ..., 3] (10**6 layers) took seconds to refuse (a 60 MB one,
    a minute): its layout was worked out, layer by layer, before the parameters' length was compared."""
    import time

    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    arrays, meta = read_all(path)
    meta["config"].update(layer_sizes=[5] + [1] * 10 ** 6 + [3], activation="relu")
    del meta["shapes"]
    bad = write_consistent(tmp_path / "deep.npz", arrays, meta)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"field 'config.layer_sizes': 1000001 layers need at least 64000064 "
                                         r"numbers, but array 'params' holds 160"):
        gpubp.MLP.load(bad, backend="numpy")
    assert time.perf_counter() - t0 < 10.0      # about 0.3 s on an idle machine (the JSON text is parsed)


def test_an_archive_of_many_members_is_refused_before_their_headers_with_a_short_message(tmp_path,
                                                                                          monkeypatch):
    """Every member's .npy header was read before the metadata's list of arrays was compared (100,000
    members: 6 s), and the error listed every name (a message of 100,000 names)."""
    _, path, _, _ = trained(tmp_path, gpubp.optim.Adam())
    with zipfile.ZipFile(path) as z:
        base = [(n, z.read(n)) for n in z.namelist()]
    empty = io.BytesIO()
    np.save(empty, np.zeros(0, np.uint8))
    many = _zip(base + [(f"x{i}.npy", empty.getvalue()) for i in range(20000)])
    (tmp_path / "many.npz").write_bytes(many)
    import gpubp.checkpoint as ckmod

    headers = []
    real = ckmod.Checkpoint._header
    monkeypatch.setattr(ckmod.Checkpoint, "_header", lambda self, name: (headers.append(name), real(self, name))[1])
    with pytest.raises(ValueError, match=r"lists arrays \['opt.m', 'opt.v', 'params'\] but holds \[.*, \.\.\. "
                                         r"\(20003 in all\)\]$") as e:
        gpubp.MLP.load(tmp_path / "many.npz", backend="numpy")
    assert headers == ["meta"] and len(str(e.value)) < 300


def test_fields_an_older_file_lacks_load_as_their_defaults(tmp_path):
    """A file written before `standardization`, `target_ndim`, `precision`, `init` and `shapes` were
    saved loads as a network without standardisation, of unknown target shape, in "float32" (docs/spec.md,
    "Checkpoints") and with the default "torch" init."""
    rng = np.random.default_rng(4)
    net = gpubp.MLP([3, 4, 2], backend="numpy", dtype="float64", seed=1, init="xavier")
    net.fit(rng.standard_normal((12, 3)), rng.standard_normal((12, 2)), epochs=1, batch_size=4,
            optimizer="adam", progress=False)
    net.save(tmp_path / "new.npz")
    arrays, meta = read_all(tmp_path / "new.npz")
    assert meta["config"]["init"] == "xavier" and meta["target_ndim"] == 2
    for key in ("standardization", "target_ndim", "shapes"):
        del meta[key]
    for key in ("precision", "init"):
        del meta["config"][key]
    back = gpubp.MLP.load(write_consistent(tmp_path / "old.npz", arrays, meta), backend="numpy")
    assert back.standardization is None and back.target_ndim is None
    assert back.precision == "float32" and back.init == "torch"
    assert same_params(back, net) and back.optimizer.t == net.optimizer.t == 3


@pytest.mark.parametrize("t, ok", [(0, True), (2 ** 31 - 1, True), (2 ** 31, False), (-1, False)])
def test_the_optimizer_step_count_must_lie_in_int32(tmp_path, t, ok):
    """The step count is kept as an int32 on the device (`adam_update`'s `step`): [0, 2**31) loads,
    and comes back as it was; one more is refused naming the field."""
    arrays, meta = _adam_file(tmp_path)
    meta["optimizer"]["t"] = t
    path = write_consistent(tmp_path / "t.npz", arrays, meta)
    if ok:
        assert gpubp.MLP.load(path, backend="numpy").optimizer.t == t
    else:
        with pytest.raises(ValueError, match=r"field 'optimizer.t'.*\[0, 2\*\*31\)"):
            gpubp.MLP.load(path, backend="numpy")


@pytest.mark.parametrize("name, value, words", [("input_std", 1e-300, "std is too small for a float32"),
                                                ("input_mean", 1e300, "mean")])
def test_a_standardization_the_network_refuses_is_refused_not_dropped(tmp_path, name, value, words):
    """input_mean / input_std are float64 in the file: finite and positive there, but a float32 network
    cannot use every such value (set_standardization refuses them); such a file is refused, not loaded
    without its standardisation."""
    arrays, meta = _standardized_file(tmp_path)
    arrays[name][1] = value
    with pytest.raises(ValueError, match=f"configuration is refused.*{words}"):
        gpubp.MLP.load(write_consistent(tmp_path / "bad.npz", arrays, meta), backend="numpy")


@pytest.mark.parametrize("name, bad", [("opt.v", lambda a: a[:-1]), ("opt.m", lambda a: a.astype(np.float32))])
def test_every_array_header_is_checked_before_any_array_is_read(tmp_path, monkeypatch, name, bad):
    """load's promise: every array's shape and dtype from the archive's headers, before any data is read
    (not `params` read, then the optimizer state's header found wrong)."""
    arrays, meta = _adam_file(tmp_path)
    arrays[name] = bad(arrays[name])
    path = write_consistent(tmp_path / "bad.npz", arrays, meta)
    read = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, *a, **k: (read.append(1), real(f, *a, **k))[1])
    with pytest.raises(ValueError, match=f"array '{name}' has shape"):
        gpubp.MLP.load(path, backend="numpy")
    assert len(read) == 1                       # the metadata only


def test_the_quick_layer_count_check_is_exact_at_its_bound(tmp_path):
    """Each layer takes at least 2 * ALIGN numbers (its W and b segments, each padded to ALIGN): a
    [1, 1, 1] network fills exactly 4 * ALIGN and loads; a file of it claiming a third layer is refused at
    once naming `config.layer_sizes` (not later by the shapes or the length of `params`)."""
    from gpubp.params import ALIGN

    net = gpubp.MLP([1, 1, 1], backend="numpy", seed=0)
    net.save(tmp_path / "n.npz")
    arrays, meta = read_all(tmp_path / "n.npz")
    assert arrays["params"].shape == (4 * ALIGN,)
    assert same_params(gpubp.MLP.load(tmp_path / "n.npz", backend="numpy"), net)
    meta["config"]["layer_sizes"] = [1, 1, 1, 1]
    with pytest.raises(ValueError, match=rf"field 'config.layer_sizes': 3 layers need at least {6 * ALIGN} "
                                         rf"numbers, but array 'params' holds {4 * ALIGN}"):
        gpubp.MLP.load(write_consistent(tmp_path / "bad.npz", arrays, meta), backend="numpy")


def _lion():
    class Lion(gpubp.optim.SGD):     # a user's optimizer: gpubp's class, a name load does not know
        name = "lion"
    return Lion(0.1)


@pytest.mark.parametrize("make", [_lion, lambda: type("Duck", (), {"name": "adam", "state_names": ()})()],
                         ids=["unknown-name", "not-an-optimizer"])
def test_save_refuses_an_optimizer_that_is_not_gpubps_on_either_count(tmp_path, make):
    """Either is enough: an Optimizer whose name load does not know, or an object of another class that
    calls itself "adam"; nothing is written."""
    net = gpubp.MLP([3, 2], backend="numpy", seed=0)
    net.optimizer = make()
    with pytest.raises(TypeError, match="is not one of gpubp's.*left as it was"):
        net.save(tmp_path / "n.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out_act", ["relu", "sigmoid"])
def test_a_poisson_checkpoint_with_an_output_activation_is_refused(tmp_path, out_act):
    """poisson fuses the exp into the loss (losses.FUSED_OUTPUT), so a file whose config gives it an
    output activation is refused on loading, naming the field and why, as the constructor refuses it."""
    net = gpubp.MLP([2, 3, 1], loss="poisson", backend="numpy", seed=0, dtype="float64")
    net.save(tmp_path / "p.npz")
    arrays, meta = read_all(tmp_path / "p.npz")
    meta["config"]["output_activation"] = out_act
    bad = write_consistent(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(ValueError, match=r"config\.output_activation.*log-rates \(the exp is fused into it\)"):
        gpubp.MLP.load(bad, backend="numpy")
