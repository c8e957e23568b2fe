"""The `gpubp` command line, run in-process through `gpubp.cli.main` (and once as `python -m gpubp`)."""

import argparse
import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import gpubp
from support.cli import run, usage_error

from gpubp import cli

ROOT = Path(__file__).resolve().parents[1]






def agrees(value, published: str) -> bool:
    decimals = len(published.split(".")[1])
    return round(float(value), decimals) == round(float(published), decimals)


# ---------------------------------------------------------------- train
def test_train_iris_prints_epochs_and_final_accuracy(capsys):
    rc, out, err = run(capsys, "train", "--epochs", "2", "--dataset", "iris", "--backend", "numpy")
    assert rc == 0
    lines = [l for l in out.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and lines[1].startswith("epoch 2/2")
    for l in lines:
        assert re.search(r"loss \d+\.\d+ .*validation acc (0|1)\.\d+", l), l
    m = re.search(r"^test accuracy (\d\.\d+) \((\d+)/30\)$", out, re.M)
    assert m and 0 <= float(m.group(1)) <= 1 and int(m.group(2)) == round(float(m.group(1)) * 30)
    assert "iris" in out and "[4, 128, 3]" in out


def test_train_default_reaches_95_percent_on_digits(capsys):
    # exactly `gpubp train`: the digits, 64-128-10 relu, cross_entropy, adam, 30 epochs
    rc, out, _ = run(capsys, "train", "--no-progress")
    assert rc == 0
    assert "digits" in out and "[64, 128, 10]" in out and "epoch 30/30" in out
    acc = float(re.search(r"^test accuracy (\d\.\d+)", out, re.M).group(1))
    assert acc >= 0.95, out


def test_train_saves_checkpoint_and_plot(capsys, tmp_path):
    ck, png = tmp_path / "net.npz", tmp_path / "curves.png"
    rc, out, _ = run(capsys, "train", "--dataset", "moons", "--hidden", "16,16", "--activation", "tanh,relu",
                     "--epochs", "3", "--optimizer", "sgd", "--momentum", "0.9", "--lr", "0.05",
                     "--dtype", "float64", "--seed", "4", "--save", str(ck), "--plot", str(png), "--no-progress",
                     "--backend", "numpy")
    assert rc == 0 and "[2, 16, 16, 2]" in out and "momentum=0.9" in out and "nesterov=False" in out
    assert f"saved checkpoint to {ck} (the network keeps its input standardisation" in out
    assert f"saved curves to {png}\n" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10000
    net = gpubp.MLP.load(ck, backend="numpy")
    assert list(net.sizes) == [2, 16, 16, 2] and net.dtype == np.float64
    assert list(net.activations) == ["tanh", "relu", "identity"] and net.optimizer.t > 0
    # the checkpoint reproduces the printed test accuracy on the raw features: it carries its
    # input standardisation (training-set statistics), so nobody applies it by hand
    from gpubp.data import accuracy, load_dataset

    ds = load_dataset("moons", val_size=0.1, seed=4, standardize_features=False)
    std = load_dataset("moons", val_size=0.1, seed=4)
    np.testing.assert_allclose(net.standardization[0], std.mean)
    np.testing.assert_allclose(net.standardization[1], std.std)
    acc = float(re.search(r"^test accuracy (\d\.\d+)", out, re.M).group(1))
    assert accuracy(net, ds.X_test, ds.y_test) == pytest.approx(acc, abs=5e-5)


def test_sizes_may_be_separated_by_commas_or_spaces():
    for text in ("64,128,10", "64, 128, 10", "64 128 10", " 64,128,10 "):
        assert cli._sizes(text) == [64, 128, 10], text
    assert cli._activations("relu, tanh") == ["relu", "tanh"]


# every argument type at its bounds: what it returns, and what it refuses as a usage error (never another
# exception, which argparse would show as a traceback)
_FRACTION_0 = lambda t: cli._fraction(t, True)   # noqa: E731  (--val-size: 0 allowed)


@pytest.mark.parametrize("parse, text, value", [
    (cli._positive_int, "1", 1), (cli._positive_int, " 7 ", 7),
    (cli._positive_float, "5e-324", 5e-324), (cli._positive_float, "1e308", 1e308),
    (cli._nonneg_float, "0", 0.0), (cli._nonneg_float, "2.5", 2.5),
    (cli._fraction, "1e-9", 1e-9), (cli._fraction, "0.999999", 0.999999),
    (_FRACTION_0, "0", 0.0), (_FRACTION_0, "0.5", 0.5),
    (cli._momentum, "0", 0.0), (cli._momentum, "0.999", 0.999),
    (cli._seed, "0", 0), (cli._seed, str(2**32 - 1), 2**32 - 1),
    (cli._sizes, "1", [1]), (cli._sizes, "3, 1", [3, 1]),
    (cli._activations, "tanh", ["tanh"]), (cli._activations, "relu,sigmoid", ["relu", "sigmoid"]),
])
def test_argument_types_accept_their_bounds(parse, text, value):
    got = parse(text)
    assert got == value and type(got) is type(value), (text, got)


@pytest.mark.parametrize("parse, text", [
    (cli._positive_int, "0"), (cli._positive_int, "-1"), (cli._positive_int, "1.5"), (cli._positive_int, "x"),
    (cli._positive_float, "0"), (cli._positive_float, "-1e-9"), (cli._positive_float, "inf"),
    (cli._positive_float, "nan"), (cli._positive_float, "x"),
    (cli._nonneg_float, "-1e-9"), (cli._nonneg_float, "inf"), (cli._nonneg_float, "nan"), (cli._nonneg_float, "x"),
    (cli._fraction, "0"), (cli._fraction, "1"), (cli._fraction, "-0.1"), (cli._fraction, "nan"),
    (cli._fraction, "inf"), (cli._fraction, "x"),
    (_FRACTION_0, "1"), (_FRACTION_0, "-0.1"), (_FRACTION_0, "nan"), (_FRACTION_0, "x"),
    (cli._momentum, "1"), (cli._momentum, "-0.1"), (cli._momentum, "nan"), (cli._momentum, "x"),
    (cli._seed, "-1"), (cli._seed, str(2**32)), (cli._seed, "1.0"), (cli._seed, "x"),
    (cli._sizes, ""), (cli._sizes, "0"), (cli._sizes, "4,0,2"), (cli._sizes, "4,-1"), (cli._sizes, ",4"),
    (cli._sizes, "4,,2"), (cli._sizes, "4,2,"), (cli._sizes, "4,x"),
    (cli._activations, ""), (cli._activations, "swish"), (cli._activations, "relu,swish"),
    (cli._activations, "relu,,tanh"), (cli._activations, ",relu"),
])
def test_argument_types_refuse_outside_their_bounds(parse, text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse(text)


def test_train_other_losses_and_inferred_sizes(capsys):
    rc, out, _ = run(capsys, "train", "--dataset", "breast_cancer", "--loss", "binary_cross_entropy",
                     "--hidden", "8", "--epochs", "2", "--optimizer", "adamw", "--no-progress", "--val-size", "0",
                     "--backend", "numpy")
    assert rc == 0 and "[30, 8, 1]" in out and "test acc" in out   # no validation: the test set per epoch
    rc, out, _ = run(capsys, "train", "--dataset", "xor", "--layers", "2,8,1", "--loss", "mse",
                     "--output-activation", "sigmoid", "--epochs", "2", "--no-progress", "--backend", "numpy")
    assert rc == 0 and "[2, 8, 1]" in out and re.search(r"^test accuracy", out, re.M)


@pytest.mark.parametrize("layers, printed", [
    ("64,10", "[64, 10]"),                 # input and output only: a network without a hidden layer
    ("64, 12, 10", "[64, 12, 10]"),
])
def test_train_layers_that_match_the_data_are_used_as_given(capsys, layers, printed):
    rc, out, _ = run(capsys, "train", "--layers", layers, "--epochs", "1", "--val-size", "0", "--no-progress",
                     "--backend", "numpy")
    assert rc == 0 and f"network: {printed}," in out


def test_train_without_hidden_layers_names_no_activation_and_refuses_one(capsys):
    """--layers 4,3 has no hidden layer: the summary said "activation relu" (or the --activation given, which
    was dropped unseen); explain refuses such an activation, and so does train."""
    rc, out, _ = run(capsys, "train", "--dataset", "iris", "--layers", "4,3", "--epochs", "1", "--no-progress",
                     "--backend", "numpy")
    assert rc == 0 and "network: [4, 3], no hidden layer, output identity," in out and "relu" not in out
    err = usage_error(capsys, "train", "--dataset", "iris", "--layers", "4,3", "--activation", "tanh")
    assert "--layers 4,3 has no hidden layer to give --activation tanh" in err and "--output-activation" in err


def test_train_prints_the_test_loss_and_accuracy_of_the_network_it_saves(capsys, tmp_path):
    from gpubp.data import accuracy, load_dataset, targets_for

    t0 = time.perf_counter()
    rc, out, _ = run(capsys, "train", "--dataset", "wine", "--epochs", "2", "--no-progress", "--backend", "numpy",
                     "--seed", "3", "--save", str(tmp_path / "n.npz"))
    elapsed = time.perf_counter() - t0
    assert rc == 0
    net = gpubp.MLP.load(tmp_path / "n.npz", backend="numpy")
    ds = load_dataset("wine", val_size=0.1, seed=3, standardize_features=False)
    loss = net.evaluate(ds.X_test, targets_for(ds.y_test, "cross_entropy", 3, np.float64))["loss"]
    acc = accuracy(net, ds.X_test, ds.y_test)
    assert re.search(r"^test loss (\d+\.\d{4})$", out, re.M).group(1) == f"{loss:.4f}"
    n = len(ds.y_test)
    assert f"test accuracy {acc:.4f} ({round(acc * n)}/{n})" in out
    assert 0 <= float(re.search(r"^trained 2 epochs in (\d+\.\d) s$", out, re.M).group(1)) <= elapsed + 0.05


@pytest.mark.parametrize("plot, grad_norms", [("c.png", "c-grad-norms.png"), ("c", "c-grad-norms.png"),
                                              ("d/c.PNG", "d/c-grad-norms.PNG")])
def test_grad_norms_plot_is_named_after_the_plot_and_is_a_png(plot, grad_norms):
    assert cli._grad_norms_path(plot) == Path(grad_norms)


def test_train_checks_the_grad_norms_plot_path_before_training(capsys, tmp_path):
    (tmp_path / "c-grad-norms.png").mkdir()
    out, err = usage_error(capsys, "train", "--dataset", "iris", "--epochs", "1", "--no-progress", "--backend",
                           "numpy", "--grad-norms", "--plot", str(tmp_path / "c.png"), with_stdout=True)
    assert "--plot (gradient norms)" in err and "is a directory" in err and "epoch" not in out


def test_train_distributed_refusals_are_usage_errors(capsys, monkeypatch):
    from gpubp import distributed

    err = usage_error(capsys, "train", "--distributed", "--grad-norms", "--backend", "numpy")
    assert "--grad-norms is not supported with --distributed" in err

    def no_mpi(**k):
        raise RuntimeError("no MPI here")
    monkeypatch.setattr(distributed, "init", no_mpi)
    out, err = usage_error(capsys, "train", "--dataset", "iris", "--epochs", "1", "--no-progress", "--distributed",
                           "--backend", "numpy", with_stdout=True)
    assert "backend 'numpy' is not usable here: no MPI here" in err and "epoch" not in out


def test_train_network_the_backend_refuses_is_a_usage_error(capsys):
    err = usage_error(capsys, "train", "--dataset", "iris", "--epochs", "1", "--no-progress", "--backend", "numpy",
                      "--dtype", "float64", "--precision", "tf32")
    assert "precision='tf32' needs dtype float32" in err


def test_train_interrupted_in_fit_exits_130(capsys, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(gpubp.MLP, "fit", interrupt)
    rc, out, err = run(capsys, "train", "--dataset", "iris", "--epochs", "1", "--no-progress", "--backend", "numpy")
    assert rc == 130 and err == "gpubp train: interrupted\n" and "test accuracy" not in out


def test_train_no_progress_shows_no_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, out, err = run(capsys, "train", "--dataset", "wine", "--epochs", "2", "--backend", "numpy", "--no-progress")
    assert rc == 0 and err == "" and "epoch 2/2" in out


def test_train_is_mlp_fit_with_its_documented_defaults_and_prints_each_epochs_values(capsys, tmp_path):
    """`gpubp train` = MLP.fit with Adam at 2e-3, batches of 32 shuffled by --seed, inputs standardised and the
    validation split held out; each epoch's line shows that epoch's values of fit's history, and with
    --grad-norms that epoch's ||dW|| per layer."""
    from gpubp import optim
    from gpubp.data import load_dataset, targets_for

    rc, out, _ = run(capsys, "train", "--dataset", "wine", "--epochs", "3", "--no-progress", "--backend", "numpy",
                     "--seed", "2", "--hidden", "8", "--save", str(tmp_path / "n.npz"), "--grad-norms")
    assert rc == 0
    ds = load_dataset("wine", val_size=0.1, seed=2, standardize_features=False)
    net = gpubp.MLP([13, 8, 3], loss="cross_entropy", backend="numpy", dtype="float32", seed=2)
    h = net.fit(ds.X_train, ds.y_train, epochs=3, batch_size=32, optimizer=optim.make_optimizer("adam", 2e-3),
                shuffle=True, standardize=True, validation=(ds.X_val, targets_for(ds.y_val, "cross_entropy", 3)),
                verbose=0, progress=False, grad_norms=True)
    # every printed figure changes from epoch to epoch, so a line showing another epoch's value is noticed
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len({f"{v:.4f}" for v in h[k]}) == 3, (k, h[k])
    assert len({f"{g[0]:.2e}" for g in h["grad_norms"]}) == 3
    saved = gpubp.MLP.load(tmp_path / "n.npz", backend="numpy")
    for (W, b), (W2, b2) in zip(saved.get_params(), net.get_params()):
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(b, b2)
    lines = re.findall(r"^epoch (\d)/3  train loss (\S+)  train acc (\S+)  validation loss (\S+)  "
                       r"validation acc (\S+)  ", out, re.M)
    assert [int(e) for e, *_ in lines] == [1, 2, 3]
    for i, (_, loss, acc, vloss, vacc) in enumerate(lines):
        assert [loss, acc, vloss, vacc] == [f"{h[k][i]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")]
    norms = re.findall(r"^epoch \d/3  .*  \|\|dW\|\| (.*)$", out, re.M)
    assert norms == [" ".join(f"{g:.2e}" for g in h["grad_norms"][i]) for i in range(3)]


def test_train_shows_a_progress_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, out, err = run(capsys, "train", "--dataset", "wine", "--epochs", "2", "--backend", "numpy")
    assert rc == 0 and "epoch/s" in err and "0/2" in err    # tqdm writes to stderr
    assert "epoch 2/2" in out


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist"], "invalid choice: 'mnist'"),
    (["--layers", "10,128,10"], "64 features"),
    (["--layers", "64,128,3"], "needs 10"),
    (["--layers", "64"], "at least the input and output"),
    (["--layers", "64,x,10"], "comma-separated positive integers"),
    (["--hidden", "0"], "positive integer"),
    (["--layers", "64,,10"], "argument --layers: expected sizes as comma-separated positive integers (e.g. "
                             "64,128,10), got '64,,10', which leaves a size out"),
    (["--hidden", "32,16,"], "argument --hidden: expected sizes as comma-separated positive integers"),
    (["--hidden", "8,8", "--activation", "relu,,tanh"], "argument --activation: expected activation names "
                                                         "separated by commas, got 'relu,,tanh', which leaves"),
    (["--layers", "64,10", "--hidden", "8"], "not allowed with"),
    (["--epochs", "0"], "positive integer"),
    (["--batch-size", "two"], "positive integer"),
    (["--lr", "-1"], "positive number"),
    (["--lr", "nan"], "positive number"),
    (["--activation", "swish"], "unknown activation 'swish'"),
    (["--hidden", "8,8", "--activation", "relu,tanh,gelu"], "2 hidden layers"),
    (["--loss", "hinge"], "invalid choice"),
    (["--output-activation", "sigmoid"], "must be identity"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--momentum", "0.9"], "applies to --optimizer sgd"),
    (["--momentum", "1.5", "--optimizer", "sgd"], "momentum must lie in"),
    (["--nesterov"], "--nesterov is Nesterov momentum of --optimizer sgd"),
    (["--nesterov", "--optimizer", "sgd"], "a --momentum above 0"),
    (["--nesterov", "--optimizer", "adam", "--momentum", "0.9"], "applies to --optimizer sgd"),
    (["--dtype", "float16"], "invalid choice"),
    (["--backend", "tpu"], "invalid choice"),
    (["--test-size", "1.5"], "fraction"),
    (["--seed", "-3"], "seed"),
    (["--seed", "4294967296"], "argument --seed: expected an integer seed from 0 to 4294967295"),
    (["--dataset", "moons", "--n-samples", "5"], "moons has too few samples (5;"),
    (["--save", "/nonexistent-dir/x.npz"], "does not exist"),
    (["--noise", "0.1"], "n_samples and noise apply"),
    (["--dataset", "xor", "--n-samples", str(10**15)], "does not fit in memory"),
    (["--dataset", "moons", "--n-samples", str(10**15)], "does not fit in memory"),
    (["--dataset", "moons", "--noise", "1e40", "--hidden", "2", "--epochs", "1", "--backend", "numpy"],
     "the moons data cannot be trained on: mean overflows float32"),
    (["--frobnicate"], "unrecognized arguments"),
])
def test_train_bad_options_are_usage_errors(capsys, argv, message):
    err = usage_error(capsys, "train", *argv)
    assert message in err


def test_train_divergence_exits_1_with_advice(capsys):
    with np.errstate(all="ignore"):
        rc, out, err = run(capsys, "train", "--optimizer", "sgd", "--lr", "1e4", "--epochs", "2", "--no-progress",
                           "--backend", "numpy")
    assert rc == 1 and "lower learning rate" in err and "Traceback" not in err


def test_unusable_cuda_backend_is_a_usage_error(capsys, monkeypatch):
    import gpubp.backends as backends

    def refuse(name="auto"):
        if name == "cuda":
            raise RuntimeError("CuPy is not installed")
        return backends.NumpyBackend()

    monkeypatch.setattr(backends, "get_backend", refuse)
    err = usage_error(capsys, "train", "--backend", "cuda", "--epochs", "1")
    assert "backend 'cuda' is not usable here: CuPy is not installed" in err


# ---------------------------------------------------------------- explain: tests/test_explain.py


# ---------------------------------------------------------------- gradcheck
def test_gradcheck_passes_in_float64(capsys):
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--all-activations")
    assert rc == 0
    m = re.search(r"worst relative error (\S+) <= threshold 1e-06: OK \(7 configurations\)", out)
    assert m and float(m.group(1)) < 1e-6
    rows = re.findall(r"^\s+(\d)\s+\d+x\d+\s+(\S+)\s+(\S+)\s+\S+$", out, re.M)
    assert len(rows) == 7 * 3 and all(float(w) < 1e-6 and float(b) < 1e-6 for _, w, b in rows)


def test_gradcheck_fails_above_the_threshold(capsys):
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--all-losses", "--threshold", "1e-14")
    assert rc == 1 and "FAILED in 5 of 5" in out


def test_gradcheck_in_float32_that_fails_says_why_a_correct_network_can(capsys):
    # a correct float32 network FAILED at the defaults with nothing but the errors: the help's "finite
    # differences need float64" was never shown; a failure in float64 gets no such note
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--dtype", "float32")
    assert rc == 1 and "FAILED" in out
    assert "float32 resolves the loss to about 1e-7 of itself" in out and "--eps 1e-2 --threshold 1e-2" in out
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--dtype", "float32", "--eps", "1e-2",
                     "--threshold", "1e-2")
    assert rc == 0 and "float32 resolves" not in out
    # at that step a failure is not the rounding (relu's kink within eps here): no note
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--dtype", "float32", "--eps", "1e-2",
                     "--threshold", "1e-2", "--activation", "relu")
    assert rc == 1 and "float32 resolves" not in out
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--threshold", "1e-14")
    assert rc == 1 and "float32 resolves" not in out


