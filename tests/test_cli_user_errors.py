"""The command line never shows a traceback for a user error: bad output paths, closed pipes,
non-finite numbers in JSON, bad bench arguments, bad learning rates in weights files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from support.cli import strict_json as strict_loads
from support.cli import usage_error

from gpubp import cli, explain

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))






# ---------------------------------------------------------------- output paths, before any training
@pytest.mark.parametrize("option, make, message", [
    ("--save", lambda d: d / "a-file.txt" / "net.npz", "is not a directory"),
    ("--plot", lambda d: d / "a-file.txt" / "curves.png", "is not a directory"),
    ("--save", lambda d: d, "is a directory"),
    ("--plot", lambda d: d, "is a directory"),
    ("--save", lambda d: d / "missing" / "net.npz", "does not exist"),
    ("--plot", lambda d: d / "missing" / "curves.png", "does not exist"),
], ids=["save-under-file", "plot-under-file", "save-dir", "plot-dir", "save-missing-dir", "plot-missing-dir"])
def test_train_output_paths_are_checked_before_training(capsys, tmp_path, option, make, message):
    (tmp_path / "a-file.txt").write_text("x")
    out, err = usage_error(capsys, "train", "--dataset", "iris", "--epochs", "1", "--no-progress",
                           "--backend", "numpy", option, str(make(tmp_path)), with_stdout=True)
    assert message in err and option in err
    assert "epoch" not in out                    # refused before training


@pytest.mark.parametrize("save, plot", [("out.png", "out.png"), ("c-grad-norms.png", "c.png"),
                                        ("net.npz", "./net.npz")])
def test_train_refuses_two_outputs_in_one_file(capsys, tmp_path, save, plot, monkeypatch):
    """--save and --plot (or its -grad-norms.png) naming one file: the plot replaced the checkpoint."""
    monkeypatch.chdir(tmp_path)
    out, err = usage_error(capsys, "train", "--dataset", "iris", "--epochs", "1", "--no-progress", "--backend",
                           "numpy", "--grad-norms", "--save", save, "--plot", plot, with_stdout=True)
    assert "name the same file" in err and "--save" in err and "epoch" not in out
    assert list(tmp_path.iterdir()) == []


def _unwritable(monkeypatch, *paths):
    """`paths` made unwritable to os.access (root may write anywhere, so chmod is not enough)."""
    paths = {Path(p) for p in paths}
    real_access = os.access

    def access(path, mode, *a, **k):
        if Path(path) in paths and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)
    monkeypatch.setattr(os, "access", access)


def test_train_refuses_an_unwritable_output_folder(capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    _unwritable(monkeypatch, ro)
    out, err = usage_error(capsys, "train", "--dataset", "iris", "--epochs", "1", "--no-progress",
                           "--backend", "numpy", "--save", str(ro / "net.npz"), with_stdout=True)
    assert "not writable" in err and "epoch" not in out


TRAIN_1 = ["train", "--dataset", "iris", "--epochs", "1", "--no-progress", "--backend", "numpy"]


@pytest.mark.parametrize("command, option, name, message", [
    (TRAIN_1, "--save", "", "is not a file name"), (TRAIN_1, "--plot", "", "is not a file name"),
    (["explain"], "--plot", "", "is not a file name"),
    (TRAIN_1, "--save", "out/", "ends in a slash"), (TRAIN_1, "--plot", "out.png/", "ends in a slash"),
    (["explain"], "--plot", "out.png/", "ends in a slash")])
def test_empty_or_slash_ended_output_paths_are_refused(capsys, tmp_path, monkeypatch, command, option, name,
                                                       message):
    """`--save ""` (or --plot) was taken for no option: the run ended with status 0 and wrote nothing;
    `--save out/` (meaning a folder) wrote a file named "out", as Path drops the slash."""
    monkeypatch.chdir(tmp_path)
    out, err = usage_error(capsys, *command, option, name, with_stdout=True)
    assert message in err and option in err and "epoch" not in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [TRAIN_1, ["explain"]])
def test_plot_named_as_another_format_is_refused(capsys, tmp_path, monkeypatch, command):
    """`--plot curves.pdf` wrote PNG bytes into a file named .pdf (the plot is always a PNG)."""
    monkeypatch.chdir(tmp_path)
    out, err = usage_error(capsys, *command, "--plot", "curves.pdf", with_stdout=True)
    assert "written as a PNG, not '.pdf'" in err and "epoch" not in out
    assert list(tmp_path.iterdir()) == []


def test_predict_out_ending_in_a_slash_is_refused(capsys, tmp_path, monkeypatch):
    import gpubp

    monkeypatch.chdir(tmp_path)
    gpubp.MLP([2, 3, 2], loss="cross_entropy", backend="numpy", seed=0).save("net.npz")
    np.save("x.npy", np.ones((3, 2)))
    out, err = usage_error(capsys, "predict", "net.npz", "x.npy", "--out", "p.csv/", with_stdout=True)
    assert "ends in a slash" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz", "x.npy"]


def test_output_path_problem_accepts_new_and_existing_files(tmp_path):
    assert cli.output_path_problem(tmp_path / "new.npz") is None
    (tmp_path / "old.npz").write_bytes(b"")
    assert cli.output_path_problem(tmp_path / "old.npz") is None
    assert cli.output_dir_problem(tmp_path / "a" / "b") is None       # created when needed
    assert "not a directory" in cli.output_dir_problem(tmp_path / "old.npz")



@pytest.mark.parametrize("name", ["", ".", "..", "missing/..", "sub/.."])
def test_output_path_problem_refuses_names_that_name_no_file(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    assert cli.output_path_problem(name) == "is not a file name"


def test_output_problems_of_unwritable_files_and_folders(tmp_path, monkeypatch):
    """A folder to create is refused when its nearest existing ancestor is a file or is not writable."""
    (tmp_path / "f").write_text("x")
    assert cli.output_dir_problem(tmp_path / "f" / "a" / "b") == f"{str(tmp_path / 'f')!r} is not a directory"
    ro, ro_file = tmp_path / "ro", tmp_path / "ro-file.npz"
    ro.mkdir()
    ro_file.write_bytes(b"")
    _unwritable(monkeypatch, ro, ro_file)
    assert cli.output_dir_problem(ro) == "is not writable"
    assert cli.output_path_problem(ro_file) == "exists and is not writable"
    assert cli.output_dir_problem(ro / "a" / "b") == f"the directory {str(ro)!r} is not writable"
    assert cli.output_dir_problem(tmp_path / "a" / "b") is None


# ---------------------------------------------------------------- a closed pipe
def test_output_into_a_closed_pipe_ends_quietly():
    n = 100                                      # about a megabyte of JSON: more than a pipe holds
    argv = [sys.executable, "-m", "gpubp", "explain", "--layers", f"{n},{n},1",
            "--input", ",".join(["0.5"] * n), "--target", "1", "--json"]
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=ENV)
    first = p.stdout.readline()
    p.stdout.close()                             # what `| head -1` does
    err = p.stderr.read().decode()
    rc = p.wait(timeout=120)
    assert first.strip() == b"{"
    assert rc == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err



def test_output_into_a_pipe_closed_before_any_output_ends_quietly():
    """A short output, still buffered when the reader has gone: main's flush meets the closed pipe, and
    the interpreter's final flush must not meet it again ("Exception ignored ... BrokenPipeError", 120)."""
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}     # stdout buffered, as by default
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "gpubp", "gradcheck", "--layers", "2,2", "--backend", "numpy"],
                           stdout=w, stderr=subprocess.PIPE, cwd=ROOT, env=env, timeout=120)
    finally:
        os.close(w)
    err = p.stderr.decode()
    assert p.returncode == 0 and err == "", err


