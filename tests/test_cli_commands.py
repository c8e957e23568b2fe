"""The `gpubp` command line around the commands: dispatch (`main`, `_main`, the external subcommands, warnings),
`info` (and the GPUs CuPy or nvidia-smi report), `gradcheck`'s report, limits and refusals, `explain`'s unwritable
plot, and `train`'s options, per-epoch lines and the defaults its `--help` states."""

import json
import os
import re
import sys
import types

import pytest

from gpubp import cli
from support.cli import run, usage_error


# ---------------------------------------------------------------- dispatch
@pytest.mark.parametrize("name", sorted(cli.EXTERNAL))
def test_an_unknown_option_before_an_external_subcommand_is_a_usage_error(capsys, name):
    """`gpubp --foo bench` parsed `bench` as the command and looked for its parser among the built-in
    subcommands' (a KeyError, shown as a traceback): the unknown option is the top-level parser's usage error."""
    err = usage_error(capsys, "--foo", name)
    assert "gpubp: error: unrecognized arguments: --foo" in err and "usage: gpubp" in err
    # its -h is its module's: this parser only lists it, and has no help of its own for it to print
    err = usage_error(capsys, "--foo", name, "-h")
    assert "gpubp: error: unrecognized arguments: --foo -h" in err


def _external(monkeypatch, module):
    """`gpubp bench` runs `module` (a module object put in sys.modules, or a name to import)."""
    if isinstance(module, types.ModuleType):
        monkeypatch.setitem(sys.modules, module.__name__, module)
        module = module.__name__
    monkeypatch.setitem(cli.EXTERNAL, "bench", (module, "a stand-in"))


def test_an_external_subcommand_gets_its_arguments_and_its_status_is_the_exit_status(capsys, monkeypatch):
    seen = []
    fake = types.ModuleType("gpubp_fake_external")
    fake.main = lambda argv: seen.append(argv)          # returns None: success
    _external(monkeypatch, fake)
    assert cli.main(["bench", "--tiny"]) == 0 and seen == [["--tiny"]]
    fake.main = lambda argv: 0
    assert cli.main(["bench"]) == 0
    fake.main = lambda argv: True                        # a status as int() reads it
    assert cli.main(["bench"]) == 1


def test_an_external_module_without_main_is_reported_not_run(capsys, monkeypatch):
    _external(monkeypatch, types.ModuleType("gpubp_fake_external"))
    assert cli.main(["bench", "--tiny"]) == 2
    out, err = capsys.readouterr()
    assert err == "gpubp bench: gpubp_fake_external has no main(argv)\n" and out == ""


