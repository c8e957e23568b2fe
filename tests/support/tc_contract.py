"""What each tensor-core GEMM kernel of kernels/gemm_tc.cu may touch, as rules for the fake `cupy`
(tests/support/fake_cupy.py, `FakeCupy(extents=TC_EXTENTS)`): every launch must cover its output
with its grid, and each pointer must hold the elements the launch's sizes reach."""

import sys


def cdiv(a, b):
    return -(-a // b)


def _tiles(P, Q, grid):
    assert grid[0] == cdiv(P, 128) * cdiv(Q, 128), f"grid {grid} for a {P} x {Q} output in 128 x 128 tiles"


def _bwd_weight(p, grid):
    _tiles(p.N, p.K, grid)
    S = grid[2]
    assert p.rows_per_split * S >= p.M and (S == 1 or p.split_stride >= p.N * p.K + p.N)
    return {"D": p.M * p.N, "A": p.M * p.K, "dW_base": (S - 1) * p.split_stride + p.N * p.K,
            "db_base": (S - 1) * p.split_stride + p.N}


def _aligned(fake, arrays, nbytes):
    for name, a in arrays.items():
        assert a.data.ptr % nbytes == 0, f"{name} is not {nbytes}-byte aligned but the launch takes the vector path"


def _splitk_partial(p, grid, fake):
    """Slices of whole 16-wide k-tiles that cover the reduction R exactly, none empty, one per grid.z."""
    _tiles(p.P, p.Q, grid)
    S = grid[2]
    assert S >= 2, "a split-K partial launch with one slice (the single-kernel path does that)"
    assert p.r_per_split % 16 == 0 and (S - 1) * p.r_per_split < p.R <= S * p.r_per_split, \
        f"{S} slices of {p.r_per_split} for a reduction of {p.R}"
    assert p.split_stride >= p.P * p.Q and p.split_stride % 4 == 0
    if p.vec_out:
        assert p.Q % 2 == 0
        _aligned(fake, {"ws": p.ws}, 8)
    if p.vec_x:
        _aligned(fake, {"X": p.X}, 16)
    return {"X": p.P * p.R, "Y": p.Q * p.R, "ws": (S - 1) * p.split_stride + p.P * p.Q}


def _fwd_epilogue(p, grid, fake):
    assert p.S >= 2 and p.split_stride >= p.M * p.N and p.split_stride % 4 == 0
    if p.vec:
        assert p.N % 4 == 0
        _aligned(fake, {"ws": p.ws, "bias": p.bias, "Aout": p.Aout, "Zout": p.Zout}, 16)
    return {"ws": (p.S - 1) * p.split_stride + p.M * p.N, "bias": p.N, "Aout": p.M * p.N,
            "Zout": p.M * p.N if p.write_z else 0}


def _bwd_data_epilogue(p, grid, fake):
    assert p.S >= 2 and p.split_stride >= p.n and p.split_stride % 4 == 0
    if p.vec:
        assert p.n % 4 == 0
        _aligned(fake, {"ws": p.ws, "out": p.out, "Aprev": p.Aprev, "Zprev": p.Zprev}, 16)
    return {"ws": (p.S - 1) * p.split_stride + p.n, "out": p.n, "Aprev": p.n, "Zprev": p.n}


TC_EXTENTS = {
    "gemm_tc_fwd": lambda p, t, g, fake: (_tiles(p.M, p.N, g) or
                                          {"A": p.M * p.K, "W": p.N * p.K, "bias": p.N, "Aout": p.M * p.N,
                                           "Zout": p.M * p.N if p.write_z else 0}),
    "gemm_tc_bwd_data": lambda p, t, g, fake: (_tiles(p.M, p.K, g) or
                                               {"D": p.M * p.N, "W": p.N * p.K, "out": p.M * p.K,
                                                "Aprev": p.M * p.K, "Zprev": p.M * p.K}),
    "gemm_tc_bwd_weight": lambda p, t, g, fake: _bwd_weight(p, g),
    "gemm_tc_splitk_reduce": lambda p, t, g, fake: {"ws": (p.S - 1) * p.split_stride + p.NK + p.N,
                                                    "dW": p.NK, "db": p.N},
    "gemm_tc_splitk_partial": lambda p, t, g, fake: _splitk_partial(p, g, fake),
    "gemm_tc_fwd_splitk_epilogue": lambda p, t, g, fake: _fwd_epilogue(p, g, fake),
    "gemm_tc_bwd_data_splitk_epilogue": lambda p, t, g, fake: _bwd_data_epilogue(p, g, fake),
}


def install_fake(monkeypatch, **kw):
    """A fake `cupy` checking TC_EXTENTS in sys.modules, gpubp's per-device caches emptied (undone after
    the test)."""
    import gpubp.backends
    from gpubp.backends import cuda_device, cuda_fused

    from .fake_cupy import FakeCupy

    fake = FakeCupy(extents=TC_EXTENTS, **kw)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cuda_device, "_attributes", {})
    monkeypatch.setattr(cuda_device, "_ccs", {})
    monkeypatch.setattr(cuda_device, "_functions", {})
    monkeypatch.setattr(cuda_fused, "_grids", {})
    monkeypatch.setattr(gpubp.backends, "_instances", {})
    return fake
