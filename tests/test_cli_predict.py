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
    assert "predict_proba" in err and "drop --proba" in err and "mse" in err


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


# ---------------------------------------------------------------- CSV files: a header is optional,
# a line of numbers is never dropped
def test_predict_csv_without_header_keeps_every_line(capsys, tmp_path, classifier):
    """A first line of numbers is data even when a later line is bad, or when the file starts with a
    byte-order mark: it was once skipped as a "header" (silently dropping a sample, or blaming the wrong line)."""
    net, ckpt, X = classifier
    rows = "\n".join(",".join(f"{v:.17g}" for v in r) for r in X[:5]) + "\n"
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + rows.encode())
    rc, out, _ = run(capsys, "predict", ckpt, tmp_path / "bom.csv", "--backend", "numpy")
    assert rc == 0
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), net.predict(X[:5]))
    # np.savetxt's own header ("# a,b,c,d") and Windows line ends
    np.savetxt(tmp_path / "h.csv", X[:5], delimiter=",", header="a,b,c,d")
    (tmp_path / "crlf.csv").write_bytes(rows.replace("\n", "\r\n").encode())
    for name in ("h.csv", "crlf.csv"):
        rc, out2, _ = run(capsys, "predict", ckpt, tmp_path / name, "--backend", "numpy")
        assert rc == 0 and out2 == out, name
    # a first line of five numbers, then lines of four: refused, naming both lines (was: line 1 dropped)
    (tmp_path / "wide.csv").write_text("1,2,3,4,5\n" + rows)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "wide.csv", "--backend", "numpy")
    assert "line 2 has 4 values but line 1 has 5" in err
    (tmp_path / "short.csv").write_text("1,2,3,4\n1,2,3\n")
    assert "line 2 has 3 values but line 1 has 4" in usage_error(capsys, "predict", ckpt, tmp_path / "short.csv")
    # a bad cell is named by its line in the file, also after a header (was "row 0" of what followed)
    (tmp_path / "bad.csv").write_text("a,b,c,d\n1,2,3,4\n5,6,oops,8\n")
    assert "line 3, column 3 is 'oops'" in usage_error(capsys, "predict", ckpt, tmp_path / "bad.csv")
    (tmp_path / "semi.csv").write_text("1;2;3;4\n")
    err = usage_error(capsys, "predict", ckpt, tmp_path / "semi.csv")
    assert "holds no samples" in err and "comma-separated" in err and "'1;2;3;4'" in err


def test_predict_csv_cells_numpy_cannot_read_are_refused_not_read_by_python(capsys, tmp_path, classifier):
    """A cell numpy's parser refuses ("1_0", non-ASCII digits) is refused, naming its line and column: the
    fallback that looks for the bad cell used Python's float(), which reads "1_0" as 10 and "\u0661" as 1."""
    net, ckpt, X = classifier
    for i, cell in enumerate(("1_0", "\u0661", "2.5_1")):
        path = tmp_path / f"odd{i}.csv"
        path.write_text(f"0.5,0.25,1,2\n3,{cell},4,5\n", encoding="utf-8")
        err = usage_error(capsys, "predict", ckpt, path, "--backend", "numpy")
        assert f"line 2, column 2 is {cell!r}" in err, err
    # as a header's cell, it is a name, not a number: the line is a header
    (tmp_path / "head.csv").write_text("x_1,x_2,x_3,x_4\n1,2,3,4\n")
    rc, out, _ = run(capsys, "predict", ckpt, tmp_path / "head.csv", "--backend", "numpy")
    assert rc == 0 and len(out.split()) == 1


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_predict_non_finite_data_names_the_file_and_the_sample(capsys, tmp_path, classifier, suffix):
    net, ckpt, X = classifier
    Xb = X[:4].copy()
    Xb[2, 1] = np.nan
    Xb[3, 0] = np.inf
    path = tmp_path / f"x{suffix}"
    if suffix == ".csv":
        np.savetxt(path, Xb, delimiter=",", header="a,b,c,d", comments="")
    else:
        np.save(path, Xb)
    err = usage_error(capsys, "predict", ckpt, path, "--backend", "numpy")
    where = "line 4" if suffix == ".csv" else "index 2"
    assert f"DATA {str(path)!r} contains NaN or infinity (2 of 4 samples, the first at {where})" in err


