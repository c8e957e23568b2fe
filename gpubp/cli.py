"""The `gpubp` command line: train, predict, explain, gradcheck, info (and compile-check, bench).

    gpubp train                       # a small MLP on scikit-learn's handwritten digits
    gpubp train --dataset moons --hidden 32,32 --epochs 50 --plot curves.png
    gpubp train --save net.npz && gpubp predict net.npz samples.csv --proba
    gpubp explain                     # one traced backprop step of the 2-2-1 sigmoid example
    gpubp explain --example classic   # the classic 2-2-2 worked example, to the published digits
    gpubp gradcheck --all-activations # analytic gradients against finite differences
    gpubp info                        # versions, backends, GPU

`main(argv)` returns the exit status; the console script `gpubp` is
`gpubp.cli:main`, and `python -m gpubp` runs the same.
"""

from __future__ import annotations

import argparse
import codecs
import csv
import importlib
import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from .activations import ACTIVATIONS
from .backends import BACKENDS
from .losses import FUSED_OUTPUT, LABEL_LOSSES, LOGIT_LOSSES, LOSSES, check_outputs, fused_output_text
from .checks import DTYPES
from .network import INITS
from .optional import MissingExtraError, require
from .precision import PRECISIONS

#: subcommands whose module parses its own arguments: name -> (module, help); imported when used
EXTERNAL = {
    "compile-check": ("gpubp.compile_check", "compile every CUDA kernel with NVRTC (no GPU) and report registers, spills and shared memory"),
    "bench": ("gpubp.bench.cli", "time training steps against the device's measured ceilings"),
}

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")
DEFAULT_LR = {"sgd": 0.05, "adam": 2e-3, "adamw": 2e-3}


class UsageError(Exception):
    """A problem with what the user asked for: reported as a usage error, without a traceback."""


# ---------------------------------------------------------------- argument types
def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return v


def _fraction(text, allow_zero=False):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction, got {text!r}") from None
    if not (math.isfinite(v) and (v >= 0 if allow_zero else v > 0) and v < 1):
        raise argparse.ArgumentTypeError(
            f"expected a fraction in {'[0' if allow_zero else '(0'}, 1), got {text!r}")
    return v


def _momentum(text):
    v = _nonneg_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"momentum must lie in [0, 1), got {text!r}")
    return v


def _sizes(text):
    parts = re.split(r"\s*,\s*|\s+", str(text).strip())   # "64,128,10", "64, 128, 10" or "64 128 10"
    if "" in parts and parts != [""]:       # "64,,10" or "64,128,": a size left out, not silently dropped
        raise argparse.ArgumentTypeError(f"expected sizes as comma-separated positive integers (e.g. 64,128,10), "
                                         f"got {text!r}, which leaves a size out")
    parts = [p for p in parts if p]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected sizes as comma-separated positive integers (e.g. 64,128,10), got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integer sizes, got {text!r}")
    return sizes


def _activations(text):
    names = [p.strip() for p in str(text).split(",")]
    if "" in names and names != [""]:       # "relu,,tanh": a name left out, not silently dropped
        raise argparse.ArgumentTypeError(f"expected activation names separated by commas, got {text!r}, which "
                                         f"leaves a name out; choose from {', '.join(ACTIVATIONS)}")
    names = [n for n in names if n]
    bad = [n for n in names if n not in ACTIVATIONS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"unknown activation {', '.join(map(repr, bad)) or repr(text)}; choose from {', '.join(ACTIVATIONS)} "
            "(or a comma-separated list, one per hidden layer)")
    return names


#: the largest seed: scikit-learn's splits and make_moons take seeds below 2^32
MAX_SEED = 2**32 - 1


def _seed(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer seed, got {text!r}") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer seed from 0 to {MAX_SEED}, got {text!r}")
    return v


def _hidden_activation(names, n_hidden):
    """One name for every hidden layer, or the list; checked against the number of hidden layers."""
    if len(names) == 1:
        return names[0]
    if len(names) != n_hidden:
        raise UsageError(f"--activation lists {len(names)} activations but the network has {n_hidden} "
                         "hidden layers (give one name, or one per hidden layer)")
    return list(names)


def _os_problem(check):
    """`check` made safe: an OSError while looking at a path (a name too long, a loop of symbolic links,
    which pathlib's is_dir and exists raise) is the problem, in the system's words."""
    def checked(path) -> str | None:
        try:
            return check(path)
        except OSError as e:
            return e.strerror or str(e)
    checked.__doc__, checked.__name__ = check.__doc__, check.__name__
    return checked


@_os_problem
def output_path_problem(path) -> str | None:
    """Why the file `path` cannot be written (None when it can): checked before any work is done.

    Its folder must be an existing directory we may write into, and the path
    itself not a directory nor an existing file we may not write.
    """
    import os

    p = Path(path)
    parent = p.parent
    if str(path) == "" or p.name in ("", ".", ".."):
        return "is not a file name"
    if str(path).endswith(("/", os.sep)):   # Path drops the slash: "out/" would write a file named "out"
        return "ends in a slash, which names a directory; give a file name"
    if p.is_dir():
        return "is a directory; give a file name"
    if not parent.exists():
        return f"the directory {str(parent)!r} does not exist"
    if not parent.is_dir():
        return f"{str(parent)!r} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the directory {str(parent)!r} is not writable"
    if p.exists() and not os.access(p, os.W_OK):
        return "exists and is not writable"
    return None


@_os_problem
def output_dir_problem(path) -> str | None:
    """Why the folder `path` cannot receive files (None when it can, or can be created)."""
    import os

    p = Path(path)
    if p.exists():
        if not p.is_dir():
            return "exists and is not a directory"
        return None if os.access(p, os.W_OK | os.X_OK) else "is not writable"
    q = p.absolute().parent           # the nearest existing ancestor must let us create the rest
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        return f"{str(q)!r} is not a directory"
    return None if os.access(q, os.W_OK | os.X_OK) else f"the directory {str(q)!r} is not writable"


def _check_writable(path, what):
    why = output_path_problem(path)
    if why is not None:
        raise UsageError(f"{what} {str(path)!r}: {why}")
    return Path(path)


def _check_png(path) -> None:
    """A --plot file is named as what it gets, a PNG (`curves.pdf` got PNG bytes)."""
    suffix = Path(path).suffix
    if suffix.lower() not in ("", ".png"):
        raise UsageError(f"--plot {str(path)!r}: the plot is written as a PNG, not {suffix!r}; give a name ending "
                         "in .png")


