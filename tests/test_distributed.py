"""Data-parallel training under `mpiexec -n 1/2/3` equals one process on the same global batches.

Each test launches small scripts (tests/mpi_scripts) under the mpiexec of
this environment with a timeout; they skip only where mpi4py or mpiexec is
absent (CI installs both through the `distributed` extra).
"""

import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from gpubp import distributed  # noqa: E402
from gpubp.distributed import share  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "mpi_scripts")
sys.path.insert(0, SCRIPTS)
import dp_train  # noqa: E402

MPIEXEC = distributed.find_mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'gpubp[distributed]')")

TIMEOUT = 60


def run_mpi(n, script, *args, timeout=TIMEOUT, **env_extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra)
    cmd = distributed.mpiexec_command(n, MPIEXEC) + [sys.executable, os.path.join(SCRIPTS, script), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def rel(a, b):
    """||a - b|| / ||b||, scaled first so that huge values (the diverged case) do not overflow."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    s = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.linalg.norm((a - b) / s) / max(np.linalg.norm(b / s), 1e-300))


def run_case(net, opt, fit):
    """`(params, history)` after `fit(net, opt)`, or `(params, {"error": message})` when it diverged."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            hist = fit(net, opt)
    except FloatingPointError as e:
        hist = {"error": str(e)}
    return net.backend.to_numpy(net._params), hist


def single_process(c, backend="numpy"):
    """One process training with plain `fit` on the same data and settings."""
    X, Y, W = dp_train.case_data(c)
    return run_case(dp_train.make_net(backend, c), dp_train.make_opt(c["optimizer"]),
                    lambda net, opt: net.fit(X, Y, optimizer=opt, sample_weight=W, **dp_train.fit_kwargs(c)))


def sharded_reference(c, size, backend="numpy"):
    """One process training on the concatenations of the ranks' local batches, one `fit` call per
    batch (the ranks' row orders rebuilt from the shared generator)."""
    X, Y, W = dp_train.case_data(c)
    shards = [dp_train.shard_rows(dp_train.N, size, r, c) for r in range(size)]
    lbs = [share(c["batch_size"], size, r)[1] - share(c["batch_size"], size, r)[0] for r in range(size)]
    n_steps = max(-(-len(s) // lb) for s, lb in zip(shards, lbs))

    def fit(net, opt):
        losses = []
        for _ in range(c["epochs"]):
            if c["shuffle"]:
                seed = int(net._rng.integers(2**63))
                orders = [s[np.random.default_rng([seed, r]).permutation(len(s))] for r, s in enumerate(shards)]
            else:
                orders = shards
            total = weight = 0.0
            for i in range(n_steps):
                rows = np.concatenate([o[i * lb:(i + 1) * lb] for o, lb in zip(orders, lbs)])
                w = None if W is None else W[rows]
                loss = net.fit(X[rows], Y[rows], epochs=1, batch_size=len(rows), optimizer=opt, shuffle=False,
                               progress=False, sample_weight=w)["loss"][0]
                bw = len(rows) if w is None else (w / W.max()).sum()    # ratios: near-max weights sum to inf
                total, weight = total + loss * bw, weight + bw
            losses.append(total / weight)
        return {"loss": losses}

    return run_case(dp_train.make_net(backend, c), dp_train.make_opt(c["optimizer"]), fit)


@pytest.fixture(scope="module")
def references():
    out = {}
    for name, c in dp_train.cases().items():
        if not c.get("sharded"):
            out[name] = single_process(c)
    return out


def check_against_one_process(n, prefix, references, backend="numpy"):
    """Every rank's result equals one process's to 1e-12 relative; returns the worst difference per case."""
    ranks = [np.load(f"{prefix}.{k}.npz") for k in range(n)]
    worst = {}
    for name, c in dp_train.cases().items():
        params, hist = references[name] if name in references else sharded_reference(c, n, backend)
        got = ranks[0]
        for k in range(1, n):      # every rank ends with the same bits
            np.testing.assert_array_equal(ranks[k][name + ".params"], got[name + ".params"], err_msg=name)
        e = rel(got[name + ".params"], params)
        assert e <= 1e-12, f"{name} on {n} ranks: parameters differ from one process by {e:.3g}"
        initial = dp_train.make_net("numpy", c)._params
        assert rel(got[name + ".params"], initial) > 1e-3, f"{name}: training did not move the parameters"
        if "error" in hist:        # diverged: the same message (step, loss) on every rank and in one process
            assert c.get("diverge"), hist["error"]
            assert ("the update of step" in hist["error"]) == (c["diverge"] == "update"), hist["error"]
            for k in range(n):
                assert str(ranks[k][name + ".error"]) == hist["error"]
        else:
            assert not c.get("diverge"), f"{name} was meant to diverge"
            if c.get("early_stop"):    # it stopped early, after as many epochs as one process, on every rank
                assert len(hist["loss"]) < c["epochs"], name
            for key, ref in hist.items():
                for k in range(n):
                    assert len(ranks[k][f"{name}.hist.{key}"]) == len(ref), (name, key, k)
                eh = rel(got[f"{name}.hist.{key}"], ref)
                assert eh <= 1e-12, f"{name} on {n} ranks: history {key} differs by {eh:.3g}"
        worst[name] = e
    return worst, str(ranks[0]["transport"])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_equals_single_process(n, tmp_path, references):
    prefix = str(tmp_path / "res")
    r = run_mpi(n, "dp_train.py", prefix)
    assert r.returncode == 0, r.stdout + r.stderr
    worst, transport = check_against_one_process(n, prefix, references)
    assert transport == "mpi"
    print(f"{n} ranks, relative difference from one process: " +
          ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))


def test_precision_modes_match_one_process_as_the_readme_says(tmp_path):
    """README: float32 (and 3xtf32) ranks match one process to 1e-6 after 2 epochs; tf32 and bf16 only to the
    mode's rounding (2e-5 to 2e-2 after one epoch).  The README promised float64's 1e-12 for every mode."""
    import json

    out = tmp_path / "rel.json"
    r = run_mpi(2, "dp_precision.py", str(out), timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    rel_diff = json.loads(out.read_text())
    assert len(rel_diff) == 8, rel_diff
    for case, e in rel_diff.items():
        bound = 1e-6 if case.split(".")[0] in ("float32", "3xtf32") else 5e-2
        assert e <= bound, (case, e)
    readme = " ".join(open(os.path.join(ROOT, "README.md")).read().split())
    assert ('In `precision="tf32"` and `"bf16"` each rank\'s share of a batch is a different product, whose '
            "operands the mode rounds to its own resolution, so the ranks match one process only as closely as "
            "the mode matches float32") in readme
    assert "in float32 (and `precision=\"3xtf32\"`) 1e-6 after 2 epochs on 2 ranks" in readme


def test_a_rank_that_raises_ends_the_job_with_a_clear_error():
    r = run_mpi(3, "dp_fault.py", "raise", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "rank 1 of 3 failed: RuntimeError: an injected failure on rank 1" in out, out
    for k in (0, 2):   # every other rank says which rank failed and why
        assert f"rank {k} of 3: stopping, because rank 1 failed: RuntimeError: an injected failure" in out, out
    assert "trained" not in r.stdout


def test_a_rank_that_raises_after_the_last_step_ends_the_job_on_every_rank():
    # rank 1's on_train_end raises: the other ranks do not leave fit (and go on with the script) but
    # print which rank failed and why
    r = run_mpi(3, "dp_fault.py", "train_end", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "rank 1 of 3 failed: RuntimeError: an injected failure at the end of training on rank 1" in out, out
    for k in (0, 2):
        assert f"rank {k} of 3: stopping, because rank 1 failed: RuntimeError: an injected failure at the end" \
            in out, out
    assert "trained" not in r.stdout, out


def test_a_rank_that_hangs_ends_the_job_after_the_timeout():
    r = run_mpi(2, "dp_fault.py", "hang", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "rank 0 waited 2 s for the other ranks in the gradient all-reduce of step 3" in out, out
    assert "rank 0 of 2: ending the job on all 2 ranks" in out, out


def test_an_uncaught_exception_outside_fit_ends_the_job():
    r = run_mpi(2, "dp_fault.py", "uncaught", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "RuntimeError: a failure outside fit on rank 1" in out, out
    assert "rank 1 of 2 ended with an uncaught RuntimeError; ending the job" in out, out


def test_a_communicator_is_refused_after_one_of_its_collectives_timed_out():
    # the timed-out reduction stays pending (MPI cannot cancel it): rank 0's next collective went ahead,
    # so the other ranks' next collectives were matched with the stale one and read its data (in fit:
    # "Unable to allocate 4.00 EiB" on rank 1, or silently wrong numbers)
    r = run_mpi(2, "dp_fault.py", "after_timeout", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "rank 0 waited 2 s for the other ranks in a lone reduction" in r.stdout, out
    assert ("rank 0: refused (DistributedError): rank 0: this communicator cannot be used any more: a lone "
            "reduction timed out after 2 s and is still pending; the ranks' collectives are out of step, so "
            "the job must end") in r.stdout, out
    assert "the second reduction ran" not in r.stdout
    assert "rank 1: summed 2" in r.stdout, out      # it met rank 0's first reduction, the only one started


def test_a_rank_that_exits_before_init_ends_the_job_after_the_timeout():
    # rank 0 waited in init()'s blocking duplicate of the communicator for good
    r = run_mpi(2, "dp_fault.py", "exit_before_init", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "rank 0 of 2 waited 2 s for the other ranks in init(); another rank has stopped before it or hangs" \
        in out, out


def refused_on_every_rank(n, mode, detail=""):
    """Run dp_fault.py `mode` on `n` ranks; assert that every rank refused the fit with a ConfigMismatch
    whose message goes on with `detail`, leaving its network unchanged; the run's output."""
    r = run_mpi(n, "dp_fault.py", mode, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    for k in range(n):
        assert (f"rank {k}: refused (ConfigMismatch, network unchanged): the ranks' network configurations and "
                "training settings differ" + detail in r.stdout), out
    return r


def test_different_networks_are_refused_on_every_rank():
    r = refused_on_every_rank(3, "mismatch")
    out = r.stdout + r.stderr
    assert "rank 1 has network.layer_sizes = [4, 9, 2] where rank 0 has [4, 8, 2]" in r.stdout, out
    assert "trained" not in r.stdout


def test_buckets_cover_the_gradient_buffer_in_backward_order():
    from gpubp.params import ParamLayout

    layout = ParamLayout((5, 7, 6, 3))
    grads = np.zeros(layout.total)

    class Comm:
        def start_allreduce(self, view):
            return distributed._Done()

        def wait(self, pending, what):
            pass

    for nbytes, n_buckets in ((1, 3), (8 * layout.total, 1)):
        b = distributed.GradientBuckets(Comm(), layout, grads, bucket_bytes=nbytes)
        assert len(b.buckets) == n_buckets
        assert b.buckets[0][2] == layout.total and b.buckets[-1][1] == 0
        assert all(b.buckets[i][1] == b.buckets[i + 1][2] for i in range(n_buckets - 1))
        assert [lo for lo, _, _ in b.buckets] == ([3, 2, 1] if n_buckets == 3 else [1])


def test_cli_train_distributed_prints_and_saves_on_rank_0_only(tmp_path):
    ckpt = tmp_path / "net.npz"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    train = [sys.executable, "-m", "gpubp", "train", "--epochs", "2", "--hidden", "16", "--dataset", "moons",
             "--n-samples", "200", "--backend", "numpy", "--dtype", "float64", "--no-progress"]
    r = subprocess.run(distributed.mpiexec_command(2, MPIEXEC) + train + ["--distributed", "--save", str(ckpt)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("distributed: 2 ranks, gradients summed over mpi") == 1, r.stdout
    assert r.stdout.count("test accuracy") == 1, r.stdout
    assert ckpt.exists()
    one = subprocess.run(train, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert one.returncode == 0, one.stdout + one.stderr

    def figures(out):      # the epoch lines without their times, and the test results
        return [line.split("  (")[0] for line in out.splitlines() if line.startswith(("epoch", "test"))]

    assert figures(r.stdout) == figures(one.stdout) and len(figures(one.stdout)) == 4, (r.stdout, one.stdout)


# PathFinder, not importlib.util.find_spec: the question is what the ranks' processes import, and under
# GPUBP_EMULATE_GPU=1 this one holds the emulator's cupy, whose missing __spec__ made find_spec raise
# ValueError while tests/gpu/test_distributed_gpu.py (which imports this file) was being collected
@pytest.mark.skipif(importlib.machinery.PathFinder.find_spec("cupy") is not None,
                    reason="CuPy is installed: the run would train")
def test_cli_train_distributed_on_a_cuda_backend_without_cupy_is_a_usage_error():
    # each rank ended with a traceback "ModuleNotFoundError: No module named 'cupy'" (status 1), where the
    # same command without --distributed says which extra to install (status 2)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    train = [sys.executable, "-m", "gpubp", "train", "--epochs", "1", "--hidden", "8", "--dataset", "moons",
             "--n-samples", "100", "--backend", "cuda", "--no-progress", "--distributed"]
    r = subprocess.run(distributed.mpiexec_command(2, MPIEXEC) + train, cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("gpubp train: error: backend 'cuda' is not usable here: the cuda backend needs CuPy, "
                          "which did not import (No module named 'cupy'); install gpubp[cuda12] or "
                          "gpubp[cuda13]") == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_cli_train_distributed_that_diverges_says_so_once_and_fails():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    train = [sys.executable, "-m", "gpubp", "train", "--epochs", "2", "--hidden", "16", "--dataset", "moons",
             "--n-samples", "200", "--backend", "numpy", "--dtype", "float64", "--no-progress", "--optimizer", "sgd",
             "--lr", "1e300", "--distributed"]
    r = subprocess.run(distributed.mpiexec_command(2, MPIEXEC) + train, cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=TIMEOUT)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("gpubp train: the ") == 1 and "training diverged" in r.stderr, r.stderr
    assert "test accuracy" not in r.stdout


def test_different_data_without_sharding_is_refused():
    r = run_mpi(2, "dp_fault.py", "data", timeout=30)
    assert r.returncode != 0, r.stdout + r.stderr
    for k in range(2):
        assert f"rank {k}: refused" in r.stdout and "rank 1 has data.X = " in r.stdout, r.stdout + r.stderr


def test_different_validation_sets_without_sharding_are_refused():
    # each rank evaluates its share of the validation set: different sets gave wrong val_loss silently
    r = run_mpi(2, "dp_fault.py", "validation", timeout=30)
    assert r.returncode != 0, r.stdout + r.stderr
    for k in range(2):
        assert f"rank {k}: refused" in r.stdout, r.stdout + r.stderr
    assert "rank 1 has data.validation.X = " in r.stdout and "data.validation.Y = " in r.stdout, r.stdout
    assert "data.X" not in r.stdout, r.stdout
    assert "trained" not in r.stdout


def test_different_learning_rate_schedules_are_refused():
    # a schedule on some ranks only (or another one) gave each rank other parameters, silently
    r = run_mpi(3, "dp_fault.py", "schedule", timeout=30)
    assert r.returncode != 0, r.stdout + r.stderr
    for k in range(3):
        assert f"rank {k}: refused" in r.stdout, r.stdout + r.stderr
    assert "rank 1 has fit.lr_schedule = null where rank 0 has [[1, 0.01], [2, 0.005]" in r.stdout, r.stdout
    assert "rank 2 has fit.lr_schedule = [[1, 0.01], [2, 0.01]" in r.stdout, r.stdout
    assert "trained" not in r.stdout


def test_sharded_on_some_ranks_only_is_refused_on_every_rank():
    # rank 1 alone passed sharded=True: the ranks' first collectives differed, so rank 1 failed with
    # "TypeError: int() argument must be ... not 'dict'" and ended the job while rank 0 raised a garbled
    # ConfigMismatch ("rank 1 has (value) = 40 where rank 0 has null, ...")
    r = refused_on_every_rank(2, "sharded", ", so they cannot train together: rank 1 has fit.sharded = true "
                                           "where rank 0 has false")
    out = r.stdout + r.stderr
    assert "TypeError" not in out and "trained" not in r.stdout, out


@pytest.mark.parametrize("n, mode, message", [
    # only the ranks whose share of a batch was empty refused it; the others waited until the timeout
    (3, "small_batch", "with sharded=True every rank takes a share of each batch: batch_size (2) must be at least "
                       "the number of ranks (3)"),
    # rank 0 alone refused grad_norms=True; the others went on and waited until the timeout
    (2, "grad_norms", "rank 0: grad_norms=True is not supported with comm"),
    # a rank's own rows may all weigh nothing (the sharded_b6_weightless_shard case trains), not every rank's
    (2, "zero_weights", "the sample weights (in float64) are all zero on every rank"),
    # one rank's shard may hold no rows (the sharded_b6_empty_rank case trains), not every rank's
    (2, "no_rows", "with sharded=True the ranks' shards hold no rows at all"),
    (2, "no_val_rows", "with sharded=True the ranks' validation shards hold no rows at all"),
], ids=["sharded-batch-below-ranks", "option-on-one-rank", "zero-weights-on-every-rank", "no-rows-on-any-rank",
        "no-validation-rows-on-any-rank"])
def test_a_refusal_is_made_on_every_rank_alike(n, mode, message):
    r = run_mpi(n, "dp_fault.py", mode, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    for k in range(n):
        assert f"rank {k}: refused (EveryRankError, network unchanged): {message}" in r.stdout, out
    assert "trained" not in r.stdout and "waited" not in out, out


def test_an_mpi4py_communicator_is_refused_with_a_clear_error():
    # MPI.COMM_WORLD ended the job with "AttributeError: 'Intracomm' object has no attribute 'guard'";
    # run in a process of its own, so that this one does not start MPI
    code = """if True:
        import numpy as np, sys
        from mpi4py import MPI
        sys.path.insert(0, sys.argv[1])
        import dp_train
        X, Y, _, _, _ = dp_train.data()
        net = dp_train.make_net()
        before = net._params.copy()
        try:
            net.fit(X, Y, epochs=1, progress=False, comm=MPI.COMM_SELF)
        except TypeError as e:
            print("refused:", e, np.array_equal(net._params, before), net.optimizer is None)
    """
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code, SCRIPTS], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert ("refused: comm must be the communicator of gpubp.distributed.init() (which wraps MPI's), got "
            "mpi4py's Intracomm True True") in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("comm", ["world", True, 2, object()], ids=["str", "bool", "int", "object"])
def test_a_comm_that_is_no_communicator_is_refused_with_a_clear_error(comm):
    # was "AttributeError: 'str' object has no attribute 'size'"
    X, Y, _, _, _ = dp_train.data()
    net = dp_train.make_net()
    before = net._params.copy()
    with pytest.raises(TypeError, match=r"comm must be the communicator of gpubp.distributed.init\(\) \(or None\), "
                                        f"got {type(comm).__name__}"):
        net.fit(X, Y, epochs=1, progress=False, comm=comm)
    np.testing.assert_array_equal(net._params, before)
    assert net.optimizer is None


def test_bad_init_arguments_are_refused_naming_them():
    # grace="x" failed with float()'s "could not convert string to float: 'x'" and bucket_bytes="1M"
    # with int()'s "invalid literal"; timeout=True was taken as 1 s and grace=-1 or nan as no grace;
    # in a process of its own, as one rank (MPI's singleton start), so that this one does not start MPI
    code = """if True:
        from gpubp import distributed
        for kw in (dict(timeout=True), dict(grace="x"), dict(grace=-1.0), dict(grace=float("nan")),
                   dict(bucket_bytes="1M"), dict(bucket_bytes=0), dict(bucket_bytes=2.5), dict(backend="gpu"),
                   dict(backend="CUDA"), dict(backend=None)):
            try:
                distributed.init(**{"backend": "numpy", **kw})
                print("accepted", kw)
            except ValueError as e:
                print("refused:", e)
        for kw in (dict(overlap="False"), dict(overlap=0), dict(abort_on_uncaught="no")):
            try:
                distributed.init(backend="numpy", **kw)
                print("accepted", kw)
            except TypeError as e:
                print("refused:", e)
        print("ok:", distributed.init(backend="numpy", timeout=5, grace=0, bucket_bytes=1 << 10).grace)
    """
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT)
    out = r.stdout + r.stderr
    assert "accepted" not in out, out
    assert "refused: timeout must be a positive number of seconds, got True" in out, out
    for bad in ("'x'", "-1.0", "nan"):
        assert f"refused: grace must be a non-negative number of seconds (or None), got {bad}" in out, out
    for bad in ("'1M'", "0", "2.5"):
        assert f"refused: bucket_bytes must be a positive integer, got {bad}" in out, out
    # a misspelt backend was taken for numpy: no GPU picked per rank, no NCCL, silently
    for bad in ("'gpu'", "'CUDA'", "None"):
        assert f"refused: unknown backend {bad}; choose one of auto, numpy, cuda" in out, out
    # overlap="False" was read by its truth value (yes)
    for name, bad in (("overlap", "'False'"), ("overlap", "0"), ("abort_on_uncaught", "'no'")):
        assert f"refused: {name} must be True or False, got {bad}" in out, out
    assert "ok: 0.0" in out, out


class _OneRank:
    """Stands in for a communicator where only the argument checks are reached."""
    size, rank, is_root = 1, 0, True


@pytest.mark.parametrize("comm", ["rank0", 3, object()])
def test_a_comm_that_is_no_communicator_is_a_type_error_naming_comm(comm):
    # was AttributeError: 'str' object has no attribute 'size', from inside the guard
    X, Y, _, _, _ = dp_train.data()
    net = dp_train.make_net()
    before = net._params.copy()
    with pytest.raises(TypeError, match=r"comm must be the communicator of gpubp\.distributed\.init\(\)"):
        net.fit(X, Y, epochs=1, progress=False, comm=comm)
    np.testing.assert_array_equal(net._params, before)
    assert net.optimizer is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(sharded=True), "sharded=True needs comm"),
    (dict(comm=_OneRank(), grad_norms=True), "grad_norms=True is not supported with comm"),
    (dict(comm=_OneRank(), sharded=True, class_weight="balanced"), "class_weight='balanced' with sharded"),
    (dict(comm=_OneRank(), sharded=True, standardize=True), "standardize=True with sharded=True"),
])
def test_unsupported_fit_options_are_refused_before_anything_changes(kwargs, match):
    X, Y, _, _, _ = dp_train.data()
    net = dp_train.make_net()
    before = net._params.copy()
    with pytest.raises(ValueError, match=match):
        net.fit(X, Y, epochs=1, progress=False, **kwargs)
    np.testing.assert_array_equal(net._params, before)
    assert net.optimizer is None


def test_bad_input_on_one_rank_is_refused_on_every_rank_and_the_job_goes_on():
    # rank 1's NaN was its own ValueError inside the guard: it ended the whole job (MPI_Abort) where
    # one process refuses such data with a ValueError and nothing changed
    r = run_mpi(3, "dp_fault.py", "bad_input", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out         # each rank exits with 3 after the refusal
    assert "rank 1: refused (ValueError, network unchanged): X contains NaN or infinity" in r.stdout, out
    for k in (0, 2):
        assert (f"rank {k}: refused (EveryRankError, network unchanged): rank 1: ValueError: X contains NaN or "
                "infinity") in r.stdout, out
    for k in range(3):      # the communicator is still in step: a later collective works
        assert f"rank {k}: then summed 3" in r.stdout, out
    assert "ending the job" not in out and "Abort" not in out, out


def test_bad_input_on_every_rank_raises_ones_own_error_on_every_rank():
    # the same refusal on every rank ended the job too; now each rank raises what one process raises
    r = run_mpi(2, "dp_fault.py", "bad_input_everywhere", timeout=30)
    out = r.stdout + r.stderr
    for k in range(2):
        assert (f"rank {k}: refused (ValueError, network unchanged): class_weight keys must be class indices in "
                "[0, 2), got 5") in r.stdout, out
        assert f"rank {k}: then summed 2" in r.stdout, out
    assert "ending the job" not in out and "Abort" not in out, out


def test_a_callback_that_changes_the_network_on_one_rank_leaves_rank_0s_on_every_rank():
    # rank 1's callback halved its parameters: the ranks then trained on from different parameters
    # (the summed gradients applied to each), and ended with different networks, silently
    r = run_mpi(3, "dp_fault.py", "callback_rank1", timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    found = re.findall(r"rank (\d): parameters (\w{16})", r.stdout)    # the ranks' lines may run together
    assert sorted(k for k, _ in found) == ["0", "1", "2"] and len({d for _, d in found}) == 1, out
    assert ("rank 1 warned: RuntimeWarning: rank 1: a callback (on_epoch_end of epoch 2) changed the network or "
            "drew from its generator on this rank, not alike on rank 0; every rank now holds rank 0's state") \
        in r.stdout, out
    assert "rank 0 warned" not in r.stdout and "rank 2 warned" not in r.stdout, out


def test_a_checkpoint_saved_by_rank_0_loads_on_every_rank_after_a_barrier(tmp_path):
    # the communicator had no barrier (only MPI's own, blocking with no deadline): ranks that loaded the
    # file rank 0 was still writing found none
    ckpt = tmp_path / "net.npz"
    r = run_mpi(3, "dp_fault.py", "checkpoint", str(ckpt), timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    found = re.findall(r"rank (\d): trained (\w{16}) loaded (\w{16})", r.stdout)   # the ranks' lines may run together
    assert sorted(k for k, _, _ in found) == ["0", "1", "2"], out
    assert len({d for _, a, b in found for d in (a, b)}) == 1, out    # every rank loaded what every rank trained


def test_a_callback_refusing_the_fit_on_one_rank_is_a_refusal_on_every_rank():
    # rank 1's EarlyStopping monitoring val_loss (not recorded) raised in on_train_begin after rank 0's
    # state was broadcast: the job ended, where one process refuses the call and changes nothing
    r = run_mpi(3, "dp_fault.py", "begin_refused", timeout=30)
    out = r.stdout + r.stderr
    said = "EarlyStopping monitors 'val_loss', which this fit does not record (it records loss; val_* needs"
    assert f"rank 1: refused (ValueError, network unchanged): {said}" in r.stdout, out
    for k in (0, 2):      # rank 2 holds its own parameters, optimizer state and generator again
        assert (f"rank {k}: refused (EveryRankError, network unchanged): the callbacks' on_train_begin refused the "
                f"call: rank 1: ValueError: {said}") in r.stdout, out
    for k in range(3):
        assert f"rank {k}: then summed 3" in r.stdout, out
    assert "ending the job" not in out and "trained" not in r.stdout, out


def test_sharded_class_weights_that_differ_between_ranks_are_refused():
    # with sharded=True each rank weighs its own rows: class weights each rank computed from its own shard
    # (what class_weight="balanced" is refused for) trained each rank's share with other weights, silently
    r = refused_on_every_rank(2, "class_weight", ", so they cannot train together: rank 1 has fit.class_weight.1 = "
                                                 "3.0 where rank 0 has 2.0")
    assert "trained" not in r.stdout