def test_predict_out_writes_exactly_the_named_file(capsys, tmp_path, classifier):
    """`--out P.NPY` writes P.NPY (numpy's np.save(name) would have written P.NPY.npy while the message
    said P.NPY); the write is atomic: a failed one leaves the previous file and no temporary file."""
    net, ckpt, X = classifier
    np.save(tmp_path / "x.npy", X)
    for name in ("P.NPY", "P.CSV"):
        rc, _, err = run(capsys, "predict", ckpt, tmp_path / "x.npy", "--out", tmp_path / name, "--backend", "numpy")
        assert rc == 0 and f"wrote 50 predictions to {tmp_path / name}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["P.CSV", "P.NPY", "net.npz", "x.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "P.NPY"), net.predict(X))
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "P.CSV", dtype=int), net.predict(X))


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_predict_failed_write_leaves_no_partial_file(capsys, tmp_path, classifier, monkeypatch, suffix):
    net, ckpt, X = classifier
    np.save(tmp_path / "x.npy", X)
    out = tmp_path / f"p{suffix}"
    out.write_bytes(b"previous")

    def disk_full(f, *a, **k):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "save" if suffix == ".npy" else "savetxt", disk_full)
    rc, _, err = run(capsys, "predict", ckpt, tmp_path / "x.npy", "--out", out, "--backend", "numpy")
    assert rc == 1 and "could not write --out" in err and "No space left on device" in err
    assert "Traceback" not in err
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["net.npz", "x.npy", out.name])