def test_an_external_module_missing_is_reported_but_its_own_missing_import_is_raised(capsys, monkeypatch, tmp_path):
    """Only the subcommand's own module missing means "not available in this installation"; a module it
    imports that is missing is an error of that module, raised as it is."""
    _external(monkeypatch, "gpubp_no_such_external_module")
    assert cli.main(["bench"]) == 2
    assert capsys.readouterr().err == ("gpubp bench: not available in this installation (the module "
                                       "gpubp_no_such_external_module is missing)\n")
    (tmp_path / "gpubp_fake_broken_external.py").write_text("import gpubp_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _external(monkeypatch, "gpubp_fake_broken_external")
    with pytest.raises(ModuleNotFoundError) as e:
        cli.main(["bench"])
    assert e.value.name == "gpubp_no_such_dependency"


def test_main_reads_sys_argv_when_given_no_argv(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gpubp", "gradcheck", "--layers", "2,2", "--backend", "numpy"])
    assert cli.main() == 0
    assert capsys.readouterr().out.startswith("gradcheck: layers [2, 2], backend numpy")


# ---------------------------------------------------------------- info
def _no_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)        # import cupy raises ImportError


def _nvidia_smi(monkeypatch, tmp_path, stdout):
    """An `nvidia-smi` first on PATH that prints `stdout` (and records its arguments)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nvidia-smi").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\ncat <<"EOF"\n' + stdout
                                       + "EOF\n")
    (bindir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir) + os.pathsep + os.environ.get("PATH", ""))
    return bindir / "args"


def _fake_cupy(monkeypatch, count=1, error=None, driver=13010, runtime=12010):
    """A CuPy whose runtime reports `count` H100s (CUDA versions as 1000 * major + 10 * minor: driver 13.1, runtime
    12.1 unless told), or raises `error`."""
    props = {"name": b"NVIDIA H100 80GB HBM3", "totalGlobalMem": 85_520_809_984, "major": 9, "minor": 0,
             "multiProcessorCount": 132}

    def count_devices():
        if error is not None:
            raise error
        return count
    rt = types.SimpleNamespace(getDeviceCount=count_devices, driverGetVersion=lambda: driver,
                               runtimeGetVersion=lambda: runtime, getDeviceProperties=lambda i: dict(props))
    fake = types.ModuleType("cupy")
    fake.__version__ = "13.3.0"
    fake.cuda = types.SimpleNamespace(runtime=rt)
    monkeypatch.setitem(sys.modules, "cupy", fake)


@pytest.mark.parametrize("driver, runtime, said", [(13010, 12010, ("13.1", "12.1")), (12080, 11080, ("12.8", "11.8"))])
def test_gpu_info_reads_cupys_device_properties(monkeypatch, driver, runtime, said):
    _fake_cupy(monkeypatch, count=2, driver=driver, runtime=runtime)
    gpus, note = cli._gpu_info()
    assert note == "via CuPy"
    assert gpus == [{"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.65, "compute_capability": "9.0",
                     "multiprocessors": 132, "driver": f"CUDA {said[0]}", "runtime": f"CUDA {said[1]}"}
                    for i in range(2)]


def test_gpu_info_says_why_cupy_sees_no_gpu(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    _fake_cupy(monkeypatch, error=RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected\ndetails"))
    assert cli._gpu_info() == ([], "CuPy sees no GPU (RuntimeError: cudaErrorNoDevice: no CUDA-capable device is "
                                   "detected)")


def test_gpu_info_asks_nvidia_smi_when_cupy_is_absent(monkeypatch, tmp_path):
    """Each line of `nvidia-smi --query-gpu=name,memory.total,compute_cap,driver_version` (MiB, no units) is a GPU,
    its index the line's; a memory it cannot tell ([N/A]) is None, a line of other fields is skipped."""
    _no_cupy(monkeypatch)
    args = _nvidia_smi(monkeypatch, tmp_path, "NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15\n"
                                              "Tesla T4, [N/A], 7.5, 535.104.05\n"
                                              "a line without the four fields\n"
                                              "NVIDIA A100-SXM4-40GB, 40960.5, 8.0, 550.54.15\n")
    gpus, note = cli._gpu_info()
    assert note == "CuPy is not installed; found by nvidia-smi"
    assert gpus == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.65, "compute_capability": "9.0",
         "driver": "550.54.15"},
        {"index": 1, "name": "Tesla T4", "memory_gib": None, "compute_capability": "7.5", "driver": "535.104.05"},
        {"index": 3, "name": "NVIDIA A100-SXM4-40GB", "memory_gib": 40.0, "compute_capability": "8.0",
         "driver": "550.54.15"}]
    assert args.read_text().split() == ["--query-gpu=name,memory.total,compute_cap,driver_version",
                                        "--format=csv,noheader,nounits"]