def test_gradcheck_detects_a_broken_gradient(capsys, monkeypatch):
    orig = gpubp.MLP.loss_and_grads

    def broken(self, X, Y):
        loss, grads = orig(self, X, Y)
        grads[0][0][0, 0] *= 1.001
        return loss, grads

    monkeypatch.setattr(gpubp.MLP, "loss_and_grads", broken)
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy")
    assert rc == 1 and "FAIL" in out


def test_gradcheck_bad_options(capsys):
    assert "at least the input and output" in usage_error(capsys, "gradcheck", "--layers", "5")
    assert "smaller one" in usage_error(capsys, "gradcheck", "--layers", "200,200")
    assert "invalid choice" in usage_error(capsys, "gradcheck", "--kind", "mean")
    assert "does not fit in memory" in usage_error(capsys, "gradcheck", "--backend", "numpy", "--batch", str(10**15))
    # refused before anything is printed (the header line used to come first)
    out, err = usage_error(capsys, "gradcheck", "--backend", "numpy", "--layers", "3,4,2", "--activation",
                           "relu,tanh", with_stdout=True)
    assert "--activation lists 2 activations but the network has 1 hidden layers" in err and out == ""


def test_gradcheck_of_a_network_without_hidden_layers_names_no_activation(capsys):
    # --layers 3,2 has no hidden layer: "--all-activations" ran the same network 7 times and reported
    # "OK (7 configurations)", each headed by an activation it never used; one run was headed "tanh"
    out, err = usage_error(capsys, "gradcheck", "--backend", "numpy", "--layers", "3,2", "--all-activations",
                           with_stdout=True)
    assert "--all-activations checks each hidden activation, but --layers 3,2 has no hidden layer" in err
    assert out == ""
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--layers", "3,2")
    assert rc == 0 and "\nno hidden layer (output identity), loss mse = " in out and "tanh" not in out
    assert "OK (1 configuration)" in out