def test_predict_out_never_replaces_the_data_it_reads(capsys, tmp_path, classifier):
    """`--out x.csv` on DATA x.csv replaced the samples with the predictions."""
    net, ckpt, X = classifier
    np.savetxt(tmp_path / "x.csv", X, delimiter=",")
    before = (tmp_path / "x.csv").read_bytes()
    (tmp_path / "link.csv").symlink_to(tmp_path / "x.csv")
    for out in (tmp_path / "x.csv", tmp_path / "sub" / ".." / "x.csv", tmp_path / "link.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        err = usage_error(capsys, "predict", ckpt, tmp_path / "x.csv", "--out", out, "--backend", "numpy")
        assert "is the DATA file" in err
    assert (tmp_path / "x.csv").read_bytes() == before


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_printed_and_csv_predictions_read_back_exactly(capsys, tmp_path, dtype):
    """Values are written with enough digits for the network's dtype (float64 ones were cut to 9 digits)."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((20, 3))
    net = gpubp.MLP([3, 5, 2], loss="mse", backend="numpy", dtype=dtype, seed=0)
    net.save(tmp_path / "r.npz")
    np.save(tmp_path / "x.npy", X)
    want = net.predict(X)
    rc, out, _ = run(capsys, "predict", tmp_path / "r.npz", tmp_path / "x.npy", "--backend", "numpy")
    assert rc == 0
    got = np.array([r.split(",") for r in out.split()], dtype=np.float64).astype(dtype)
    np.testing.assert_array_equal(got, want)
    rc, _, _ = run(capsys, "predict", tmp_path / "r.npz", tmp_path / "x.npy", "--out", tmp_path / "p.csv",
                   "--backend", "numpy")
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "p.csv", delimiter=",").astype(dtype), want)


def test_predict_unreadable_checkpoint_is_a_usage_error(capsys, tmp_path, classifier, monkeypatch):
    """An OSError while reading the checkpoint (no permission, an I/O error) ended in a traceback."""
    from gpubp import checkpoint

    net, ckpt, X = classifier
    np.save(tmp_path / "x.npy", X)

    def refuse(self, path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(checkpoint.Checkpoint, "__init__", refuse)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "x.npy", "--backend", "numpy")
    assert f"CHECKPOINT {str(ckpt)!r} cannot be read: Permission denied" in err


def test_predict_npy_data_that_is_no_npy_array_is_a_usage_error(capsys, tmp_path, classifier):
    """A .npz archive named .npy (the checkpoint passed as DATA, say) ended in a traceback ('NpzFile' object
    has no attribute 'ndim'); other bytes were said to be "pickled data" to load unsafely."""
    net, ckpt, X = classifier
    (tmp_path / "ckpt.npy").write_bytes(ckpt.read_bytes())
    err = usage_error(capsys, "predict", ckpt, tmp_path / "ckpt.npy", "--backend", "numpy")
    assert f"DATA {str(tmp_path / 'ckpt.npy')!r} is not a .npy array: a zip archive" in err
    (tmp_path / "text.npy").write_text("1,2,3,4\n")
    err = usage_error(capsys, "predict", ckpt, tmp_path / "text.npy", "--backend", "numpy")
    assert "is not a .npy array" in err and "pickle" not in err
    (tmp_path / "empty.npy").write_bytes(b"")
    assert "the file is empty" in usage_error(capsys, "predict", ckpt, tmp_path / "empty.npy")
    np.save(tmp_path / "x.npy", X)                # a real one still reads
    rc, out, _ = run(capsys, "predict", ckpt, tmp_path / "x.npy", "--backend", "numpy")
    assert rc == 0 and len(out.split()) == len(X)


def test_predict_csv_cells_may_be_quoted(capsys, tmp_path, classifier):
    """Quoted cells (csv.QUOTE_ALL, a spreadsheet's export, a header name holding a comma) are what the quotes
    hold: '"5.1"' was refused as not a number, and a quoted header line taken for the only line of data."""
    import csv

    net, ckpt, X = classifier
    with open(tmp_path / "q.csv", "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_ALL)
        w.writerow(["width, cm", 'say "hi"', "c", "d"])
        w.writerows([[repr(float(v)) for v in row] for row in X[:6]])
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "q.csv", "--backend", "numpy")
    assert rc == 0, err
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), net.predict(X[:6]))
    (tmp_path / "bad.csv").write_text('"1","2","x","4"\n')
    assert "line 1, column 3 is 'x'" in usage_error(capsys, "predict", ckpt, tmp_path / "bad.csv", "--header", "no")


def test_predict_csv_header_of_column_numbers(capsys, tmp_path, classifier):
    """pandas writes the columns of an unnamed frame as the header "0,1,2,3": a line of numbers, read as a
    sample, so one prediction more than samples came out, every one after the first a line off, silently.
    It is still read (it may be data) but with a warning, and --header yes / no decide."""
    net, ckpt, X = classifier
    rows = "\n".join(",".join(repr(float(v)) for v in r) for r in X[:5]) + "\n"
    (tmp_path / "p.csv").write_text("0,1,2,3\n" + rows)
    want = net.predict(X[:5])
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "p.csv", "--backend", "numpy")
    assert rc == 0 and len(out.split()) == 6
    assert "warning: line 1 of DATA" in err and "'0,1,2,3'" in err and "--header yes" in err
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "p.csv", "--header", "yes", "--backend", "numpy")
    assert rc == 0 and "warning" not in err
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), want)
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "p.csv", "--header", "no", "--backend", "numpy")
    assert rc == 0 and "warning" not in err and len(out.split()) == 6
    (tmp_path / "one.csv").write_text("1,2,3,4\n" + rows)        # 1, ..., n: counted from 1
    assert "warning" in run(capsys, "predict", ckpt, tmp_path / "one.csv", "--backend", "numpy")[2]
    (tmp_path / "data.csv").write_text(rows)                     # ordinary numbers: no warning
    assert "warning" not in run(capsys, "predict", ckpt, tmp_path / "data.csv", "--backend", "numpy")[2]
    # --header no: a first line of names is an error, not a header
    (tmp_path / "named.csv").write_text("a,b,c,d\n" + rows)
    assert "line 1, column 1 is 'a'" in usage_error(capsys, "predict", ckpt, tmp_path / "named.csv",
                                                    "--header", "no")
    (tmp_path / "single.csv").write_text(rows.splitlines()[0] + "\n")
    err = usage_error(capsys, "predict", ckpt, tmp_path / "single.csv", "--header", "yes")
    assert "holds no samples" in err and "--header yes" in err


def test_predict_csv_separated_by_semicolons_or_tabs_says_so(capsys, tmp_path, classifier):
    net, ckpt, X = classifier
    for name, text in (("semi.csv", "1;2;3;4\n5;6;7;8\n"), ("tab.csv", "1\t2\t3\t4\n")):
        (tmp_path / name).write_text(text)
        err = usage_error(capsys, "predict", ckpt, tmp_path / name, "--backend", "numpy")
        assert "cells are separated by commas, not semicolons or tabs" in err, err


@pytest.mark.parametrize("loss", ["mse", "binary_cross_entropy"])
def test_predict_decodes_a_train_checkpoint_to_class_labels_whatever_its_loss(capsys, tmp_path, loss):
    """`gpubp train --loss mse` (or binary_cross_entropy) trains on one-hot targets and measures its accuracy
    on the arg-max class; `gpubp predict` printed the raw outputs (mse) or a 0/1 per class (rows "0,0,0" that
    name no class) instead of the labels. Now both give the labels whose accuracy `train` printed."""
    from gpubp.data import load_dataset

    ckpt = tmp_path / "iris.npz"
    rc, out, _ = run(capsys, "train", "--dataset", "iris", "--loss", loss, "--epochs", "20", "--no-progress",
                     "--backend", "numpy", "--save", ckpt)
    assert rc == 0
    ds = load_dataset("iris", val_size=0.1, seed=0, standardize_features=False)
    np.save(tmp_path / "raw.npy", ds.X_test)
    rc, pred, _ = run(capsys, "predict", ckpt, tmp_path / "raw.npy", "--backend", "numpy")
    assert rc == 0
    labels = np.array(pred.split(), dtype=int)
    assert labels.shape == ds.y_test.shape and set(labels) <= {0, 1, 2}
    printed = float(out.split("test accuracy ")[1].split()[0])
    assert float(np.mean(labels == ds.y_test)) == pytest.approx(printed, abs=5e-5)
    # a checkpoint of MLP.save without that metadata (a regression network) still prints its outputs
    net = gpubp.MLP.load(ckpt, backend="numpy")
    net.save(tmp_path / "plain.npz", metadata={})
    rc, raw, _ = run(capsys, "predict", tmp_path / "plain.npz", tmp_path / "raw.npy", "--backend", "numpy")
    assert rc == 0 and len(raw.split()) == len(ds.y_test) and "," in raw.split()[0]


def test_predict_names_a_row_index_column(capsys, tmp_path, classifier):
    """pandas' to_csv writes the row index as a first column by default: the column count error says so."""
    net, ckpt, X = classifier
    rows = "".join(f"{i}," + ",".join(repr(float(v)) for v in r) + "\n" for i, r in enumerate(X[:5]))
    (tmp_path / "idx.csv").write_text(",a,b,c,d\n" + rows)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "idx.csv", "--backend", "numpy")
    assert "has 5 columns but the network takes 4 inputs; its first column counts the rows" in err
    assert "index=False" in err
    np.save(tmp_path / "wide.npy", np.ones((3, 5)))       # another extra column: no such hint
    err = usage_error(capsys, "predict", ckpt, tmp_path / "wide.npy", "--backend", "numpy")
    assert err.rstrip().endswith("has 5 columns but the network takes 4 inputs")


def test_predict_csv_encodings(capsys, tmp_path, classifier):
    """A header in a spreadsheet's 8-bit encoding ("Temp\xe9rature" in cp1252) made the whole file "not UTF-8
    text"; UTF-16 with a byte-order mark (a spreadsheet's "Unicode text") was refused too. Numbers are ASCII
    in each, so both read; a non-number cell is still named by its line and column, and NUL bytes (UTF-16
    without its mark, binary data) are said to be what they are."""
    net, ckpt, X = classifier
    rows = "\n".join(",".join(repr(float(v)) for v in r) for r in X[:4]) + "\n"
    want = net.predict(X[:4])
    (tmp_path / "cp1252.csv").write_bytes(("Temp\xe9rature,b,c,d\n" + rows).encode("cp1252"))
    (tmp_path / "utf16.csv").write_text("a,b,c,d\n" + rows, encoding="utf-16")
    for name in ("cp1252.csv", "utf16.csv"):
        rc, out, err = run(capsys, "predict", ckpt, tmp_path / name, "--backend", "numpy")
        assert rc == 0, err
        np.testing.assert_array_equal(np.array(out.split(), dtype=int), want)
    (tmp_path / "cell.csv").write_bytes(b"1,2,3,4\n5,6,7\xe9,8\n")
    assert "line 2, column 3 is '7\xe9'" in usage_error(capsys, "predict", ckpt, tmp_path / "cell.csv")
    (tmp_path / "nomark.csv").write_bytes(rows.encode("utf-16-le"))
    err = usage_error(capsys, "predict", ckpt, tmp_path / "nomark.csv")
    assert "holds NUL bytes (the first at byte 1)" in err


def test_predict_csv_lines_end_only_at_line_ends(capsys, tmp_path, classifier):
    """str.splitlines also breaks at U+2028, U+0085 (cp1252's ellipsis byte read as Latin-1) and more: a
    header holding one was cut in two, its second half taken for a line of data (refused), and every later
    line number was one off."""
    net, ckpt, X = classifier
    rows = "\n".join(",".join(repr(float(v)) for v in r) for r in X[:3]) + "\n"
    (tmp_path / "ls.csv").write_text("Temp\u2028x,b,c,d\n" + rows + "1,2,3,y\n", encoding="utf-8")
    assert "line 5, column 4 is 'y'" in usage_error(capsys, "predict", ckpt, tmp_path / "ls.csv")
    (tmp_path / "nel.csv").write_bytes(b"Temp\x85,b,c,d\n" + rows.encode())
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "nel.csv", "--backend", "numpy")
    assert rc == 0, err
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), net.predict(X[:3]))
    (tmp_path / "cr.csv").write_bytes(b"a,b,c,d\r" + rows.replace("\n", "\r").encode() + b"1,2,3,z\r")
    assert "line 5, column 4 is 'z'" in usage_error(capsys, "predict", ckpt, tmp_path / "cr.csv")


