"""save/load round trips, and damaged or mismatched files are refused."""

import io
import json
import zipfile

import numpy as np
import pytest

import gpubp
from gpubp.checkpoint import _meta_digest


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
                                 gpubp.optim.AdamW(0.01, weight_decay=0.1)], ids=["momentum", "adam", "adamw"])
def test_round_trip_resumes_training_identically(tmp_path, opt):
    net, path, X, y = trained(tmp_path, opt)
    back = gpubp.MLP.load(path, backend="numpy")
    assert back.config() == net.config()
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