def _make_backend(name):
    from .backends import get_backend

    try:
        return get_backend(name)
    except Exception as e:   # CuPy missing, no device, driver too old: say so, no traceback
        raise UsageError(f"backend {name!r} is not usable here: {e}") from None


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` with each option's default, said once: not added where the help already says
    it, nor for a flag (`--grad-norms`, `--no-progress`) or an option whose default is None
    (its help says what happens then); a list default is written as it is typed (`relu`,
    `4,6,5,3`), not as a Python list."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is argparse.SUPPRESS or not action.option_strings
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))):
            return text
        if isinstance(default, (list, tuple)):
            return f"{text} (default: {','.join(str(v) for v in default)})".replace("%", "%%")
        return text + " (default: %(default)s)"


# ---------------------------------------------------------------- train
#: `gpubp train`'s default hidden activation: this very list when --activation was not given
_TRAIN_ACTIVATION = ["relu"]


def _add_train(sub):
    from .data import DATASETS

    p = sub.add_parser(
        "train", help="train an MLP on a small data set (default: handwritten digits)",
        description="Train a dense network by backprop on a small classification data set, "
                    "printing loss and held-out accuracy per epoch and the final test accuracy. "
                    "With no options: a 64-128-10 ReLU network with softmax cross-entropy and Adam "
                    "on scikit-learn's 8x8 handwritten digits (no download).",
        formatter_class=_DefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default="digits", help="the data set")
    g.add_argument("--test-size", type=_fraction, default=0.2, help="fraction held out for the final test")
    g.add_argument("--val-size", type=lambda t: _fraction(t, True), default=0.1,
                   help="fraction held out for per-epoch validation (0: report the test set per epoch)")
    g.add_argument("--n-samples", type=_positive_int, default=None,
                   help="samples to generate for moons and xor (default 1000)")
    g.add_argument("--noise", type=_nonneg_float, default=None,
                   help="noise of the generated data sets (moons 0.2, xor 0 by default)")
    g.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="keep the raw features (default: the network standardises its inputs with the "
                        "training set's statistics, and a saved checkpoint keeps them)")
    g = p.add_argument_group("network")
    sz = g.add_mutually_exclusive_group()
    sz.add_argument("--layers", type=_sizes, default=None, metavar="N0,N1,...,NL",
                    help="every layer size, inputs and outputs included; they must match the data")
    sz.add_argument("--hidden", type=_sizes, default=None, metavar="H1,...",
                    help="hidden layer sizes only; inputs and outputs are taken from the data "
                         "(default 128)")
    g.add_argument("--activation", type=_activations, default=_TRAIN_ACTIVATION, metavar="NAME[,NAME...]",
                   help=f"hidden activation, or one per hidden layer: {', '.join(ACTIVATIONS)}")
    g.add_argument("--output-activation", choices=ACTIVATIONS, default="identity",
                   help="output activation (identity for the cross-entropy losses, which take logits)")
    g.add_argument("--loss", choices=LABEL_LOSSES, default="cross_entropy",
                   help="loss (the data sets are classification tasks: every loss but the regression loss poisson)")
    g = p.add_argument_group("training")
    g.add_argument("--optimizer", choices=OPTIMIZER_NAMES, default="adam", help="optimizer")
    g.add_argument("--lr", type=_positive_float, default=None,
                   help=f"learning rate (default {DEFAULT_LR['adam']:g} for adam/adamw, {DEFAULT_LR['sgd']:g} for sgd)")
    g.add_argument("--momentum", type=_momentum, default=0.0, help="momentum of sgd")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for sgd (needs --momentum)")
    g.add_argument("--weight-decay", type=_nonneg_float, default=None,
                   help="weight decay (default 0; adamw 0.01)")
    g.add_argument("--epochs", type=_positive_int, default=30, help="passes over the training set")
    g.add_argument("--batch-size", type=_positive_int, default=32, help="samples per step")
    g.add_argument("--backend", choices=BACKENDS, default="auto", help="backend")
    g.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="dtype")
    g.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="how the matrix products are computed: float32 (default), tf32, bf16 or 3xtf32 "
                        "(float32 networks; the numpy backend emulates each; the cuda backend runs tf32 "
                        "and refuses bf16 and 3xtf32 for now)")
    g.add_argument("--init", choices=INITS, default="torch",
                   help="weight initialisation: torch (nn.Linear's), xavier (Glorot uniform), kaiming (He normal)")
    g.add_argument("--seed", type=_seed, default=0, help="seed of the split, the weights and the shuffling")
    g = p.add_argument_group("output")
    g.add_argument("--save", metavar="PATH", default=None,
                   help="write a checkpoint (.npz) after training (none when training is interrupted, e.g. by "
                        "Ctrl-C: the command ends with status 130)")
    g.add_argument("--plot", metavar="PATH", default=None, help="write the loss and accuracy curves as a PNG "
                   "(with --grad-norms also PATH's name + '-grad-norms.png')")
    g.add_argument("--grad-norms", action="store_true",
                   help="record each layer's ||dW||, ||delta|| and update-to-weight ratio per epoch, print them, "
                        "and warn of vanishing or exploding gradients")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (there is one only when stderr is a terminal)")
    g = p.add_argument_group("several processes")
    g.add_argument("--distributed", action="store_true",
                   help="train data-parallel over the ranks of `mpiexec -n N` (or srun): each rank takes its "
                        "share of every batch, gradients are summed over MPI (NCCL between GPUs); only rank 0 "
                        "prints and writes files (needs mpi4py: pip install 'gpubp[distributed]')")
    p.set_defaults(func=cmd_train)
    return p


def _resolve_layers(args, ds):
    from .data import output_sizes

    outs = output_sizes(args.loss, ds.n_classes)
    if args.layers is not None:
        sizes = list(args.layers)
        if len(sizes) < 2:
            raise UsageError("--layers needs at least the input and output sizes "
                             f"(e.g. {ds.n_features},128,{outs[0]}); use --hidden to give hidden sizes only")
        if sizes[0] != ds.n_features:
            raise UsageError(f"--layers starts with {sizes[0]} inputs but {ds.name} has {ds.n_features} "
                             f"features; use {ds.n_features},... or give only --hidden sizes")
        if sizes[-1] not in outs:
            want = " or ".join(map(str, outs))
            raise UsageError(f"--layers ends with {sizes[-1]} outputs but {ds.name} ({ds.n_classes} classes) "
                             f"with loss {args.loss} needs {want}; or give only --hidden sizes")
        return sizes
    hidden = list(args.hidden) if args.hidden is not None else [128]
    return [ds.n_features, *hidden, outs[0]]


def _make_optimizer(args):
    from . import optim

    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    if args.momentum and args.optimizer != "sgd":
        raise UsageError(f"--momentum applies to --optimizer sgd, not {args.optimizer} "
                         "(Adam's moments are its betas)")
    if args.nesterov and (args.optimizer != "sgd" or not args.momentum):
        raise UsageError("--nesterov is Nesterov momentum of --optimizer sgd: give it with --optimizer sgd "
                         "and a --momentum above 0")
    kw = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    if args.optimizer == "sgd":
        return optim.SGD(lr, momentum=args.momentum, nesterov=args.nesterov, **kw)
    return optim.make_optimizer(args.optimizer, lr, **kw)


def _say(msg, bar):
    if bar is not None:
        bar.write(msg, file=sys.stdout)
    else:
        print(msg, flush=True)


def _grad_norms_path(plot) -> Path:
    p = Path(plot)
    return p.with_name(p.stem + "-grad-norms" + (p.suffix or ".png"))


class _EpochReport:
    """fit's callback behind `gpubp train`: one line per epoch (and a bar on a terminal)."""

    def __init__(self, ds, X_held, y_held, held, epochs, progress, show=True):
        from .data import accuracy

        self.show = show            # False on the ranks other than 0 of a distributed run
        self.accuracy = accuracy
        self.ds, self.X_held, self.y_held, self.held = ds, X_held, y_held, held
        self.epochs, self.width = epochs, len(str(epochs))
        self.history = {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}
        self.bar = None
        if progress and sys.stderr.isatty():    # a bar on a terminal only: no frames in a log file
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, unit="epoch", file=sys.stderr, dynamic_ncols=True, leave=False)
        self.t = time.perf_counter()

    def on_epoch_end(self, net, epoch, logs):
        h = self.history
        # fit measured the loss of the held-out set, and for cross-entropy both accuracies (the
        # arg-max rule of gpubp.data.accuracy); the squared-error and logistic outputs need its rule
        ce = net.loss == "cross_entropy"
        h["loss"].append(logs["loss"][-1])
        h["accuracy"].append(logs["accuracy"][-1] if ce else self.accuracy(net, self.ds.X_train, self.ds.y_train))
        h["val_loss"].append(logs["val_loss"][-1])
        h["val_accuracy"].append(logs["val_accuracy"][-1] if ce else self.accuracy(net, self.X_held, self.y_held))
        for key in ("grad_norms", "delta_norms", "update_ratios"):
            if key in logs:
                h[key] = logs[key]
        now = time.perf_counter()
        line = (f"epoch {epoch:>{self.width}}/{self.epochs}  train loss {h['loss'][-1]:.4f}  "
                f"train acc {h['accuracy'][-1]:.4f}  {self.held} loss {h['val_loss'][-1]:.4f}  "
                f"{self.held} acc {h['val_accuracy'][-1]:.4f}  ({now - self.t:.3f} s)")
        if "grad_norms" in logs:
            line += "  ||dW|| " + " ".join(f"{g:.2e}" for g in logs["grad_norms"][-1])
        self.t = now
        if self.show:
            _say(line, self.bar)
        if self.bar is not None:
            self.bar.set_postfix({"train loss": f"{h['loss'][-1]:.4f}", f"{self.held} acc": f"{h['val_accuracy'][-1]:.4f}"})
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_train(args) -> int:
    from .data import accuracy, load_dataset, targets_for
    from .network import MLP

    if args.save is not None:          # "" too: refused, not taken for "no checkpoint"
        _check_writable(args.save, "--save")
    if args.plot is not None:
        _check_writable(args.plot, "--plot")
        if args.grad_norms:
            _check_writable(_grad_norms_path(args.plot), "--plot (gradient norms)")
        require("matplotlib", "plot", "--plot")   # before training, not after it
    outputs = [(w, Path(f).absolute().resolve()) for w, f in (
        ("--save", args.save), ("--plot", args.plot),
        ("--plot (gradient norms)", args.grad_norms and args.plot and _grad_norms_path(args.plot))) if f]
    for i, (what, path) in enumerate(outputs):
        for other, path2 in outputs[i + 1:]:
            if path == path2:
                raise UsageError(f"{what} and {other} name the same file {str(path)!r}: one would replace the "
                                 "other; give two files")
    if args.plot is not None:
        _check_png(args.plot)
    try:
        ds = load_dataset(args.dataset, test_size=args.test_size, val_size=args.val_size, seed=args.seed,
                          standardize_features=False, n_samples=args.n_samples, noise=args.noise)
    except ValueError as e:
        raise UsageError(str(e)) from None
    except MemoryError:          # --n-samples beyond the memory: no numpy traceback
        raise UsageError(f"{args.dataset} of {args.n_samples} samples does not fit in memory: give a smaller "
                         "--n-samples") from None
    sizes = _resolve_layers(args, ds)
    if args.loss in FUSED_OUTPUT and args.output_activation != "identity":
        raise UsageError(f"--loss {args.loss} takes {fused_output_text(args.loss)}: "
                         f"--output-activation must be identity, not {args.output_activation}")
    if len(sizes) == 2 and args.activation is not _TRAIN_ACTIVATION:   # given, and it would be dropped unseen
        raise UsageError(f"--layers {','.join(map(str, sizes))} has no hidden layer to give --activation "
                         f"{','.join(args.activation)}; the output's activation is --output-activation")
    activation = _hidden_activation(args.activation, len(sizes) - 2)
    opt = _make_optimizer(args)
    comm = None
    if args.distributed:
        if args.grad_norms:
            raise UsageError("--grad-norms is not supported with --distributed")
        from . import distributed

        try:
            comm = distributed.init(backend=args.backend)   # picks this rank's GPU before the backend starts
        except (RuntimeError, ImportError) as e:    # CuPy missing, no device: as _make_backend says it
            raise UsageError(f"backend {args.backend!r} is not usable here: {e}") from None
    root = comm is None or comm.is_root
    say = print if root else (lambda *a, **k: None)   # only rank 0 prints
    backend = _make_backend(args.backend)
    try:
        net = MLP(sizes, activation=activation, output_activation=args.output_activation, loss=args.loss,
                  backend=backend, dtype=args.dtype, seed=args.seed, init=args.init, precision=args.precision)
    except (ValueError, TypeError, MemoryError) as e:
        raise UsageError(str(e)) from None

    n_out = sizes[-1]
    Y_train = targets_for(ds.y_train, args.loss, n_out, np.float64)
    held = "validation" if len(ds.y_val) else "test"
    X_held, y_held = (ds.X_val, ds.y_val) if len(ds.y_val) else (ds.X_test, ds.y_test)
    Y_held = targets_for(y_held, args.loss, n_out, np.float64)
    say(f"data: {ds.summary()}")
    acts = activation if isinstance(activation, str) else ','.join(activation)
    say(f"network: {sizes}, {'no hidden layer' if len(sizes) == 2 else 'activation ' + acts}, "
        f"output {args.output_activation}, loss {args.loss}, {net.n_params} parameters, {args.dtype}, "
        + (f"precision {args.precision}, " if args.precision != "float32" else "") + f"init {args.init}"
        + (", inputs standardised by the network" if args.standardize else ""))
    say(f"training: {opt!r}, {args.epochs} epochs of batch {args.batch_size}, seed {args.seed}; "
        f"backend {net.backend.describe()}")
    if comm is not None:
        say(f"distributed: {comm.size} ranks, gradients summed over {comm.transport}")

    report = _EpochReport(ds, X_held, y_held, held, args.epochs, args.progress and root, show=root)
    t0 = time.perf_counter()
    try:
        net.fit(ds.X_train, Y_train, epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
                shuffle=True, validation=(X_held, Y_held), standardize=args.standardize, callbacks=[report], verbose=0,
                grad_norms=args.grad_norms, comm=comm)
    except ValueError as e:      # data fit refuses, e.g. features beyond the dtype's range (a huge --noise)
        raise UsageError(f"the {ds.name} data cannot be trained on: {e}") from None
    except FloatingPointError as e:
        if root:     # with --distributed every rank raises the same error (decided on the summed losses)
            print(f"gpubp train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gpubp train: interrupted", file=sys.stderr)
        return 130
    finally:
        report.close()
    history = report.history
    total = time.perf_counter() - t0
    Y_test = targets_for(ds.y_test, args.loss, n_out, np.float64)
    test_loss = net.evaluate(ds.X_test, Y_test)["loss"]
    test_acc = accuracy(net, ds.X_test, ds.y_test)
    n_test = len(ds.y_test)
    say(f"trained {args.epochs} epochs in {total:.1f} s")
    say(f"test loss {test_loss:.4f}")
    say(f"test accuracy {test_acc:.4f} ({int(round(test_acc * n_test))}/{n_test})")
    if args.save and root:
        try:
            net.save(args.save, metadata={"dataset": ds.name, "task": "classification"})
        except OSError as e:          # e.g. the disk filled up: the previous file is intact
            print(f"gpubp train: could not write the checkpoint {args.save}: {e}", file=sys.stderr)
            return 1
        print(f"saved checkpoint to {args.save}" + (" (the network keeps its input standardisation: "
                                                      "predict on raw features)" if args.standardize else ""))
    if args.plot and root:
        from .plotting import plot_grad_norms, plot_history

        try:
            plot_history(history, args.plot, title=f"{ds.name}: {sizes} {args.loss}, {opt!r}")
            if args.grad_norms:
                plot_grad_norms(history, _grad_norms_path(args.plot), title=f"{ds.name}: {sizes}, init {args.init}")
        except OSError as e:
            print(f"gpubp train: could not write the plot {args.plot}: {e}", file=sys.stderr)
            return 1
        print(f"saved curves to {args.plot}" +
              (f" and gradient norms to {_grad_norms_path(args.plot)}" if args.grad_norms else ""))
    return 0


# ---------------------------------------------------------------- predict
#: file suffixes `gpubp predict` reads and writes
DATA_SUFFIXES = (".npy", ".csv")


def _add_predict(sub):
    p = sub.add_parser(
        "predict", help="predict with a saved checkpoint on data from a .npy or .csv file",
        description="Load a checkpoint written by `gpubp train --save` (or MLP.save) and predict on DATA, "
                    "a .npy array or a .csv file of numbers (one sample per line, comma-separated, cells optionally "
                    "quoted; a first line that is not all numbers is a header, see --header; blank lines and '#' "
                    "comments are skipped). The network "
                    "applies the input standardisation it was trained with. Prints one prediction per line (a class "
                    "label for a network trained by `gpubp train`, whatever its loss; MLP.predict's value for "
                    "other checkpoints), or "
                    "writes them to --out (.npy or .csv by suffix; the file is replaced only once it is complete).",
        formatter_class=_DefaultsHelpFormatter)
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file (.npz)")
    p.add_argument("data", metavar="DATA", help="the samples: a .npy or .csv file, shape (N, n_inputs)")
    p.add_argument("--proba", action="store_true",
                   help="class probabilities instead of labels (networks trained with a cross-entropy loss)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write the predictions to FILE (.npy or .csv) instead of printing them")
    p.add_argument("--header", choices=HEADER_CHOICES, default="auto",
                   help="whether a .csv file's first line is a header: auto (when it is not all numbers), yes "
                        "(skipped whatever it holds, e.g. the column numbers 0,1,2,... pandas writes for unnamed "
                        "columns), no")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="backend")
    p.set_defaults(func=cmd_predict)
    return p


@_os_problem
def _readable_problem(path) -> str | None:
    """Why `path` cannot be read as a file (None when it can be tried)."""
    p = Path(path)
    if not p.exists():
        return "does not exist"
    if not p.is_file():
        return "is not a file"
    return None


def _check_readable(path, what):
    why = _readable_problem(path)
    if why is not None:
        raise UsageError(f"{what} {path!r} {why}")
    return Path(path)


def _suffix(path, what):
    suf = Path(path).suffix.lower()
    if suf not in DATA_SUFFIXES:
        raise UsageError(f"{what} {path!r} must end in {' or '.join(DATA_SUFFIXES)} (got {suf or 'no suffix'!r})")
    return suf


def _csv_cells(line):
    """The comma-separated cells of one CSV line, without a '#' comment (as np.savetxt writes headers).

    A cell may be quoted, as CSV writers quote (`"5.1"`, `"width, cm"`, a quote inside doubled): the
    cell is what the quotes hold."""
    line = line.split("#", 1)[0]
    if '"' not in line:
        return [c.strip() for c in line.split(",")]
    return [c.strip() for c in next(csv.reader([line], skipinitialspace=True))]


#: `gpubp predict --header`: whether the first line of a CSV file is a header
HEADER_CHOICES = ("auto", "yes", "no")


def _csv_text(path, raw: bytes) -> str:
    """The text of a CSV file: UTF-16 where a byte-order mark says so, else UTF-8 (a byte-order mark is not
    a cell), else Latin-1. Numbers are ASCII in each, so a header in a spreadsheet's 8-bit encoding
    ("Temp\xe9rature" in cp1252) is a header still; a byte that is not UTF-8 anywhere else is in a cell
    that is no number, refused by its line and column."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as e:
            raise UsageError(f"DATA {path!r} starts as UTF-16 text but is not ({e.reason} at byte "
                             f"{e.start})") from None
    nul = raw.find(b"\0")   # no text file holds one: UTF-16 without its byte-order mark, or binary data
    if nul >= 0:
        raise UsageError(f"DATA {path!r} is not a CSV file of numbers: it holds NUL bytes (the first at byte "
                         f"{nul}), as binary data or UTF-16 text without a byte-order mark do")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _read_csv(path, header="auto") -> tuple[np.ndarray, list[int]]:
    """The numbers of a CSV file, one sample per line, and the line number (from 1) of each sample.

    `header` "auto": a first line that is not all numbers is a header; "yes": the first line is a
    header whatever it holds (column numbers, as pandas writes for unnamed columns); "no": there is none.
    Blank lines and '#' comments are skipped. Every error names the line and the column at fault; no
    line of numbers is skipped unless `header` is "yes".
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"DATA {path!r} cannot be read: {e.strerror or e}") from None
    text = _csv_text(path, raw)
    # lines end at \n, \r\n or \r only: str.splitlines also breaks at \x85 (an ellipsis in cp1252), \x0c,
    # \u2028 and more, which split a header in two and put every later line number off
    lines = re.split(r"\r\n|\n|\r", text)
    rows = [(n, line) for n, line in enumerate(lines, start=1) if line.split("#", 1)[0].strip()]
    first_cells = _csv_cells(rows[0][1]) if rows else []
    warning = None                     # said once the samples are read: an error in them says enough
    if rows and (header == "yes" or (header == "auto" and not all(_is_number(c) for c in first_cells))):
        first, head = rows.pop(0)      # the first line holds names: a header
        if not rows:
            why = ("--header yes" if header == "yes" else
                   "it is not comma-separated numbers, so it was taken as a header")
            raise UsageError(f"DATA {path!r} holds no samples: its only line of values, line {first} "
                             f"({head.strip()[:60]!r}), is the header ({why})" + _separator_hint(head))
        numbers = [c for c in first_cells if _is_number(c)]
        if header == "auto" and numbers and not _column_numbers(numbers):
            # numbers beside a cell that is none ("5.1,,1.4", "5.1,NA,1.4", a trailing comma): a sample with a
            # value missing rather than names; a header of names (or of column numbers, as pandas writes) has none
            col = next(i for i, c in enumerate(first_cells, start=1) if not _is_number(c))
            warning = (f"gpubp predict: warning: line {first} of DATA {path!r} ({head.strip()[:60]!r}) was taken as "
                       f"a header, as column {col} is {first_cells[col - 1]!r}, not a number, but {len(numbers)} of "
                       f"its {len(first_cells)} cells are numbers: if it is a sample with a value missing, it was "
                       "skipped; --header no reads it (and reports the missing value), --header yes skips it "
                       "without this warning")
    elif header == "auto" and len(first_cells) >= 2 and _column_numbers(first_cells):
        print(f"gpubp predict: warning: line {rows[0][0]} of DATA {path!r} ({rows[0][1].strip()[:60]!r}) counts "
              "the columns, as a header of unnamed columns does (pandas' to_csv), but it was read as a sample; "
              "--header yes skips it, --header no reads it without this warning", file=sys.stderr)
    lines = [n for n, _ in rows]
    if not rows:
        return np.zeros((0, 0)), lines
    try:                               # numpy's parser, fast; on an error, find the line and the cell
        X = np.loadtxt([line for _, line in rows], delimiter=",", comments="#", ndmin=2, dtype=np.float64)
    except ValueError:
        X = None
    if X is None or X.shape[0] != len(rows):
        width, values = None, []
        for n, line in rows:
            cells = _csv_cells(line)
            bad = [i for i, c in enumerate(cells, start=1) if not _is_number(c)]
            if bad:
                cell = cells[bad[0] - 1]
                raise UsageError(f"DATA {path!r} is not a CSV file of numbers: line {n}, column {bad[0]} is "
                                 f"{cell!r}" + _separator_hint(cell))
            if width is None:
                width = len(cells)
            elif len(cells) != width:
                raise UsageError(f"DATA {path!r}: line {n} has {len(cells)} values but line {lines[0]} has "
                                 f"{width}; every sample needs the same number of values")
            values.append([float(c) for c in cells])
        X = np.array(values, dtype=np.float64)
    if warning is not None:
        print(warning, file=sys.stderr)
    return X, lines


def _separator_hint(text) -> str:
    """A hint for text that separates its numbers by semicolons or tabs, which a CSV file of gpubp's does not."""
    return "; cells are separated by commas, not semicolons or tabs" if (";" in text or "\t" in text) else ""


def _column_numbers(cells) -> bool:
    """Whether the cells are the integers 0, 1, ..., n-1 or 1, 2, ..., n (written as integers)."""
    if not all(c.isascii() and c.isdigit() for c in cells):
        return False
    values = [int(c) for c in cells]
    return values in (list(range(len(cells))), list(range(1, len(cells) + 1)))


def _is_number(text) -> bool:
    """Whether a CSV cell is a number as numpy's parser reads one: Python's float() alone also takes
    underscores ("1_0" is 10) and non-ASCII digits, which np.loadtxt refuses."""
    if not text.isascii() or "_" in text:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


#: the first bytes of a .npy array and of a zip archive (.npz, a checkpoint)
_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK\x03\x04"


def _read_npy(path) -> np.ndarray:
    """The array in the .npy file `path`, read without pickle; a UsageError says what else the file is.

    np.load alone returns an archive for a .npz (a checkpoint named .npy) and, for any other bytes, says
    the file "contains pickled data" and suggests loading it unsafely: its first bytes decide here."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            if magic != _NPY_MAGIC:
                what = ("a zip archive (.npz, such as a checkpoint)" if magic.startswith(_ZIP_MAGIC) else
                        "the file is empty" if not magic else "it does not begin with the .npy format's magic bytes")
                raise UsageError(f"DATA {path!r} is not a .npy array: {what}")
            _check_npy_size(path, f)
            f.seek(0)
            return np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UsageError(f"DATA {path!r} cannot be read as a .npy array ({e})") from None
    except MemoryError:
        raise UsageError(f"DATA {path!r} does not fit in memory") from None


def _check_npy_size(path, f) -> None:
    """Refuse a .npy file whose header declares more data than the file holds (cut short or damaged), before
    numpy allocates the declared shape (a MemoryError for a large one)."""
    f.seek(0)
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:                   # another version: np.load says what it makes of it
        return
    shape, _, dtype = read(f)
    if dtype.hasobject:                # a pickle: np.load refuses it
        return
    need = math.prod(shape) * dtype.itemsize
    have = os.fstat(f.fileno()).st_size - f.tell()
    if have < need:
        raise UsageError(f"DATA {path!r} is cut short: its header declares shape {shape} of {dtype} ({need} bytes) "
                         f"but only {have} follow")


def _read_data(path, header="auto") -> np.ndarray:
    """The samples in `path` (.npy or .csv) as a 2-D float array; a UsageError says what is wrong.
    `header`: whether a CSV file's first line is a header (see `_read_csv`)."""
    lines = None
    if _suffix(path, "DATA") == ".npy":
        X = _read_npy(path)
        if X.ndim == 1:
            X = X.reshape(1, -1)   # one sample
    else:
        X, lines = _read_csv(path, header)
    if X.dtype.kind not in "biuf" or X.ndim != 2:
        raise UsageError(f"DATA {path!r} must hold a 2-D numeric array (samples x inputs); got "
                         f"shape {X.shape} of {X.dtype}")
    if X.shape[0] == 0:
        raise UsageError(f"DATA {path!r} holds no samples")
    if X.dtype.kind == "f":
        bad = ~np.isfinite(X).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            where = f"line {lines[i]}" if lines is not None else f"index {i}"
            raise UsageError(f"DATA {path!r} contains NaN or infinity ({int(bad.sum())} of {X.shape[0]} samples, "
                             f"the first at {where})")
    return X


def _write_predictions(path, P, suffix) -> None:
    """Write `P` to `path` (.npy or .csv) atomically: a temporary file in the same folder, then renamed over
    `path`, so a failed write leaves no partial file (and any previous file as it was)."""
    from .files import atomic_write

    with atomic_write(path) as f:     # a file object: numpy writes to exactly `path`, adding no suffix
        if suffix == ".npy":
            np.save(f, P, allow_pickle=False)
        else:
            fmt = "%d" if P.dtype.kind in "biu" else _float_format(P.dtype)
            np.savetxt(f, P, fmt=fmt, delimiter=",")


def _float_format(dtype) -> str:
    """The printf format that writes every value of `dtype` so that it reads back exactly: 9 significant
    digits for float32, 17 for float64."""
    return "%.9g" if np.dtype(dtype).itemsize <= 4 else "%.17g"


def _format_rows(P) -> list[str]:
    P = np.asarray(P)
    ffmt = _float_format(P.dtype)
    fmt = (lambda v: str(int(v))) if P.dtype.kind in "biu" else (lambda v: ffmt % float(v))
    if P.ndim == 1:
        return [fmt(v) for v in P]
    return [",".join(fmt(v) for v in row) for row in P]


def _predicts_classes(net) -> bool:
    """Whether `net` is a classifier trained by `gpubp train` (its checkpoint's metadata says so; older ones
    name one of the bundled data sets), whose predictions are class labels whatever its loss: one-hot
    targets under mse or binary_cross_entropy decode to the arg-max class, as `gpubp train`'s accuracy did."""
    from .data import DATASETS

    meta = net.metadata if isinstance(net.metadata, dict) else {}
    return meta.get("task") == "classification" or ("task" not in meta and meta.get("dataset") in DATASETS)


def cmd_predict(args) -> int:
    from .data import labels_from_outputs
    from .network import MLP

    if Path(args.data).suffix.lower() == ".npz" and Path(args.checkpoint).suffix.lower() in DATA_SUFFIXES:
        raise UsageError(f"DATA {args.data!r} looks like a checkpoint and CHECKPOINT {args.checkpoint!r} like data: "
                         "the checkpoint comes first (gpubp predict CHECKPOINT DATA)")
    _check_readable(args.checkpoint, "CHECKPOINT")
    _check_readable(args.data, "DATA")
    _suffix(args.data, "DATA")
    out_suffix = None
    if args.out is not None:
        out_suffix = _suffix(args.out, "--out")
        _check_writable(args.out, "--out")
        for what, path in (("DATA", args.data), ("CHECKPOINT", args.checkpoint)):
            if Path(args.out).exists() and Path(args.out).samefile(path):
                raise UsageError(f"--out {args.out!r} is the {what} file: the predictions would replace it; "
                                 "give another file")
    backend = _make_backend(args.backend)
    X = _read_data(args.data, args.header)
    try:
        net = MLP.load(args.checkpoint, backend=backend)
    except (ValueError, MemoryError) as e:   # MemoryError: a network too large for the backend, as in train
        raise UsageError(str(e)) from None
    except OSError as e:           # no permission to read it, an I/O error: the file's, not gpubp's
        raise UsageError(f"CHECKPOINT {args.checkpoint!r} cannot be read: {e.strerror or e}") from None
    if X.shape[1] != net.sizes[0]:
        hint = ""
        if X.shape[1] == net.sizes[0] + 1 and X.shape[0] > 1 and _column_numbers([f"{v:g}" for v in X[:, 0]]):
            hint = ("; its first column counts the rows (0, 1, 2, ...), as the index pandas' to_csv writes: "
                    "write the file with index=False, or drop that column")
        elif X.shape[0] == 1 and net.sizes[0] == 1:   # a 1-D .npy (or one line) of values: one sample
            hint = (f"; that is one sample of {X.shape[1]} values: for {X.shape[1]} samples of one input give one "
                    "value per line, or save a column (np.save(FILE, x.reshape(-1, 1)))")
        raise UsageError(f"DATA {args.data!r} has {X.shape[1]} columns but the network takes {net.sizes[0]} "
                         f"inputs{hint}")
    if args.proba and net.loss not in LOGIT_LOSSES:
        raise UsageError(f"--proba gives class probabilities of a network trained with a cross-entropy loss; "
                         f"this one was trained with {net.loss} (predict_proba is not defined): drop --proba")
    try:
        if args.proba:
            P = net.predict_proba(X)
        elif _predicts_classes(net):   # the rule `gpubp train` measured its accuracy with, for every loss
            P = labels_from_outputs(net.backend.to_numpy(net.forward(X)), net.loss)
        else:
            P = net.predict(X)
    except (ValueError, TypeError) as e:
        raise UsageError(f"DATA {args.data!r}: {e}") from None
    P = np.asarray(P)
    if args.out is None:
        print("\n".join(_format_rows(P)))   # print: discarded, not an error, when stdout is closed (None)
        return 0
    try:
        _write_predictions(args.out, P, out_suffix)
    except OSError as e:               # e.g. the disk filled up: nothing partial is left
        print(f"gpubp predict: could not write --out {args.out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"wrote {len(P)} predictions to {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- explain
def _add_explain(sub):
    from .explain import DEFAULT_EXAMPLE, EXAMPLES

    p = sub.add_parser(
        "explain", help="trace one backprop step: every z, a, dL/da, g'(z), delta, dW, db and the update",
        description="Run one training step of a gpubp.MLP (numpy backend, float64, plain SGD) and print every "
                    "intermediate it computed: per layer z and a, then dL/da, g'(z), delta, dW, db and W^T delta, "
                    "then the updated weights and the loss after the step. By default the 2-2-1 example "
                    f"('{DEFAULT_EXAMPLE}'): input 0.5,0.8, target 1, sigmoid everywhere, mse, learning rate "
                    "0.1, with the interactive visualiser's initial weights. Options override the example's "
                    "values (--activation changes the hidden layers only); with other --layers or a --seed the "
                    "weights are MLP(seed=...)'s initialisation. Numbers may be separated by commas or spaces, "
                    "samples by ';' (write a first negative number as --input=-0.5,0.3).",
        formatter_class=_DefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--example", choices=tuple(EXAMPLES), default=None,
                     help=f"a named example ({DEFAULT_EXAMPLE} when nothing else is given; "
                          "sigmoid-2-2-1-lr0.5 is the same at learning rate 0.5; classic is the 2-2-2 "
                          "half_sse worked example)")
    src.add_argument("--weights", metavar="FILE.json", default=None,
                     help='explicit weights: {"layers": [{"W": [[...]], "b": [...]}, ...]}, optionally with '
                          '"input", "target", "activation", "output_activation", "loss", "lr"')
    p.add_argument("--layers", type=_sizes, default=None, metavar="N0,...,NL", help="layer sizes")
    p.add_argument("--input", nargs="+", default=None, metavar="X", help="the input sample(s)")
    p.add_argument("--target", nargs="+", default=None, metavar="Y",
                   help="the target(s); a class index for cross_entropy")
    p.add_argument("--activation", type=_activations, default=None, metavar="NAME[,NAME...]",
                   help="hidden activation(s) (default sigmoid)")
    p.add_argument("--output-activation", choices=ACTIVATIONS, default=None,
                   help="output activation (default: identity for the cross-entropy losses and poisson, else the "
                        "example's, else the hidden one)")
    p.add_argument("--loss", choices=LOSSES, default=None, help="loss (default mse)")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default 0.1)")
    p.add_argument("--seed", type=_seed, default=None,
                   help="initialise the weights as MLP(seed=SEED) does instead of taking the example's or "
                        "the --weights file's (whose other values are kept)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the trace as strict JSON")
    out.add_argument("--step", action="store_true",
                     help="print one stage at a time (forward layer by layer, loss, backward layer by "
                          "layer, update), waiting for Enter between stages when the input is a terminal")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw the network with its values (nodes: z and a; edges: W and dW) to a PNG")
    p.add_argument("--digits", type=_positive_int, default=None,
                   help="round the text's numbers to this many significant digits (default: every digit)")
    p.set_defaults(func=cmd_explain)
    return p


def cmd_explain(args) -> int:
    from . import explain

    if args.plot is not None:          # "" too: refused, not taken for "no plot"
        _check_writable(args.plot, "--plot")
        _check_png(args.plot)
        require("matplotlib", "plot", "--plot")   # before the step is traced and printed
    weights, is_text, wname = args.weights, False, None
    if args.example is not None:
        weights, is_text = explain._example_text(args.example), True
        wname = f"example {args.example!r} ({explain.example_path(args.example)})"
    elif weights is not None:
        wname = f"file {weights}"
    act = args.activation
    if act is not None and len(act) == 1:
        act = act[0]
    try:
        prob = explain.make_problem(layer_sizes=args.layers, input=args.input, target=args.target,
                                    activation=act, output_activation=args.output_activation, loss=args.loss,
                                    lr=args.lr, seed=args.seed, weights=weights, weights_is_text=is_text,
                                    weights_name=wname)
        trace = explain.trace_step(**prob.trace_args())
    except (ValueError, TypeError, MemoryError) as e:   # MemoryError: a network too large, said by MLP
        raise UsageError(str(e)) from None
    trace["weights_from"] = prob.weights_from
    trace["description"] = prob.description
    if prob.expected:
        trace["expected"] = prob.expected
    if args.plot:
        from .plotting import plot_trace

        try:
            plot_trace(trace, args.plot)
        except OSError as e:
            raise UsageError(f"cannot write the plot {args.plot}: {e.strerror or e}") from None
    if args.json:
        print(explain.trace_json(trace))
    elif args.step:
        interactive = sys.stdin is not None and sys.stdin.isatty()   # None: started with stdin closed
        explain.print_stages(trace, args.digits, interactive=interactive)
    else:
        print(explain.format_trace(trace, args.digits), end="")
    if args.plot and not args.json:
        print(f"network drawn to {args.plot}")
    return 0


# ---------------------------------------------------------------- gradcheck
def _add_gradcheck(sub):
    p = sub.add_parser(
        "gradcheck", help="compare analytic gradients with central finite differences",
        description="Compare the backend's analytic gradients (MLP.loss_and_grads) with central finite "
                    "differences and print the relative error of each layer's dW and db "
                    "(||analytic - numeric|| / max(||analytic||, ||numeric||), or the worst entry with "
                    "--kind max). Exits with status 1 when an error exceeds --threshold. A layer whose gradient "
                    "vanishes next to the loss (the first layers of a deep sigmoid network) can fail although "
                    "its gradient is right: its differences are the finite differences' rounding, about "
                    "1e-16 |loss| / eps (the max|diff| column); a larger --eps (1e-3) lowers it.",
        formatter_class=_DefaultsHelpFormatter)
    p.add_argument("--layers", type=_sizes, default=[4, 6, 5, 3], metavar="N0,...,NL", help="layer sizes")
    p.add_argument("--activation", type=_activations, default=["tanh"], metavar="NAME[,NAME...]",
                   help="hidden activation(s)")
    p.add_argument("--output-activation", choices=ACTIVATIONS, default="identity",
                   help="output activation (must be identity with the cross-entropy losses, which take "
                        "logits, with poisson, which takes log-rates, and so with --all-losses)")
    p.add_argument("--loss", choices=LOSSES, default="mse", help="loss")
    p.add_argument("--all-activations", action="store_true", help="check every hidden activation in turn")
    p.add_argument("--all-losses", action="store_true", help="check every loss in turn")
    p.add_argument("--backend", choices=BACKENDS, default="auto", help="backend")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float64",
                   help="dtype (finite differences need float64; float32 only with a larger --eps and "
                        "--threshold)")
    p.add_argument("--batch", type=_positive_int, default=5, help="samples in the random batch")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the weights and the batch")
    p.add_argument("--eps", type=_positive_float, default=1e-5, help="finite-difference step")
    p.add_argument("--threshold", type=_positive_float, default=1e-6, help="largest acceptable error")
    p.add_argument("--kind", choices=("norm", "max"), default="norm",
                   help="per-layer norm-wise relative error, or the worst single entry")
    p.set_defaults(func=cmd_gradcheck)
    return p


def cmd_gradcheck(args) -> int:
    from .gradcheck import check, max_abs_errors, random_problem
    from .network import MLP

    sizes = args.layers
    if len(sizes) < 2:
        raise UsageError("--layers needs at least the input and output sizes")
    n_params = sum(o * i + o for i, o in zip(sizes[:-1], sizes[1:]))
    if n_params > 20000:
        raise UsageError(f"the network has {n_params} parameters; finite differences take two passes per "
                         "parameter: use a smaller one (at most 20000)")
    if args.all_activations and len(sizes) == 2:
        raise UsageError(f"--all-activations checks each hidden activation, but --layers "
                         f"{','.join(map(str, sizes))} has no hidden layer (add one, e.g. --layers "
                         f"{sizes[0]},{max(sizes)},{sizes[1]})")
    acts_list = [[a] for a in ACTIVATIONS] if args.all_activations else [args.activation]
    loss_list = list(LOSSES) if args.all_losses else [args.loss]
    for loss in loss_list:   # the networks' own rule (losses.check_outputs), said with the flags that set it
        try:
            check_outputs(loss, sizes[-1])
        except ValueError:
            raise UsageError(f"--loss {loss} needs at least 2 outputs (--layers ...,N with N >= 2): the softmax "
                             "of one logit is always 1, so its loss and gradients are identically zero and the "
                             "check would pass whatever the code computes") from None
    if args.output_activation != "identity":   # refused as `gpubp train` refuses it, not replaced silently
        fused = [l for l in loss_list if l in FUSED_OUTPUT]
        if fused:
            what = (f"--all-losses checks {', '.join(fused[:-1])} and {fused[-1]}, which take their outputs "
                    f"raw ({'; '.join(f'{l}: {fused_output_text(l)}' for l in fused)})" if args.all_losses
                    else f"--loss {fused[0]} takes {fused_output_text(fused[0])}")
            raise UsageError(f"{what}: --output-activation must be identity, not {args.output_activation}"
                             + (" (check that output activation with --loss mse or half_sse)"
                                if args.all_losses else ""))
    backend = _make_backend(args.backend)
    configs = []                   # every network is built (and so checked) before anything is printed
    for loss in loss_list:
        for act in acts_list:
            out_act = args.output_activation
            activation = _hidden_activation(act, len(sizes) - 2)
            try:
                net = MLP(sizes, activation=activation, output_activation=out_act, loss=loss, backend=backend,
                          dtype=args.dtype, seed=args.seed)
            except (ValueError, TypeError) as e:
                raise UsageError(str(e)) from None
            configs.append((loss, act, out_act, net))
    print(f"gradcheck: layers {sizes}, backend {backend.describe()}, {args.dtype}, batch {args.batch}, "
          f"eps {args.eps:g}, {args.kind} relative error, threshold {args.threshold:g}")
    worst, failures, runs = 0.0, [], 0
    for loss, act, out_act, net in configs:
        try:
            X, Y = random_problem(net, args.batch, args.seed)
            value, errs, an, nu = check(net, X, Y, args.eps, args.kind)
        except MemoryError:
            raise UsageError(f"--batch {args.batch} does not fit in memory: give a smaller one") from None
        absd = max_abs_errors(an, nu)
        runs += 1
        name = ",".join(act) if len(sizes) > 2 else "no hidden layer"   # an activation unused is not named
        print(f"\n{name} (output {out_act}), loss {loss} = {value:.6g}")
        print(f"  {'layer':>5}  {'shape':>9}  {'rel err W':>10}  {'rel err b':>10}  {'max|diff|':>10}")
        for l, ((ew, eb), (dw, db)) in enumerate(zip(errs, absd), start=1):
            flag = "" if max(ew, eb) <= args.threshold else "  FAIL"
            shape = f"{sizes[l]}x{sizes[l - 1]}"
            print(f"  {l:>5}  {shape:>9}  {ew:>10.2e}  {eb:>10.2e}  {max(dw, db):>10.2e}{flag}")
            worst = max(worst, ew, eb)
        case_worst = max(max(e) for e in errs)
        if not case_worst <= args.threshold:
            failures.append(f"{name}/{loss} ({case_worst:.2e})")
    print()
    if failures:
        print(f"worst relative error {worst:.3e} > threshold {args.threshold:g}: FAILED in "
              f"{len(failures)} of {runs}: {', '.join(failures)}")
        if args.dtype == "float32" and args.eps < 1e-2:    # a correct network fails too: said, as in the help
            print(f"(float32 resolves the loss to about 1e-7 of itself, so differences over eps {args.eps:g} are "
                  "mostly its rounding: check in float64, or give float32 a larger step and threshold, "
                  "e.g. --eps 1e-2 --threshold 1e-2)")
        return 1
    print(f"worst relative error {worst:.3e} <= threshold {args.threshold:g}: OK ({runs} "
          f"configuration{'s' if runs > 1 else ''})")
    return 0


# ---------------------------------------------------------------- info
def _add_info(sub):
    p = sub.add_parser("info", help="versions, backends and the GPU",
                       description="Print the versions of gpubp, Python, numpy, CuPy and PyTorch (when "
                                   "installed), the backends available, and the GPU if there is one.")
    p.add_argument("--json", action="store_true", help="print the same as JSON")
    p.set_defaults(func=cmd_info)
    return p


def _dist_version(*names):
    from importlib import metadata

    for n in names:
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return None


def _gpu_info() -> tuple[list[dict], str]:
    """GPUs as seen by CuPy (or nvidia-smi when CuPy is absent), and a note on how they were found."""
    note = ""
    try:
        import cupy

        rt = cupy.cuda.runtime
        n = rt.getDeviceCount()
        drv = rt.driverGetVersion()
        rtv = rt.runtimeGetVersion()
        gpus = []
        for i in range(n):
            pr = rt.getDeviceProperties(i)
            name = pr.get("name", b"?")
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else str(name),
                         "memory_gib": round(pr.get("totalGlobalMem", 0) / 2**30, 2),
                         "compute_capability": f"{pr.get('major', '?')}.{pr.get('minor', '?')}",
                         "multiprocessors": pr.get("multiProcessorCount"),
                         "driver": f"CUDA {drv // 1000}.{drv % 1000 // 10}",
                         "runtime": f"CUDA {rtv // 1000}.{rtv % 1000 // 10}"})
        return gpus, "via CuPy"
    except ImportError:
        note = "CuPy is not installed"
    except Exception as e:   # CuPy without a driver or device
        note = f"CuPy sees no GPU ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name,memory.total,compute_cap,driver_version",
                                "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
            gpus = []
            for i, row in enumerate(r.stdout.strip().splitlines()):
                f = [x.strip() for x in row.split(",")]
                if len(f) == 4:
                    mem = float(f[1]) / 1024 if f[1].replace(".", "").isdigit() else None
                    gpus.append({"index": i, "name": f[0], "memory_gib": mem and round(mem, 2),
                                 "compute_capability": f[2], "driver": f[3]})
            if gpus:
                return gpus, f"{note}; found by nvidia-smi"
        except (OSError, subprocess.SubprocessError):
            pass
    return [], note


def cmd_info(args) -> int:
    import gpubp

    from .backends import available_backends

    vers = {"gpubp": getattr(gpubp, "__version__", "?"),
            "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
            "numpy": np.__version__}
    cupy_v = _dist_version("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x", "cupy-rocm-5-0")
    if cupy_v is None:
        try:
            import cupy

            cupy_v = cupy.__version__
        except Exception:
            pass
    vers["cupy"] = cupy_v or "not installed"
    vers["torch"] = _dist_version("torch") or "not installed"
    for extra in ("scikit-learn", "tqdm", "matplotlib"):
        vers[extra] = _dist_version(extra) or "not installed"
    try:
        backends = available_backends()
    except Exception as e:
        backends = ["numpy"]
        print(f"gpubp info: checking the CUDA backend failed: {e}", file=sys.stderr)
    gpus, note = _gpu_info()
    info = {"versions": vers, "platform": platform.platform(), "backends": backends, "gpus": gpus}
    if note:
        info["gpu_note"] = note
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in vers.items():
        print(f"{k:>13}: {v}")
    print(f"{'platform':>13}: {info['platform']}")
    print(f"{'backends':>13}: {', '.join(backends)}" + ("" if "cuda" in backends else "  (cuda: no usable GPU)"))
    if gpus:
        for g in gpus:
            extra = f", {g['multiprocessors']} SMs" if g.get("multiprocessors") else ""
            rt = f", runtime {g['runtime']}" if g.get("runtime") else ""
            print(f"{'gpu ' + str(g['index']):>13}: {g['name']}, {g['memory_gib']} GiB, compute capability "
                  f"{g['compute_capability']}{extra}, driver {g['driver']}{rt}")
    else:
        print(f"{'gpu':>13}: none found" + (f" ({note})" if note else ""))
    return 0


# ---------------------------------------------------------------- external subcommands and main
def run_external(name, argv) -> int:
    """Run the subcommand `name` from its module's `main(argv)`, imported only now."""
    modname, _ = EXTERNAL[name]
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            print(f"gpubp {name}: not available in this installation (the module {modname} is missing)",
                  file=sys.stderr)
            return 2
        raise
    entry = getattr(mod, "main", None)
    if entry is None:
        print(f"gpubp {name}: {modname} has no main(argv)", file=sys.stderr)
        return 2
    rc = entry(list(argv))
    return 0 if rc is None else int(rc)


def build_parser():
    from . import __version__

    p = argparse.ArgumentParser(prog="gpubp", description="Dense neural networks trained by backprop, "
                                "on numpy or on fused CUDA kernels.")
    p.add_argument("--version", action="version", version=f"gpubp {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    subs = {"train": _add_train(sub), "predict": _add_predict(sub), "explain": _add_explain(sub),
            "gradcheck": _add_gradcheck(sub), "info": _add_info(sub)}
    for name, (_, helptext) in EXTERNAL.items():   # parsed by their own modules; listed for --help
        sub.add_parser(name, help=helptext, add_help=False)
    return p, subs


def main(argv=None) -> int:
    """Run the command line `argv` (default `sys.argv[1:]`); returns the exit status.

    When the reader of the output goes away (`gpubp ... | head`), the command
    stops quietly with status 0: the rest of the output is discarded.
    """
    import warnings

    shown = warnings.formatwarning
    warnings.formatwarning = _format_warning    # "gpubp: Category: message", not a source location
    stderr = sys.stderr
    if stderr is None:             # started with stderr closed: print(..., file=None) would write into stdout
        sys.stderr = open(os.devnull, "w")
    try:
        try:
            rc = _main(argv)
        finally:                   # also after --help and usage errors (SystemExit)
            warnings.formatwarning = shown
            if stderr is None:
                sys.stderr.close()
                sys.stderr = stderr
            if sys.stdout is not None:   # None: started with stdout closed, where print() discards
                sys.stdout.flush()     # a closed pipe shows here, not at interpreter exit
        return rc
    except BrokenPipeError:
        _discard_stdout()
        return 0


def _format_warning(message, category, filename, lineno, line=None):
    return f"gpubp: {category.__name__}: {message}\n"


def _discard_stdout():
    """Point stdout at the null device, so that Python's final flush cannot fail again."""
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):   # not a real file (e.g. captured in tests)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _main(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTERNAL:
        return run_external(argv[0], argv[1:])
    parser, subs = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:       # said by the subcommand, with its usage (an external one, `gpubp --foo bench`: the top's)
        subs.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        subs[args.command].error(str(e))   # prints usage and the message, exits with status 2
    except MissingExtraError as e:         # an optional dependency is not installed: say which extra
        print(f"gpubp {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:              # Ctrl-C anywhere (train's fit says so itself): no traceback
        print(f"gpubp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