def test_predict_with_checkpoint_and_data_swapped_says_so(capsys, tmp_path, classifier):
    net, ckpt, X = classifier
    np.savetxt(tmp_path / "x.csv", X, delimiter=",")
    err = usage_error(capsys, "predict", tmp_path / "x.csv", ckpt, "--backend", "numpy")
    assert "the checkpoint comes first (gpubp predict CHECKPOINT DATA)" in err    # was: "must end in .npy or .csv"


# ---------------------------------------------------------------- the edges of DATA: one sample, none, one
# column, files that are no data, and which checkpoints give class labels
def _save_net(tmp_path, sizes, name="n.npz", dtype="float64", metadata=None, loss="mse"):
    net = gpubp.MLP(sizes, loss=loss, backend="numpy", dtype=dtype, seed=0)
    path = tmp_path / name
    net.save(path, metadata=metadata)
    return net, path


def test_predict_one_sample_from_a_1d_npy_or_a_single_line(capsys, tmp_path, classifier):
    """A 1-D .npy array is one sample; a file of one sample predicts that one sample."""
    net, ckpt, X = classifier
    want = net.predict(X[:1])
    np.save(tmp_path / "one.npy", X[0])
    (tmp_path / "one.csv").write_text(",".join(repr(float(v)) for v in X[0]) + "\n")
    np.save(tmp_path / "row.npy", X[:1])
    for name in ("one.npy", "one.csv", "row.npy"):
        rc, out, err = run(capsys, "predict", ckpt, tmp_path / name, "--backend", "numpy")
        assert rc == 0, (name, err)
        np.testing.assert_array_equal(np.array(out.split(), dtype=int), want)


