"""The launchers' shared helpers (gpubp.backends.cuda_launch), by their docstrings: pure Python, no
CuPy needed, so they run here and on the GPU machine alike."""

import types

import numpy as np
import pytest

from gpubp.activations import ACT_CODES, ACTIVATIONS
from gpubp.backends import cuda_launch as cl


def test_ctype_cdiv_grid_alignment_and_strides():
    assert cl.ctype(np.float32) == "float" and cl.ctype("float64") == "double"
    with pytest.raises(TypeError, match="gpubp's CUDA kernels take float32 or float64 arrays, got float16"):
        cl.ctype(np.float16)
    assert [cl.cdiv(a, 4) for a in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    # enough blocks for the work, at least one, at most the cap
    assert [cl.grid_1d(n, 256, 10) for n in (0, 1, 256, 257, 2560, 10 ** 6)] == [1, 1, 1, 2, 10, 10]

    def at(ptr):
        return types.SimpleNamespace(data=types.SimpleNamespace(ptr=ptr))

    assert cl.aligned(at(0)) and cl.aligned(at(32)) and not cl.aligned(at(8)) and not cl.aligned(at(34))
    assert cl.aligned(at(8), 8) and not cl.aligned(at(12), 8)
    # [N*K dW][N db], padded to a multiple of 4 elements
    assert [cl.split_stride(N, K) for N, K in ((3, 5), (4, 3), (1, 1), (2, 1))] == [20, 16, 4, 4]


@pytest.mark.parametrize("n", [0, 1, 7, 17, 31, 32, 33, 4097])
@pytest.mark.parametrize("S", [0, 1, 2, 3, 5, 16, 64])
def test_even_slices(n, S):
    """At most S slices of whole steps, none empty; `(1, max(n, 1))` when there is no split (n = 0
    included: its split once came out as per = 0 and then divided by it)."""
    got, per = cl.even_slices(n, S, 16)
    if got == 1:
        assert per == max(n, 1)
        return
    assert got <= S and per % 16 == 0 and (got - 1) * per < n <= got * per


def test_split_counts():
    assert [cl.even_slices(n, S, 16) for n, S in ((100, 3), (20, 4), (16, 4), (33, 2), (100, 1), (5, 0))] == [
        (3, 48), (2, 16), (1, 16), (2, 32), (1, 100), (1, 5)]
    assert cl.even_slices(0, 4, 16) == (1, 1) and cl.even_slices(0, 2, 1) == (1, 1)
    # batch_splits: split only when the tiles are fewer than 2 per SM; cdiv(2 sms, tiles) splits, at
    # most M // min_rows and max_splits
    assert cl.batch_splits(4096, 264, 132, 16, 64) == (1, 4096)        # 2 tiles per SM: no split
    assert cl.batch_splits(4096, 263, 132, 16, 64) == (2, 2048)
    assert cl.batch_splits(4096, 100, 132, 16, 64) == (3, 1376)
    assert cl.batch_splits(4096, 10, 132, 16, 64) == (16, 256)         # M // 256 rows
    assert cl.batch_splits(4096, 10, 132, 16, 8) == (8, 512)           # max_splits
    assert cl.batch_splits(600, 10, 132, 16, 64, min_rows=100) == (6, 112)
    assert cl.batch_splits(300, 10, 132, 16, 64) == (1, 300)
    assert cl.batch_splits(0, 10, 132, 16, 64) == (1, 1)
    # wave_splits: slots // tiles slices, at most max_splits and n // min_len
    assert cl.wave_splits(10, 264, 4096, 16, 8, 256) == (8, 512)
    assert cl.wave_splits(0, 264, 4096, 16, 64, 256) == (16, 256)
    assert cl.wave_splits(200, 264, 4096, 16, 64, 256) == (1, 4096)
    assert cl.wave_splits(10, 264, 1000, 16, 64, 300) == (3, 336)
    assert cl.wave_splits(10, 264, 0, 16, 64, 300) == (1, 1)


def test_argument_checks():
    assert cl.check_act(np.int32(0)) == 0 and cl.check_act(len(ACTIVATIONS) - 1) == len(ACTIVATIONS) - 1
    for bad in (-1, len(ACTIVATIONS)):
        with pytest.raises(ValueError, match=f"activation code {bad} out of range 0..{len(ACTIVATIONS) - 1}$"):
            cl.check_act(bad)
    a, z = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    assert cl.gprime_source(ACT_CODES["relu"], a, z) == ("A_prev", a)
    assert cl.gprime_source(ACT_CODES["gelu"], a, z) == ("Z_prev", z)
    assert cl.gprime_source(ACT_CODES["silu"], None, z) == ("Z_prev", z)
    assert cl.gprime_source(ACT_CODES["identity"], None, None) == ("A_prev", None)
    with pytest.raises(ValueError, match="gemm_bwd_data: Z_prev is needed for activation code 5"):
        cl.gprime_source(ACT_CODES["gelu"], a, None)
    with pytest.raises(ValueError, match="fused: A_prev is needed for activation code 2"):
        cl.gprime_source(ACT_CODES["tanh"], None, z, what="fused")
    cl.check_arrays(np.float32, a, None, z)
    with pytest.raises(TypeError, match="k: expected arrays of float32, got float64"):
        cl.check_arrays(np.float32, a, z.astype(np.float64), what="k")
    with pytest.raises(ValueError, match="k need C-contiguous arrays"):
        cl.check_arrays(np.float32, a, np.zeros((3, 2), np.float32).T, what="k")