def test_main_returns_0_when_the_reader_has_gone(monkeypatch):
    class Gone:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(sys, "stdout", Gone())
    rc = cli.main(["explain"])
    assert rc == 0 and type(rc) is int

@pytest.mark.parametrize("argv", [["explain"], ["--version"], ["predict", "NET", "X", "--backend", "numpy"]])
def test_a_closed_stdout_discards_the_output(monkeypatch, tmp_path, argv):
    """Started with stdout closed (`gpubp ... >&-`, a daemon), Python's sys.stdout is None: print() discards
    the output, and so must every other write, with status 0 as for a reader that has gone."""
    import gpubp

    net = gpubp.MLP([2, 3, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    net.save(tmp_path / "net.npz")
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    argv = [str(tmp_path / "net.npz") if a == "NET" else str(tmp_path / "x.npy") if a == "X" else a for a in argv]
    monkeypatch.setattr(sys, "stdout", None)
    try:
        rc = cli.main(argv)
    except SystemExit as e:      # --version exits through argparse, as it does with an open stdout
        rc = e.code
    assert rc == 0

def test_a_closed_stderr_keeps_its_messages_out_of_the_output(monkeypatch, capsys, tmp_path):
    """Started with stderr closed (`2>&-`), sys.stderr is None, and print(..., file=None) writes to stdout: a
    warning and "wrote N predictions" went into the predictions."""
    import gpubp

    net = gpubp.MLP([2, 3, 2], loss="cross_entropy", backend="numpy", dtype="float64", seed=0)
    net.save(tmp_path / "net.npz")
    (tmp_path / "x.csv").write_text("0,1\n0.5,0.25\n")      # a first line counting the columns: a warning
    monkeypatch.setattr(sys, "stderr", None)
    assert cli.main(["predict", str(tmp_path / "net.npz"), str(tmp_path / "x.csv"), "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert out.split() == [str(v) for v in net.predict(np.array([[0, 1], [0.5, 0.25]]))], out
    assert cli.main(["predict", str(tmp_path / "net.npz"), str(tmp_path / "x.csv"), "--backend", "numpy",
                     "--out", str(tmp_path / "p.csv")]) == 0
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- strict JSON
def test_explain_json_is_strict_for_overflowing_values(capsys, tmp_path):
    wf = tmp_path / "big.json"
    wf.write_text(json.dumps({"layers": [{"W": [[1e200, 1e200], [1e200, 1e200]], "b": [0, 0]},
                                         {"W": [[1e200, 1e200]], "b": [0]}],
                              "input": [0.5, 0.8], "target": [1], "activation": "relu",
                              "output_activation": "identity", "loss": "mse"}))
    with pytest.warns(RuntimeWarning):
        rc = cli.main(["explain", "--weights", str(wf), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    t = strict_loads(out)
    assert t["loss"] == "Infinity"
    assert t["forward"][1]["z"] == ["Infinity"]
    assert t["updated"][1]["W"] == [["-Infinity", "-Infinity"]]


def test_strict_json_replaces_only_non_finite_floats():
    obj = {"a": [1.5, float("nan"), float("inf"), -float("inf"), 2], "b": ("x", None, True)}
    assert explain.strict_json(obj) == {"a": [1.5, "NaN", "Infinity", "-Infinity", 2], "b": ["x", None, True]}
    json.dumps(explain.strict_json(obj), allow_nan=False)


# ---------------------------------------------------------------- bench arguments
@pytest.mark.parametrize("argv, message", [
    (["--lr", "-0.1"], "--lr: expected a positive number"),
    (["--lr", "0"], "--lr: expected a positive number"),
    (["--lr", "inf"], "--lr: expected a positive number"),
    (["--reps", "-3"], "--reps: expected a positive integer"),
    (["--reps", "0"], "--reps: expected a positive integer"),
    (["--reps", "2.5"], "--reps: expected a positive integer"),
    (["--row-seconds", "-1"], "--row-seconds: expected a positive number"),
    (["--row-seconds", "nan"], "--row-seconds: expected a positive number"),
    (["--suite-seconds", "-5"], "--suite-seconds: expected a positive number"),
    (["--suite-seconds", "0"], "--suite-seconds: expected a positive number"),
])
def test_bench_arguments_are_validated(capsys, tmp_path, argv, message):
    err = usage_error(capsys, "bench", "--tiny", "--out", str(tmp_path / "out"), *argv)
    assert message in err
    assert not (tmp_path / "out").exists()


def test_bench_out_must_be_a_usable_folder(capsys, tmp_path):
    f = tmp_path / "a-file"
    f.write_text("x")
    for out in (f, f / "sub"):
        err = usage_error(capsys, "bench", "--tiny", "--out", str(out))
        assert "--out" in err and "not a directory" in err


# ---------------------------------------------------------------- learning rate of a weights file
@pytest.mark.parametrize("lr", [0, 0.0, -0.5, "0.1", True, 1e999, None],
                         ids=["zero", "zero-float", "negative", "text", "bool", "infinite", "null"])
def test_explain_weights_file_lr_is_refused_not_replaced(capsys, tmp_path, lr):
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": [[0.1, 0.2]], "b": [0.0]}], "input": [0.5, 0.8], "target": [1],
                              "lr": lr}))
    err = usage_error(capsys, "explain", "--weights", str(wf))
    assert '"lr" must be a positive finite number' in err


def test_explain_weights_file_lr_is_used(capsys, tmp_path):
    wf = tmp_path / "w.json"
    wf.write_text(json.dumps({"layers": [{"W": [[0.1, 0.2]], "b": [0.0]}], "input": [0.5, 0.8], "target": [1],
                              "lr": 0.25}))
    assert cli.main(["explain", "--weights", str(wf), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["lr"] == 0.25


# ---------------------------------------------------------------- a failed plot leaves no partial file
def test_a_failed_plot_write_leaves_the_previous_file(capsys, tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    png = tmp_path / "curves.png"
    png.write_bytes(b"previous")

    def disk_full(self, f, *a, **k):
        f.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Figure, "savefig", disk_full)
    rc = cli.main(["train", "--dataset", "iris", "--epochs", "1", "--no-progress", "--backend", "numpy",
                   "--plot", str(png)])
    err = capsys.readouterr().err
    assert rc == 1 and "could not write the plot" in err and "No space left" in err
    assert png.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]
    err = usage_error(capsys, "explain", "--plot", str(png))
    assert "cannot write the plot" in err
    assert png.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


# ---------------------------------------------------------------- Ctrl-C
def test_interrupt_ends_quietly_with_status_130(capsys, tmp_path, monkeypatch):
    """Ctrl-C outside train's fit (loading data, a long explain or predict) printed a traceback."""
    import gpubp

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(explain, "trace_step", interrupted)
    assert cli.main(["explain"]) == 130
    out, err = capsys.readouterr()
    assert err == "gpubp explain: interrupted\n" and out == ""
    monkeypatch.setattr(gpubp.MLP, "load", interrupted)
    net = gpubp.MLP([2, 1], backend="numpy")
    net.save(tmp_path / "n.npz")
    np.save(tmp_path / "x.npy", np.zeros((1, 2)))
    assert cli.main(["predict", str(tmp_path / "n.npz"), str(tmp_path / "x.npy"), "--backend", "numpy"]) == 130
    assert capsys.readouterr().err == "gpubp predict: interrupted\n"


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_checkpoint_save_leaves_the_previous_file(capsys, tmp_path, monkeypatch, failure):
    """`gpubp train --save` over an existing checkpoint, the write failing half-way (disk full, Ctrl-C): the
    previous file stays as it was, no temporary file is left, and the status says so (1, or 130)."""
    from gpubp import checkpoint

    old = tmp_path / "net.npz"
    old.write_bytes(b"the previous checkpoint")

    def fail_half_way(f, arrays):
        f.write(b"PK\x03\x04 partial")
        raise failure
    monkeypatch.setattr(checkpoint, "_write_archive", fail_half_way)
    rc = cli.main([*TRAIN_1, "--save", str(old)])
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    if isinstance(failure, OSError):
        assert rc == 1 and "could not write the checkpoint" in err and "No space left" in err
    else:
        assert rc == 130 and "interrupted" in err
    assert old.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["net.npz"]


def test_a_file_name_too_long_is_a_usage_error(capsys, tmp_path, monkeypatch):
    """pathlib's is_dir and exists raise ENAMETOOLONG (only "no such file" is False): a name longer than the
    file system takes ended in a traceback from the path checks of --save, --plot, --out, CHECKPOINT, DATA
    and bench's --out."""
    import gpubp

    monkeypatch.chdir(tmp_path)
    long = "a" * 300
    gpubp.MLP([2, 3, 2], loss="cross_entropy", backend="numpy", seed=0).save("net.npz")
    np.save("x.npy", np.ones((3, 2)))
    for argv in ([*TRAIN_1, "--save", long + ".npz"], [*TRAIN_1, "--plot", long + ".png"],
                 ["predict", "net.npz", "x.npy", "--out", long + ".csv"], ["predict", long + ".npz", "x.npy"],
                 ["predict", "net.npz", long + ".npy"]):
        out, err = usage_error(capsys, *argv, with_stdout=True)
        assert "File name too long" in err and "epoch" not in out, argv
    assert "File name too long" in cli.output_dir_problem(tmp_path / long)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz", "x.npy"]