@pytest.mark.parametrize("extra", [["--loss", "cross_entropy"], ["--all-losses"]])
def test_gradcheck_refuses_a_check_that_cannot_fail(capsys, extra):
    """cross_entropy on one output: softmax of one logit is 1, every gradient is 0, and "OK" proves nothing
    (a planted error in dW would pass)."""
    out, err = usage_error(capsys, "gradcheck", "--backend", "numpy", "--layers", "3,4,1", *extra,
                           with_stdout=True)
    assert "--loss cross_entropy needs at least 2 outputs" in err and out == ""


@pytest.mark.parametrize("extra, said", [
    (["--loss", "cross_entropy"], "--loss cross_entropy takes logits"),
    (["--loss", "binary_cross_entropy"], "--loss binary_cross_entropy takes logits"),
    (["--loss", "poisson"], "--loss poisson takes log-rates (the exp is fused into it)"),
    (["--all-losses"], "--all-losses checks cross_entropy, binary_cross_entropy and poisson, which take their "
                       "outputs raw (cross_entropy: logits (the softmax is fused into it); binary_cross_entropy: "
                       "logits (the sigmoid is fused into it); poisson: log-rates (the exp is fused into it))")])
def test_gradcheck_refuses_an_output_activation_on_logits_as_train_does(capsys, extra, said):
    """`--output-activation sigmoid` with a logit loss was replaced by identity without a word (the check
    then ran, and passed, on a network other than the one asked for); `gpubp train` refuses it."""
    out, err = usage_error(capsys, "gradcheck", "--backend", "numpy", "--output-activation", "sigmoid", *extra,
                           with_stdout=True)
    assert said in err and "--output-activation must be identity, not sigmoid" in err and out == ""
    assert "must be identity, not sigmoid" in usage_error(capsys, "train", "--backend", "numpy", "--epochs", "1",
                                                          "--output-activation", "sigmoid", "--loss",
                                                          "cross_entropy")
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--output-activation", "sigmoid", "--loss", "mse")
    assert rc == 0 and "(output sigmoid), loss mse" in out


