"""`gpubp predict CHECKPOINT DATA`: a checkpoint's predictions printed or written, user errors without tracebacks."""

import numpy as np
import pytest

import gpubp
from gpubp import cli


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def usage_error(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert e.value.code == 2, (argv, out, err)
    assert "error:" in err and "Traceback" not in err + out, err
    return err


@pytest.fixture
def classifier(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    net = gpubp.MLP([4, 8, 3], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    net.fit(X, y, epochs=3, batch_size=10, progress=False)
    path = tmp_path / "net.npz"
    net.save(path)
    return net, path, X


def test_predict_prints_labels_from_npy_and_csv(capsys, tmp_path, classifier):
    net, ckpt, X = classifier
    np.save(tmp_path / "x.npy", X)
    rc, out, _ = run(capsys, "predict", ckpt, tmp_path / "x.npy", "--backend", "numpy")
    assert rc == 0
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), net.predict(X))
    np.savetxt(tmp_path / "x.csv", X, delimiter=",", header="a,b,c,d", comments="")
    rc, out_csv, _ = run(capsys, "predict", ckpt, tmp_path / "x.csv", "--backend", "numpy")
    assert rc == 0 and out_csv == out


def test_predict_proba_and_out_files(capsys, tmp_path, classifier):
    net, ckpt, X = classifier
    np.save(tmp_path / "x.npy", X)
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "x.npy", "--proba", "--out", tmp_path / "p.npy",
                       "--backend", "numpy")
    assert rc == 0 and out == "" and "wrote 50 predictions" in err
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), net.predict_proba(X), rtol=1e-12)
    rc, _, _ = run(capsys, "predict", ckpt, tmp_path / "x.npy", "--out", tmp_path / "labels.csv",
                   "--backend", "numpy")
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "labels.csv", dtype=int), net.predict(X))
    rc, out, _ = run(capsys, "predict", ckpt, tmp_path / "x.npy", "--proba", "--backend", "numpy")
    P = np.array([row.split(",") for row in out.split()], dtype=float)
    np.testing.assert_allclose(P, net.predict_proba(X), rtol=1e-8)


def test_predict_regression_outputs(capsys, tmp_path):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((20, 3))
    net = gpubp.MLP([3, 5, 2], loss="mse", backend="numpy", dtype="float64", seed=0)
    net.save(tmp_path / "r.npz")
    np.savetxt(tmp_path / "x.csv", X, delimiter=",")
    rc, out, _ = run(capsys, "predict", tmp_path / "r.npz", tmp_path / "x.csv", "--backend", "numpy")
    assert rc == 0
    np.testing.assert_allclose(np.array([r.split(",") for r in out.split()], dtype=float),
                               net.predict(X), rtol=1e-8)
    err = usage_error(capsys, "predict", tmp_path / "r.npz", tmp_path / "x.csv", "--proba", "--backend", "numpy")
    assert "predict_proba" in err


def test_predict_user_errors(capsys, tmp_path, classifier):
    net, ckpt, X = classifier
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "wide.npy", np.zeros((3, 5)))
    (tmp_path / "x.txt").write_text("1,2,3,4\n")
    (tmp_path / "bad.csv").write_text("1,2,x,4\n5,6,7,oops\n")
    (tmp_path / "junk.npz").write_bytes(b"not a checkpoint")
    assert "does not exist" in usage_error(capsys, "predict", tmp_path / "none.npz", tmp_path / "x.npy")
    assert "does not exist" in usage_error(capsys, "predict", ckpt, tmp_path / "none.npy")
    assert ".npy or .csv" in usage_error(capsys, "predict", ckpt, tmp_path / "x.txt")
    assert ".npy or .csv" in usage_error(capsys, "predict", ckpt, tmp_path / "x.npy", "--out", tmp_path / "o.txt")
    assert "does not exist" in usage_error(capsys, "predict", ckpt, tmp_path / "x.npy", "--out",
                                           tmp_path / "nodir" / "o.npy")
    assert "not a CSV file of numbers" in usage_error(capsys, "predict", ckpt, tmp_path / "bad.csv")
    assert "5 columns" in usage_error(capsys, "predict", ckpt, tmp_path / "wide.npy", "--backend", "numpy")
    assert "not a usable gpubp checkpoint" in usage_error(capsys, "predict", tmp_path / "junk.npz",
                                                          tmp_path / "x.npy", "--backend", "numpy")
    assert not (tmp_path / "o.txt").exists()


def test_train_save_then_predict_raw_digits(capsys, tmp_path):
    """`gpubp train --save` stores the standardisation: raw samples predict as well as the printed accuracy."""
    from gpubp.data import load_dataset

    ckpt = tmp_path / "digits.npz"
    rc, out, _ = run(capsys, "train", "--epochs", "5", "--no-progress", "--backend", "numpy", "--save", ckpt)
    assert rc == 0
    ds = load_dataset("digits", val_size=0.1, seed=0, standardize_features=False)
    np.save(tmp_path / "raw.npy", ds.X_test)
    rc, pred, _ = run(capsys, "predict", ckpt, tmp_path / "raw.npy", "--backend", "numpy")
    acc = float(np.mean(np.array(pred.split(), dtype=int) == ds.y_test))
    printed = float(out.split("test accuracy ")[1].split()[0])
    assert acc == pytest.approx(printed, abs=5e-5) and acc > 0.9