def test_predict_1d_npy_for_a_one_input_network_says_how_to_give_samples(capsys, tmp_path):
    """A 1-D .npy of N values is one sample of N inputs: for a network of one input the error says how to
    give N samples (one per row), not only that the "columns" do not match."""
    _, ck = _save_net(tmp_path, [1, 3, 1])
    np.save(tmp_path / "x.npy", np.linspace(0, 1, 5))
    err = usage_error(capsys, "predict", ck, tmp_path / "x.npy", "--backend", "numpy")
    assert "has 5 columns but the network takes 1 inputs" in err and "x.reshape(-1, 1)" in err, err


@pytest.mark.parametrize("name, write", [
    ("empty.csv", lambda p: p.write_bytes(b"")),
    ("blank.csv", lambda p: p.write_text("\n  \n# only a comment\n\n")),
    ("empty.npy", lambda p: np.save(p, np.zeros((0, 4)))),
])
def test_predict_data_without_samples_is_a_usage_error(capsys, tmp_path, classifier, name, write):
    net, ckpt, X = classifier
    write(tmp_path / name)
    err = usage_error(capsys, "predict", ckpt, tmp_path / name, "--backend", "numpy")
    assert f"DATA {str(tmp_path / name)!r} holds no samples" in err


@pytest.mark.parametrize("array", [np.zeros((2, 2, 4)), np.float64(1.5), np.ones((3, 4), dtype=complex),
                                   np.array([["1", "2", "3", "4"]])], ids=["3d", "0d", "complex", "strings"])