# ---------------------------------------------------------------- info, dispatch, python -m
def test_info_names_versions_and_backends(capsys):
    rc, out, _ = run(capsys, "info")
    assert rc == 0
    assert re.search(rf"numpy: {re.escape(np.__version__)}", out)
    assert re.search(rf"gpubp: {re.escape(gpubp.__version__)}", out) and "python:" in out
    assert re.search(r"backends: numpy", out) and "cupy:" in out and "torch:" in out and "gpu" in out
    rc, out, _ = run(capsys, "info", "--json")
    d = json.loads(out)
    assert d["versions"]["numpy"] == np.__version__ and "numpy" in d["backends"] and isinstance(d["gpus"], list)


def test_info_without_cupy(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)       # import cupy raises ImportError
    monkeypatch.setattr("shutil.which", lambda name: None)
    rc, out, _ = run(capsys, "info")
    assert rc == 0 and "none found (CuPy is not installed)" in out


def test_external_subcommands_dispatch(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("gpubp_fake_bench")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "gpubp_fake_bench", fake)
    monkeypatch.setitem(cli.EXTERNAL, "bench", ("gpubp_fake_bench", "fake"))
    assert cli.main(["bench", "--quick", "-n", "3"]) == 3 and seen == [["--quick", "-n", "3"]]
    monkeypatch.setitem(cli.EXTERNAL, "compile-check", ("gpubp_module_that_is_missing", "x"))
    assert cli.main(["compile-check"]) == 2
    assert "not available in this installation" in capsys.readouterr().err