@pytest.mark.parametrize("script", ["", "exit 9\n"])
def test_gpu_info_finds_none_when_nvidia_smi_lists_none(monkeypatch, tmp_path, script):
    _no_cupy(monkeypatch)
    _nvidia_smi(monkeypatch, tmp_path, "")
    if script:
        (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\n" + script)
    assert cli._gpu_info() == ([], "CuPy is not installed")


def test_info_prints_each_version_or_not_installed(capsys, monkeypatch):
    from importlib import metadata
    import platform

    _no_cupy(monkeypatch)
    monkeypatch.setattr("shutil.which", lambda name: None)
    rc, out, err = run(capsys, "info")
    assert rc == 0 and err == ""
    lines = dict(line.strip().split(": ", 1) for line in out.splitlines())
    for name in ("torch", "scikit-learn", "tqdm", "matplotlib"):
        assert lines[name] == metadata.version(name), name
    assert lines["cupy"] == "not installed"
    assert lines["platform"] == platform.platform()
    assert lines["backends"] == "numpy  (cuda: no usable GPU)" and lines["gpu"] == "none found (CuPy is not installed)"
    assert all(line[13:15] == ": " for line in out.splitlines())        # names right-aligned in 13 columns
    real = cli._dist_version
    monkeypatch.setattr(cli, "_dist_version", lambda *names: None if names[0] in ("torch", "tqdm") else real(*names))
    lines = dict(line.strip().split(": ", 1) for line in run(capsys, "info")[1].splitlines())
    assert lines["torch"] == lines["tqdm"] == "not installed" and lines["matplotlib"] == metadata.version("matplotlib")


def test_info_json_is_the_same_indented_by_two(capsys, monkeypatch):
    _no_cupy(monkeypatch)
    monkeypatch.setattr("shutil.which", lambda name: None)
    rc, out, _ = run(capsys, "info", "--json")
    d = json.loads(out)
    assert rc == 0 and out == json.dumps(d, indent=2) + "\n"
    assert d["gpus"] == [] and d["gpu_note"] == "CuPy is not installed" and d["versions"]["cupy"] == "not installed"


def test_info_shows_the_gpus_cupy_finds_and_its_version(capsys, monkeypatch):
    import gpubp.backends

    _fake_cupy(monkeypatch)
    monkeypatch.setattr(cli, "_dist_version", lambda *names: None)     # a CuPy without package metadata
    monkeypatch.setattr(gpubp.backends, "available_backends", lambda: ["numpy", "cuda"])
    rc, out, _ = run(capsys, "info")
    lines = dict(line.strip().split(": ", 1) for line in out.splitlines())
    assert rc == 0 and lines["cupy"] == "13.3.0" and lines["backends"] == "numpy, cuda"
    assert lines["gpu 0"] == ("NVIDIA H100 80GB HBM3, 79.65 GiB, compute capability 9.0, 132 SMs, driver CUDA 13.1, "
                              "runtime CUDA 12.1")
    d = json.loads(run(capsys, "info", "--json")[1])
    assert d["gpu_note"] == "via CuPy" and d["versions"]["cupy"] == "13.3.0" and len(d["gpus"]) == 1


def test_info_shows_the_gpus_nvidia_smi_finds(capsys, monkeypatch, tmp_path):
    _no_cupy(monkeypatch)
    _nvidia_smi(monkeypatch, tmp_path, "NVIDIA H100 80GB HBM3, 81559, 9.0, 550.54.15\n")
    rc, out, _ = run(capsys, "info")
    lines = dict(line.strip().split(": ", 1) for line in out.splitlines())
    assert rc == 0 and lines["gpu 0"] == "NVIDIA H100 80GB HBM3, 79.65 GiB, compute capability 9.0, driver 550.54.15"


def test_info_reports_a_failed_cuda_check_and_lists_numpy(capsys, monkeypatch):
    import gpubp.backends

    def broken():
        raise RuntimeError("the driver is too old")
    _no_cupy(monkeypatch)
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(gpubp.backends, "available_backends", broken)
    rc, out, err = run(capsys, "info", "--json")
    assert rc == 0 and json.loads(out)["backends"] == ["numpy"]
    assert err == "gpubp info: checking the CUDA backend failed: the driver is too old\n"


# ---------------------------------------------------------------- gradcheck
def test_gradcheck_reports_its_settings_and_each_layer_by_number_and_shape(capsys):
    """The defaults `--help` states (float64, batch 5, eps 1e-5, norm, threshold 1e-6) are the ones printed, and
    the table has one row per layer: its number from 1 and its W's shape (outputs x inputs)."""
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--layers", "3,4,2")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("gradcheck: layers [3, 4, 2], backend numpy")
    assert lines[0].endswith(", float64, batch 5, eps 1e-05, norm relative error, threshold 1e-06")
    assert lines[1] == "" and lines[2].startswith("tanh (output identity), loss mse = ")
    assert lines[3].split() == ["layer", "shape", "rel", "err", "W", "rel", "err", "b", "max|diff|"]
    assert [l.split()[:2] for l in lines[4:6]] == [["1", "4x3"], ["2", "2x4"]]
    assert lines[6] == "" and lines[7].startswith("worst relative error ") and len(lines) == 8


def test_gradcheck_default_seed_is_0(capsys):
    def loss_line(*argv):
        rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--layers", "3,4,2", *argv)
        assert rc == 0
        return out.splitlines()[2]
    assert loss_line() == loss_line("--seed", "0") != loss_line("--seed", "1")


@pytest.mark.parametrize("threshold, rc", [("1e-6", 0), ("9.99e-7", 1)])
def test_gradcheck_fails_only_an_error_that_exceeds_the_threshold(capsys, monkeypatch, threshold, rc):
    """"Exits with status 1 when an error exceeds --threshold": an error equal to it passes."""
    from gpubp import gradcheck

    real = gradcheck.check

    def errors_of_1e_6(net, X, Y, eps, kind):
        value, errs, an, nu = real(net, X, Y, eps, kind)
        return value, [(1e-6, 5e-7) for _ in errs], an, nu
    monkeypatch.setattr(gradcheck, "check", errors_of_1e_6)
    got, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--layers", "3,4,2", "--threshold", threshold)
    assert got == rc
    assert ("FAIL" in out) == bool(rc) and out.count("  FAIL\n") == 2 * rc
    if rc:
        assert "FAILED in 1 of 1: tanh/mse (1.00e-06)" in out
    else:
        assert "worst relative error 1.000e-06 <= threshold 1e-06: OK (1 configuration)" in out


def test_gradcheck_allows_up_to_20000_parameters(capsys, monkeypatch):
    """--layers 199,100 has 100 * 199 + 100 = 20000 parameters, the most allowed; 176,113 has 20001, and 100,100,100
    has 20200 in its two layers."""
    from gpubp import gradcheck

    checked = []

    def no_differences(net, X, Y, eps, kind):   # the limit, not 40000 passes
        checked.append(net.n_params)
        value, grads = net.loss_and_grads(X, Y)
        return value, [(0.0, 0.0) for _ in grads], grads, grads
    monkeypatch.setattr(gradcheck, "check", no_differences)
    assert run(capsys, "gradcheck", "--backend", "numpy", "--layers", "199,100")[0] == 0 and checked == [20000]
    err = usage_error(capsys, "gradcheck", "--backend", "numpy", "--layers", "176,113")
    assert "the network has 20001 parameters" in err and checked == [20000]
    err = usage_error(capsys, "gradcheck", "--backend", "numpy", "--layers", "100,100,100")   # 10100 per layer
    assert "the network has 20200 parameters" in err and checked == [20000]


def test_gradcheck_all_activations_without_a_hidden_layer_suggests_one(capsys):
    err = usage_error(capsys, "gradcheck", "--backend", "numpy", "--layers", "3,2", "--all-activations")
    assert "has no hidden layer (add one, e.g. --layers 3,3,2)" in err
    err = usage_error(capsys, "gradcheck", "--backend", "numpy", "--layers", "2,5", "--all-activations")
    assert "(add one, e.g. --layers 2,5,5)" in err


def test_gradcheck_interrupted_exits_130(capsys, monkeypatch):
    from gpubp import gradcheck

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(gradcheck, "check", interrupted)
    rc, out, err = run(capsys, "gradcheck", "--backend", "numpy")
    assert rc == 130 and err == "gpubp gradcheck: interrupted\n"


# ---------------------------------------------------------------- train's options and the defaults its help states
def _help(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_train_runs_with_the_defaults_its_help_states(capsys):
    """--n-samples 1000, --noise moons 0.2 / xor 0, --hidden 128, --test-size 0.2, --val-size 0.1, --weight-decay
    0 (adamw 0.01), --seed 0: what the help says is what a run without the options prints."""
    text = _help(capsys, "train")
    for said in ("samples to generate for moons and xor (default 1000)", "(moons 0.2, xor 0 by default)",
                 "from the data (default 128)", "weight decay (default 0; adamw 0.01)", "(default: 0.2)",
                 "(default: 0.1)", "shuffling (default: 0)", "momentum of sgd (default: 0.0)"):
        assert said in text, said
    rc, out, _ = run(capsys, "train", "--dataset", "moons", "--epochs", "1", "--no-progress", "--backend", "numpy",
                     "--optimizer", "adamw")
    assert rc == 0 and "(sklearn make_moons, noise 0.2)" in out and "700 train / 100 validation / 200 test" in out
    assert "network: [2, 128, 2]," in out and "weight_decay=0.01)" in out and "seed 0;" in out
    rc, out2, _ = run(capsys, "train", "--dataset", "moons", "--epochs", "1", "--no-progress", "--backend", "numpy",
                      "--optimizer", "adamw", "--seed", "0")
    strip = lambda s: re.sub(r"\(\d+\.\d+ s\)|in \d+\.\d+ s", "", s)   # noqa: E731
    assert rc == 0 and strip(out2) == strip(out)
    rc, out, _ = run(capsys, "train", "--dataset", "xor", "--epochs", "1", "--no-progress", "--backend", "numpy",
                     "--optimizer", "sgd")
    assert rc == 0 and "(noise 0.0)" in out and "SGD(lr=0.05, momentum=0.0, weight_decay=0.0, nesterov=False)" in out


def test_train_with_nesterov_momentum_saves_it(capsys, tmp_path):
    import gpubp

    ck = tmp_path / "n.npz"
    rc, out, _ = run(capsys, "train", "--dataset", "iris", "--epochs", "2", "--no-progress", "--backend", "numpy",
                     "--optimizer", "sgd", "--momentum", "0.8", "--nesterov", "--save", str(ck))
    assert rc == 0 and "SGD(lr=0.05, momentum=0.8, weight_decay=0.0, nesterov=True)" in out
    assert gpubp.MLP.load(ck, backend="numpy").optimizer.nesterov is True


def test_train_weight_decay_and_no_standardize(capsys, tmp_path):
    import gpubp

    rc, out, _ = run(capsys, "train", "--dataset", "iris", "--epochs", "1", "--no-progress", "--backend", "numpy",
                     "--optimizer", "sgd", "--weight-decay", "0.5", "--no-standardize", "--save", str(tmp_path / "n.npz"))
    assert rc == 0 and "SGD(lr=0.05, momentum=0.0, weight_decay=0.5, nesterov=False)" in out
    assert "standardis" not in out and f"saved checkpoint to {tmp_path / 'n.npz'}\n" in out
    assert gpubp.MLP.load(tmp_path / "n.npz", backend="numpy").standardization is None


def test_train_each_epoch_line_gives_that_epochs_seconds(capsys):
    import time

    t0 = time.perf_counter()
    rc, out, _ = run(capsys, "train", "--dataset", "iris", "--epochs", "3", "--no-progress", "--backend", "numpy")
    elapsed = time.perf_counter() - t0
    seconds = [float(s) for s in re.findall(r"^epoch \d/3 .*  \((\d+\.\d{3}) s\)$", out, re.M)]
    assert rc == 0 and len(seconds) == 3 and sum(seconds) <= elapsed + 0.002


def test_gradcheck_network_the_library_refuses_is_a_usage_error(capsys, monkeypatch):
    import gpubp.network

    def refuse(*a, **k):
        raise ValueError("no such network here")
    monkeypatch.setattr(gpubp.network, "MLP", refuse)
    out, err = usage_error(capsys, "gradcheck", "--backend", "numpy", with_stdout=True)
    assert "gpubp gradcheck: error: no such network here" in err and out == ""


# ---------------------------------------------------------------- warnings
def test_a_warning_is_printed_as_gpubp_category_message(tmp_path):
    """As README shows it: `gpubp: GradientFlowWarning: layer 1: ...`, not a source file and line."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "gpubp", "train", "--dataset", "iris", "--hidden", "32,32,32,32,32,32,32,32",
                        "--activation", "sigmoid", "--optimizer", "sgd", "--lr", "0.1", "--epochs", "1", "--grad-norms",
                        "--backend", "numpy", "--no-progress"], capture_output=True, text=True, timeout=120, cwd=root,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("gpubp: GradientFlowWarning: layer 1: ||dW|| = "), r.stderr
    assert ".py:" not in r.stderr and "warnings.warn" not in r.stderr


# ---------------------------------------------------------------- explain
@pytest.mark.parametrize("error, said", [(OSError(28, "No space left on device"), "No space left on device"),
                                         (OSError("the disk went away"), "the disk went away")])
def test_explain_plot_that_cannot_be_written_says_why_in_the_systems_words(capsys, tmp_path, monkeypatch, error,
                                                                           said):
    import gpubp.plotting

    def fail(trace, path):
        raise error
    monkeypatch.setattr(gpubp.plotting, "plot_trace", fail)
    png = tmp_path / "net.png"
    out, err = usage_error(capsys, "explain", "--plot", str(png), with_stdout=True)
    assert err.rstrip().endswith(f"gpubp explain: error: cannot write the plot {png}: {said}") and out == ""


def test_gradcheck_backend_is_auto_by_default(capsys):
    from gpubp.backends import get_backend

    assert "backend {auto,numpy,cuda} backend (default: auto)" in _help(capsys, "gradcheck")
    rc, out, _ = run(capsys, "gradcheck", "--layers", "2,2")
    assert rc == 0 and out.startswith(f"gradcheck: layers [2, 2], backend {get_backend('auto').describe()}, float64")


@pytest.mark.parametrize("kind", ["norm", "max"])
def test_gradcheck_kind_may_be_given_either_way(capsys, kind):
    rc, out, _ = run(capsys, "gradcheck", "--backend", "numpy", "--layers", "2,2", "--kind", kind)
    assert rc == 0 and out.splitlines()[0].endswith(f", {kind} relative error, threshold 1e-06")


def test_train_plots_every_gradient_statistic_fit_recorded(capsys, tmp_path, monkeypatch):
    """--grad-norms --plot draws fit's per-epoch ||dW||, ||delta|| and update ratios of every layer (one panel each
    in the -grad-norms.png); the ||dW|| are those printed per epoch."""
    import gpubp.plotting

    seen = {}

    def capture(history, path, title=None):
        seen.update(history)
        return path
    monkeypatch.setattr(gpubp.plotting, "plot_grad_norms", capture)
    rc, out, _ = run(capsys, "train", "--dataset", "iris", "--hidden", "8,8", "--epochs", "2", "--grad-norms", "--plot",
                     str(tmp_path / "c.png"), "--no-progress", "--backend", "numpy")
    assert rc == 0
    for key in ("grad_norms", "delta_norms", "update_ratios"):
        assert len(seen[key]) == 2 and all(len(row) == 3 for row in seen[key]), key
    printed = re.findall(r"^epoch \d/2  .*  \|\|dW\|\| (.*)$", out, re.M)
    assert printed == [" ".join(f"{g:.2e}" for g in row) for row in seen["grad_norms"]]