def test_predict_npy_that_is_no_2d_array_of_real_numbers_is_a_usage_error(capsys, tmp_path, classifier, array):
    net, ckpt, X = classifier
    np.save(tmp_path / "x.npy", array)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "x.npy", "--backend", "numpy")
    assert "must hold a 2-D numeric array (samples x inputs)" in err


def test_predict_npy_that_numpy_cannot_read_is_a_usage_error(capsys, tmp_path, classifier):
    """The .npy magic followed by a damaged header, or an object array (which needs pickle)."""
    net, ckpt, X = classifier
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
    for name in ("bad.npy",):
        err = usage_error(capsys, "predict", ckpt, tmp_path / name, "--backend", "numpy")
        assert f"DATA {str(tmp_path / name)!r} cannot be read as a .npy array" in err, err


def test_predict_npy_larger_than_its_file_or_the_memory_is_a_usage_error(capsys, tmp_path, classifier, monkeypatch):
    """A damaged or cut .npy whose header declares more data than follows: said so, nothing allocated (numpy
    tried to allocate the declared shape, and a MemoryError came out as a traceback)."""
    from numpy.lib import format as npformat

    net, ckpt, X = classifier
    for shape in ((10**12, 4), (10, 4)):
        with open(tmp_path / "cut.npy", "wb") as f:
            npformat.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": shape})
            f.write(b"\0" * 64)
        err = usage_error(capsys, "predict", ckpt, tmp_path / "cut.npy", "--backend", "numpy")
        assert f"is cut short: its header declares shape {shape} of float64" in err and "only 64 follow" in err, err
    np.save(tmp_path / "x.npy", X)           # an array larger than the memory: one line, no traceback

    def too_large(*a, **k):
        raise MemoryError("Unable to allocate 29.1 TiB")
    monkeypatch.setattr(np, "load", too_large)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "x.npy", "--backend", "numpy")
    assert "does not fit in memory" in err