def test_top_level_help_and_errors(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    for name in ("train", "explain", "gradcheck", "info", "compile-check", "bench"):
        assert name in out
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and gpubp.__version__ in capsys.readouterr().out
    assert "invalid choice" in usage_error(capsys, "frobnicate")


@pytest.mark.parametrize("argv, unknown", [(["info", "--bad"], "--bad"), (["train", "--bogus", "3"], "--bogus 3"),
                                           (["predict", "a.npz", "b.csv", "c"], "c")])
def test_unknown_arguments_are_the_subcommands_usage_error(capsys, argv, unknown):
    """An unknown option of a subcommand was reported as "gpubp: error:" under the top-level usage, which
    names no subcommand's options."""
    err = usage_error(capsys, *argv)
    assert f"gpubp {argv[0]}: error: unrecognized arguments: {unknown}" in err and f"usage: gpubp {argv[0]}" in err


def test_python_dash_m_gpubp():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "gpubp", "explain", "--example", "classic", "--json"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert agrees(json.loads(r.stdout)["loss"], "0.298371109")
    r = subprocess.run([sys.executable, "-m", "gpubp", "train", "--epochs", "0"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 2 and "positive integer" in r.stderr and "Traceback" not in r.stderr


def test_train_grad_norms_and_init(capsys, tmp_path):
    png = tmp_path / "c.png"
    rc, out, _ = run(capsys, "train", "--dataset", "iris", "--hidden", "16,16,16,16,16,16", "--activation",
                     "sigmoid", "--epochs", "2", "--grad-norms", "--init", "xavier", "--plot", str(png),
                     "--no-progress", "--backend", "numpy")
    assert rc == 0 and "init xavier" in out and "||dW||" in out
    assert (tmp_path / "c-grad-norms.png").read_bytes()[:4] == b"\x89PNG"


def test_train_draws_no_bar_into_a_log(capsys):
    """stderr is not a terminal here (captured): one line per epoch on stdout, no bar frames."""
    rc, out, err = run(capsys, "train", "--dataset", "iris", "--epochs", "3", "--backend", "numpy")
    assert rc == 0 and "\r" not in out + err
    assert len([l for l in out.splitlines() if l.startswith("epoch ")]) == 3


def test_train_same_seed_same_output(capsys, tmp_path):
    """--seed fixes the split, the weights and the shuffles: two runs print the same numbers (timings aside)
    and save the same parameters; another seed gives other numbers."""
    def train(seed, name):
        rc, out, _ = run(capsys, "train", "--dataset", "wine", "--hidden", "16", "--epochs", "3", "--no-progress",
                         "--backend", "numpy", "--seed", str(seed), "--save", str(tmp_path / name))
        assert rc == 0
        return re.sub(r"\(\d+\.\d+ s\)|in \d+\.\d+ s|saved checkpoint to \S+", "", out)
    a, b, c = train(3, "a.npz"), train(3, "b.npz"), train(4, "c.npz")
    assert a == b and a != c
    pa, pb = (gpubp.MLP.load(tmp_path / n, backend="numpy").get_params() for n in ("a.npz", "b.npz"))
    assert all(np.array_equal(x, y) for (Wa, ba), (Wb, bb) in zip(pa, pb) for x, y in ((Wa, Wb), (ba, bb)))


@pytest.mark.parametrize("command", ["train", "predict", "explain", "gradcheck"])
def test_help_states_each_default_once_and_as_typed(command, capsys):
    """`--help` says each option's default once: never "(default: None)" beside a help that gives
    the real default, never "(default: True)" on a `--no-...` flag, and a list as it is typed."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "(default: [" not in text and "(default: ['" not in text
    for option in re.split(r"\s(?=--[a-z])", text):
        assert option.count("default") <= 1 or "(default: " not in option, option[:200]


def test_help_gives_the_defaults_the_code_uses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for said in ("(default: digits)", "(default: relu)", "(default: 30)", "(default: 32)", "(default: adam)",
                 f"(default {cli.DEFAULT_LR['adam']:g} for adam/adamw, {cli.DEFAULT_LR['sgd']:g} for sgd)"):
        assert said in text, said
    with pytest.raises(SystemExit):
        cli.main(["gradcheck", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 4,6,5,3)" in text and "(default: tanh)" in text
