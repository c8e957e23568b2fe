"""Data-parallel training on the CUDA backend under mpiexec (skipped without CUDA, mpi4py or mpiexec).

Two ranks sharing one GPU sum their gradients through host copies over MPI;
with at least as many GPUs as ranks, each rank has its own and the sums go
through NCCL.  Either way the result equals one process on the same global
batches to 1e-12 relative in float64.
"""

import os
import sys

import pytest

cupy = pytest.importorskip("cupy")
pytest.importorskip("mpi4py")
try:
    _N_DEV = cupy.cuda.runtime.getDeviceCount()
except Exception:  # no driver / no device
    _N_DEV = 0

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from test_distributed import (MPIEXEC, check_against_one_process, dp_train, run_mpi,  # noqa: E402
                              single_process)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_N_DEV == 0, reason="needs a CUDA device"),
              pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")]


def references():
    return {name: single_process(c, "cuda") for name, c in dp_train.cases().items() if not c.get("sharded")}


def test_two_ranks_sharing_one_gpu_train_like_one_process(tmp_path):
    prefix = str(tmp_path / "res")
    r = run_mpi(2, "dp_train.py", prefix, "cuda", timeout=180, CUDA_VISIBLE_DEVICES="0")
    assert r.returncode == 0, r.stdout + r.stderr
    worst, transport = check_against_one_process(2, prefix, references(), "cuda")
    assert transport == "mpi-host-staging"
    print("2 ranks on one GPU:", worst)


@pytest.mark.skipif(_N_DEV < 2, reason="the NCCL path needs a GPU per rank (2)")
def test_nccl_with_a_gpu_per_rank_trains_like_one_process(tmp_path):
    prefix = str(tmp_path / "res")
    r = run_mpi(2, "dp_train.py", prefix, "cuda", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    worst, transport = check_against_one_process(2, prefix, references(), "cuda")
    assert transport == "nccl"
    print("2 ranks with NCCL:", worst)