class _Touch:
    """Unpickling it creates the file `path`: a stand-in for code that a pickle runs when it is loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from pathlib import Path
        return Path.touch, (Path(self.path),)


def test_predict_never_unpickles_npy_data(capsys, tmp_path, classifier):
    """An object array in a .npy file is a pickle, which runs code when loaded: it is refused unread."""
    net, ckpt, X = classifier
    np.save(tmp_path / "obj.npy", np.array([_Touch(tmp_path / "ran")], dtype=object), allow_pickle=True)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "obj.npy", "--backend", "numpy")
    assert f"DATA {str(tmp_path / 'obj.npy')!r} cannot be read as a .npy array" in err, err
    assert not (tmp_path / "ran").exists()


def test_predict_data_that_is_not_a_file_or_cannot_be_read(capsys, tmp_path, classifier, monkeypatch):
    from pathlib import Path

    net, ckpt, X = classifier
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "dir.npz").mkdir()
    np.save(tmp_path / "x.npy", X)
    np.savetxt(tmp_path / "x.csv", X, delimiter=",")
    assert "DATA" in (err := usage_error(capsys, "predict", ckpt, tmp_path / "dir.csv")) and "is not a file" in err
    err = usage_error(capsys, "predict", tmp_path / "dir.npz", tmp_path / "x.npy")
    assert "CHECKPOINT" in err and "is not a file" in err

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "read_bytes", refuse)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "x.csv", "--backend", "numpy")
    assert f"DATA {str(tmp_path / 'x.csv')!r} cannot be read: Permission denied" in err
    monkeypatch.setattr(cli, "open", refuse, raising=False)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "x.npy", "--backend", "numpy")
    assert f"DATA {str(tmp_path / 'x.npy')!r} cannot be read as a .npy array" in err and "Permission denied" in err


def test_predict_data_of_the_wrong_kind_is_refused_before_a_backend_starts(capsys, tmp_path, classifier,
                                                                         monkeypatch):
    net, ckpt, X = classifier
    (tmp_path / "x.txt").write_text("1,2,3,4\n")

    def no_backend(name):
        raise AssertionError("a backend was started before DATA was checked")
    monkeypatch.setattr(cli, "_make_backend", no_backend)
    err = usage_error(capsys, "predict", ckpt, tmp_path / "x.txt")
    assert f"DATA {str(tmp_path / 'x.txt')!r} must end in .npy or .csv" in err


def test_predict_with_two_checkpoints_is_not_taken_for_swapped_arguments(capsys, tmp_path, classifier):
    net, ckpt, X = classifier
    err = usage_error(capsys, "predict", ckpt, ckpt)
    assert "must end in .npy or .csv" in err and "comes first" not in err


def test_predict_csv_encoding_edges(capsys, tmp_path, classifier):
    """UTF-16 without its byte-order mark, big-endian: the first NUL is byte 0; a byte-order mark followed by
    bytes that are no UTF-16 is said to be so."""
    net, ckpt, X = classifier
    (tmp_path / "be.csv").write_bytes("1,2,3,4\n".encode("utf-16-be"))
    assert "holds NUL bytes (the first at byte 0)" in usage_error(capsys, "predict", ckpt, tmp_path / "be.csv")
    (tmp_path / "odd.csv").write_bytes(b"\xff\xfe1\x00,")     # an odd number of bytes after the mark
    err = usage_error(capsys, "predict", ckpt, tmp_path / "odd.csv")
    assert f"DATA {str(tmp_path / 'odd.csv')!r} starts as UTF-16 text but is not" in err


def test_predict_csv_first_sample_with_a_trailing_comment_is_a_sample(capsys, tmp_path, classifier):
    net, ckpt, X = classifier
    rows = [",".join(repr(float(v)) for v in r) for r in X[:3]]
    (tmp_path / "c.csv").write_text(rows[0] + "  # the first sample\n# a comment line\n" + rows[1] + "\n\n"
                                    "  # another\n" + rows[2] + "\n")
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "c.csv", "--backend", "numpy")
    assert rc == 0, err
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), net.predict(X[:3]))


def test_predict_csv_quoted_cells_after_a_space(capsys, tmp_path, classifier):
    """'"5.1", "3.5"': a space before an opening quote, as people type it, still quotes the cell."""
    net, ckpt, X = classifier
    (tmp_path / "q.csv").write_text("\n".join(", ".join(f'"{v!r}"' for v in map(float, r)) for r in X[:3]) + "\n")
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "q.csv", "--backend", "numpy")
    assert rc == 0, err
    np.testing.assert_array_equal(np.array(out.split(), dtype=int), net.predict(X[:3]))


@pytest.mark.parametrize("first", ["5.1,,1.4,0.2", "5.1,NA,1.4,0.2", "5.1,3.5,1.4,0.2,"])
def test_predict_csv_first_sample_with_a_missing_value_is_not_skipped_silently(capsys, tmp_path, classifier, first):
    """A first line of numbers with a cell missing (empty, NA, a trailing comma) is not all numbers, so it is
    taken as a header: one prediction fewer, every one a line off. The same line anywhere else is an error;
    first it is warned of, naming the cell, and --header no reports it as the error it is."""
    net, ckpt, X = classifier
    rows = "\n".join(",".join(repr(float(v)) for v in r) for r in X[:3]) + "\n"
    (tmp_path / "m.csv").write_text(first + "\n" + rows)
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "m.csv", "--backend", "numpy")
    assert rc == 0 and len(out.split()) == 3
    assert "warning: line 1 of DATA" in err and "taken as a header" in err and "--header no" in err, err
    assert "usage" not in err and "Traceback" not in err
    err = usage_error(capsys, "predict", ckpt, tmp_path / "m.csv", "--header", "no")
    assert "line 1, column" in err
    rc, out, err = run(capsys, "predict", ckpt, tmp_path / "m.csv", "--header", "yes", "--backend", "numpy")
    assert rc == 0 and "warning" not in err and len(out.split()) == 3
    # headers: names, pandas' ",a,b,c,d" and ",0,1,2,3" (an index column, unnamed columns): no warning
    for head in ("a,b,c,d", ",a,b,c,d", ",0,1,2,3", "id,0,1,2"):
        (tmp_path / "h.csv").write_text(head + "\n" + rows)
        assert "warning" not in run(capsys, "predict", ckpt, tmp_path / "h.csv", "--backend", "numpy")[2], head
    # a column of names in every line: the error of line 2 says it, without the warning before it
    (tmp_path / "named.csv").write_text("5.1,3.5,1.4,0.2,setosa\n4.9,3.0,1.4,0.2,setosa\n")
    err = usage_error(capsys, "predict", ckpt, tmp_path / "named.csv", "--backend", "numpy")
    assert "line 2, column 5 is 'setosa'" in err and "warning" not in err


def test_predict_csv_column_numbers_warning_from_two_columns(capsys, tmp_path):
    """A first line "0,1" counts two columns (warned of); a first line "0" of a one-input network is a value."""
    net2, ck2 = _save_net(tmp_path, [2, 3, 2], "two.npz")
    (tmp_path / "two.csv").write_text("0,1\n0.5,0.25\n")
    rc, out, err = run(capsys, "predict", ck2, tmp_path / "two.csv", "--backend", "numpy")
    assert rc == 0 and "warning: line 1 of DATA" in err and len(out.split()) == 2
    net1, ck1 = _save_net(tmp_path, [1, 3, 2], "one.npz")
    (tmp_path / "one.csv").write_text("0\n0.5\n-2\n")
    rc, out, err = run(capsys, "predict", ck1, tmp_path / "one.csv", "--backend", "numpy")
    assert rc == 0 and "warning" not in err
    got = np.array([r.split(",") for r in out.split()], dtype=float)
    np.testing.assert_allclose(got, net1.predict(np.array([[0.0], [0.5], [-2.0]])), rtol=1e-15)


def test_predict_row_index_hint_needs_two_rows(capsys, tmp_path, classifier):
    net, ckpt, X = classifier
    (tmp_path / "two.csv").write_text("0,1,2,3,4\n1,5,6,7,8\n")
    err = usage_error(capsys, "predict", ckpt, tmp_path / "two.csv", "--backend", "numpy")
    assert "its first column counts the rows" in err
    (tmp_path / "one.csv").write_text("0,1,2,3,4\n")       # one row starting at 0 is no index column
    err = usage_error(capsys, "predict", ckpt, tmp_path / "one.csv", "--header", "no", "--backend", "numpy")
    assert err.rstrip().endswith("has 5 columns but the network takes 4 inputs")


def test_predict_values_beyond_the_networks_dtype_are_a_usage_error(capsys, tmp_path):
    """1e39 is a finite float64 but no float32: the float32 network's refusal is a usage error naming DATA."""
    net, ck = _save_net(tmp_path, [2, 3, 1], dtype="float32")
    (tmp_path / "x.csv").write_text("1e39,0\n")
    err = usage_error(capsys, "predict", ck, tmp_path / "x.csv", "--backend", "numpy")
    assert f"DATA {str(tmp_path / 'x.csv')!r}: X overflows float32" in err


