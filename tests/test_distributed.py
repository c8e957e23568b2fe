"""Data-parallel training under `mpiexec -n 1/2/3` equals one process on the same global batches.

Each test launches small scripts (tests/mpi_scripts) under the mpiexec of
this environment with a timeout; they skip only where mpi4py or mpiexec is
absent (CI installs both through the `distributed` extra).
"""

import os
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


def run_mpi(n, script, *args, timeout=TIMEOUT):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = distributed.mpiexec_command(n, MPIEXEC) + [sys.executable, os.path.join(SCRIPTS, script), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def single_process(c):
    """One process training with plain `fit` on the same data and settings."""
    X, Y, Xv, Yv = dp_train.data()
    net = dp_train.make_net()
    opt = dp_train.make_opt(c["optimizer"])
    hist = net.fit(X, Y, epochs=c["epochs"], batch_size=c["batch_size"], optimizer=opt,
                   shuffle=c["shuffle"], progress=False, validation=(Xv, Yv) if c.get("validation") else None)
    return net._params.copy(), hist


def sharded_reference(c, size):
    """One process training on the concatenations of the ranks' local batches (the ranks' row
    orders rebuilt from the shared generator)."""
    X, Y, _, _ = dp_train.data()
    net = dp_train.make_net()
    opt = dp_train.make_opt(c["optimizer"])
    shards = [dp_train.shard_rows(dp_train.N, size, r) for r in range(size)]
    lbs = [share(c["batch_size"], size, r)[1] - share(c["batch_size"], size, r)[0] for r in range(size)]
    n_steps = max(-(-len(s) // lb) for s, lb in zip(shards, lbs))
    losses = []
    for _ in range(c["epochs"]):
        if c["shuffle"]:
            seed = int(net._rng.integers(2**63))
            orders = [s[np.random.default_rng([seed, r]).permutation(len(s))] for r, s in enumerate(shards)]
        else:
            orders = shards
        total = 0.0
        for i in range(n_steps):
            rows = np.concatenate([o[i * lb:(i + 1) * lb] for o, lb in zip(orders, lbs)])
            total += net.train_step(X[rows], Y[rows], opt) * len(rows)
        losses.append(total / dp_train.N)
    return net._params.copy(), {"loss": losses}


@pytest.fixture(scope="module")
def references():
    out = {}
    for name, c in dp_train.cases().items():
        if not c.get("sharded"):
            out[name] = single_process(c)
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_equals_single_process(n, tmp_path, references):
    prefix = str(tmp_path / "res")
    r = run_mpi(n, "dp_train.py", prefix)
    assert r.returncode == 0, r.stdout + r.stderr
    ranks = [np.load(f"{prefix}.{k}.npz") for k in range(n)]
    worst = {}
    for name, c in dp_train.cases().items():
        params, hist = references[name] if name in references else sharded_reference(c, n)
        got = ranks[0]
        for k in range(1, n):      # every rank ends with the same bits
            np.testing.assert_array_equal(ranks[k][name + ".params"], got[name + ".params"], err_msg=name)
        e = rel(got[name + ".params"], params)
        assert e <= 1e-12, f"{name} on {n} ranks: parameters differ from one process by {e:.3g}"
        assert rel(got[name + ".params"], dp_train.make_net()._params) > 1e-3, f"{name}: nothing trained"
        for key, ref in hist.items():
            eh = rel(got[f"{name}.hist.{key}"], ref)
            assert eh <= 1e-12, f"{name} on {n} ranks: history {key} differs by {eh:.3g}"
        worst[name] = e
    print(f"{n} ranks, relative difference from one process: " +
          ", ".join(f"{k} {v:.1e}" for k, v in worst.items()))