def test_float32_predictions_are_printed_with_9_significant_digits(capsys, tmp_path):
    """9 significant digits read a float32 back exactly; more only print float64 noise."""
    net, ck = _save_net(tmp_path, [2, 3, 2], dtype="float32")
    np.save(tmp_path / "x.npy", np.random.default_rng(3).standard_normal((10, 2)))
    rc, out, _ = run(capsys, "predict", ck, tmp_path / "x.npy", "--backend", "numpy")
    cells = [c for row in out.split() for c in row.split(",")]
    digits = [len(c.lstrip("-").split("e")[0].replace(".", "").lstrip("0")) for c in cells]
    assert rc == 0 and max(digits) <= 9 and max(digits) >= 8, cells


@pytest.mark.parametrize("metadata, labels", [
    ({"dataset": "iris"}, True),                              # an older `gpubp train` checkpoint: no "task"
    ({"task": "classification"}, True),
    ({"task": "regression", "dataset": "iris"}, False),       # a task said otherwise wins over the data set
    ({"dataset": "my-own"}, False),
])
def test_predict_labels_for_classifier_checkpoints_only(capsys, tmp_path, metadata, labels):
    net, ck = _save_net(tmp_path, [4, 5, 3], metadata=metadata)
    X = np.random.default_rng(4).standard_normal((6, 4))
    np.save(tmp_path / "x.npy", X)
    rc, out, _ = run(capsys, "predict", ck, tmp_path / "x.npy", "--backend", "numpy")
    assert rc == 0
    if labels:
        np.testing.assert_array_equal(np.array(out.split(), dtype=int), np.argmax(net.predict(X), axis=1))
    else:
        np.testing.assert_allclose(np.array([r.split(",") for r in out.split()], dtype=float), net.predict(X),
                                   rtol=1e-15)
