"""CPU-side logic of the tensor-core GEMM launchers (gpubp.backends.cuda_gemm_tc): the
batch split of the weight gradient, its scratch size, kernel names and shared memory."""

import pytest

from gpubp.activations import ACTIVATIONS
from gpubp.backends import cuda_gemm_tc as tc
from gpubp.backends.cuda_source import kernels_dir


@pytest.mark.parametrize("M", [1, 3, 15, 16, 17, 255, 256, 257, 1000, 4097, 65536, 10 ** 6 + 7])
@pytest.mark.parametrize("N, K", [(1, 1), (3, 17), (128, 128), (129, 257), (4096, 4096)])
@pytest.mark.parametrize("sms", [1, 108, 132])
def test_splits_cover_the_batch_with_no_empty_split(M, N, K, sms):
    S, rows = tc.splits(M, N, K, sms)
    assert 1 <= S <= tc.MAX_SPLITS
    if S == 1:
        assert rows >= M
        return
    assert rows % tc.BK == 0 and rows >= tc.MIN_ROWS_PER_SPLIT - tc.BK
    assert (S - 1) * rows < M <= S * rows            # every split has rows, all rows covered
    tiles = -(-N // tc.BM) * -(-K // tc.BM)
    assert tiles < 2 * sms                           # split only when the tiles leave SMs idle


def test_scratch_size():
    assert tc.bwd_weight_scratch_size(1 << 20, 4096, 4096, sms=132) == 0   # enough tiles
    S, _ = tc.splits(1 << 20, 64, 64, 132)
    assert S > 1
    assert tc.bwd_weight_scratch_size(1 << 20, 64, 64, sms=132) == S * tc.split_stride(64, 64)
    assert tc.split_stride(3, 5) % 4 == 0 and tc.split_stride(3, 5) >= 3 * 5 + 3


def test_names_and_shared_memory():
    names = set(tc.SPECS[0].name_expressions)
    src = tc.SPECS[0].source()
    # per mode: fwd and bwd_data per activation, bwd_weight, round, two split-K partials;
    # then the weight gradient's reduce and the split-K epilogues per activation, float32-storing
    # and bf16-storing
    assert len(names) == 3 * (2 * len(ACTIVATIONS) + 4) + 1 + 2 * 2 * len(ACTIVATIONS)
    assert "gemm_tc_fwd<2, 6, 3>" in names and "gemm_tc_bwd_weight<1, 3>" in names
    assert "gemm_tc_splitk_partial<1, true, 3>" in names and "gemm_tc_fwd_splitk_epilogue<6>" in names
    assert "gemm_tc_bwd_data_splitk_epilogue<0>" in names
    assert "gemm_tc_fwd_splitk_epilogue<6, true>" in names and "gemm_tc_bwd_data_splitk_epilogue<0, true>" in names
    assert "template <int ACT, bool BF16 = false>\n__global__ void gemm_tc_fwd_splitk_epilogue" in src
    # the split choice counts the resident blocks the kernels' __launch_bounds__ ask for
    assert f"#define TC_MIN_BLOCKS_FWD {tc.BLOCKS_PER_SM}" in src
    assert "__launch_bounds__(TC_THREADS, TC_MIN_BLOCKS_FWD)\ngemm_tc_splitk_partial" in src
    assert tc.smem_bytes("tf32") == tc.smem_bytes("3xtf32") == 3 * 2 * 128 * 20 * 4
    assert tc.smem_bytes("bf16") == 3 * 2 * 128 * 24 * 4
    # the kernel's tile constants come from the header the launcher's constants write
    assert "#define TC_BM 128" in src and "#define TC_BK 16" in src and "#define TC_THREADS 256" in src
    assert "#define TC_BM" not in (kernels_dir() / "gemm_tc.cu").read_text()
    assert "TC_BF16 ? TC_BK + 8 : TC_BK + 4" in src   # the pitches smem_bytes assumes


def test_bad_precision_is_refused_before_any_device_call():
    with pytest.raises(ValueError, match="precision"):
        tc._check_precision("float32")
    with pytest.raises(ValueError, match="precision"):
        tc._check_precision("fp16")


# ---------------------------------------------------------------- split-K of the forward and input gradient
AWKWARD = [1, 7, 16, 17, 255, 256, 257, 511, 512, 1000, 4096, 4097, 65537]


@pytest.mark.parametrize("R", AWKWARD)
@pytest.mark.parametrize("P, Q", [(1, 1), (17, 3), (128, 128), (256, 4096), (1000, 129), (4096, 10),
                                  (1024, 4096), (8192, 8192)])
@pytest.mark.parametrize("sms", [1, 108, 132])
def test_k_splits_cover_the_reduction_in_whole_k_tiles_within_one_wave(P, Q, R, sms):
    S, per = tc.k_splits(P, Q, R, sms)
    tiles = -(-P // tc.BM) * -(-Q // tc.BM)
    slots = tc.BLOCKS_PER_SM * sms
    assert 1 <= S <= tc.MAX_K_SPLITS
    if S == 1:
        assert per >= R
        # no split only when it cannot help: the tiles fill half the device, or R is short
        assert 2 * tiles > slots or R < 2 * tc.MIN_K_PER_SPLIT
        return
    assert per % tc.BK == 0 and per >= tc.MIN_K_PER_SPLIT
    assert (S - 1) * per < R <= S * per                  # slices cover R, the last one not empty
    assert tiles * S <= slots                            # one wave of resident blocks
    assert S <= min(slots // tiles, R // tc.MIN_K_PER_SPLIT)


def test_small_batches_split_the_wide_network_large_ones_do_not():
    """[1024, 4096, 4096, 4096, 10] on 132 SMs (2 blocks of the 128 x 128 tile each: 264 slots)."""
    sizes = (1024, 4096, 4096, 4096, 10)
    fwd = {B: [tc.fwd_splits(B, sizes[l], sizes[l - 1], 132)[0] for l in range(1, 5)] for B in (256, 1024, 4096)}
    # batch 256: a hidden layer's output is 2 x 32 = 64 tiles: 4 slices fill 256 of the 264 slots;
    # the output layer (2 tiles) takes the most slices allowed (K / 256 = 16)
    assert fwd[256] == [4, 4, 4, 16]
    assert fwd[1024] == [1, 1, 1, 16]           # 256 tiles fill the device already
    assert fwd[4096] == [1, 1, 1, 8]            # 32 tiles of the output layer: 8 slices
    data = {B: [tc.bwd_data_splits(B, sizes[l], sizes[l - 1], 132)[0] for l in range(1, 5)] for B in (256, 1024, 4096)}
    # the output layer's input gradient sums over its 10 outputs: never split; layer 1's input
    # gradient (dLoss/dX, with input_grad) has a 1024-wide output
    assert data[256] == [16, 4, 4, 1]
    assert data[1024] == [4, 1, 1, 1]
    assert data[4096] == [1, 1, 1, 1]
    assert tc.fwd_splits(256, 4096, 4096, 132) == (4, 1024)
    assert tc.fwd_scratch_size(256, 4096, 4096, sms=132) == 4 * 256 * 4096
    assert tc.bwd_data_scratch_size(256, 4096, 4096, sms=132) == 4 * 256 * 4096
    assert tc.fwd_scratch_size(1024, 4096, 4096, sms=132) == 0
    assert tc.bwd_data_scratch_size(256, 10, 4096, sms=132) == 0
    assert tc.partial_stride(3, 5) == 16


# ---------------------------------------------------------------- the launches, on the fake cupy
@pytest.fixture
def fake(monkeypatch):
    from support.tc_contract import install_fake

    return install_fake(monkeypatch)


def _arrays(fake, *shapes):
    import numpy as np

    return [fake.zeros(s, dtype=np.float32) for s in shapes]


def _scratch(fake, n):
    import numpy as np

    return fake.empty(max(n, 1), dtype=np.float32)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_fwd_split_k_launches_partials_then_the_ordered_epilogue(fake, act):
    from gpubp.activations import ACT_CODES

    M, N, K = 256, 4096, 4096
    A, W, b, A_out, Z_out = _arrays(fake, (M, K), (N, K), (N,), (M, N), (M, N))
    ws = _scratch(fake, tc.fwd_scratch_size(M, N, K))
    tc.gemm_fwd(A, W, b, ACT_CODES[act], A_out, Z_out, precision="tf32", scratch=ws)
    part, epi = fake.launches
    assert part.name == "gemm_tc_splitk_partial<0, false, 3>"
    assert part.grid == (64, 1, 4) and part.block == (256, 1, 1) and part.shared_mem == tc.smem_bytes("tf32")
    assert part.arg("r_per_split") == 1024 and part.arg("split_stride") == M * N
    assert part.arg("X") is A and part.arg("Y") is W and part.arg("ws").data.ptr == ws.data.ptr
    assert (part.arg("P"), part.arg("Q"), part.arg("R")) == (M, N, K)
    assert part.arg("vec_x") == part.arg("vec_y") == part.arg("vec_out") == 1
    assert epi.name == f"gemm_tc_fwd_splitk_epilogue<{ACT_CODES[act]}>"
    assert epi.arg("S") == 4 and epi.arg("vec") == 1 and epi.arg("write_z") == 1
    assert epi.grid == (min(M * N // 4 // 256, 8 * 132), 1, 1)
    assert epi.arg("Aout") is A_out and epi.arg("Zout") is Z_out and epi.arg("bias") is b


def test_fwd_without_split_or_scratch_is_the_single_kernel(fake):
    from gpubp.activations import ACT_CODES

    M, N, K = 4096, 4096, 1024                       # enough tiles: no split
    A, W, b, A_out = _arrays(fake, (M, K), (N, K), (N,), (M, N))
    assert tc.fwd_scratch_size(M, N, K) == 0
    tc.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out, precision="bf16", scratch=None)
    assert [l.name for l in fake.launches] == ["gemm_tc_fwd<2, 3, 3>"]
    fake.reset()
    M = 256                                          # split wanted, but no scratch: one kernel, correct
    A, A_out = _arrays(fake, (M, K), (M, N))
    tc.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out, precision="bf16")
    assert [(l.name, l.grid) for l in fake.launches] == [("gemm_tc_fwd<2, 3, 3>", (64, 1, 1))]


def test_a_short_scratch_is_refused_before_any_launch(fake):
    from gpubp.activations import ACT_CODES

    M, N, K = 256, 4096, 4096
    A, W, b, A_out, delta, dprev = _arrays(fake, (M, K), (N, K), (N,), (M, N), (M, N), (M, K))
    short = _scratch(fake, tc.fwd_scratch_size(M, N, K) - 1)
    with pytest.raises(ValueError, match="scratch holds .* gemm_fwd needs .*fwd_scratch_size"):
        tc.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out, precision="tf32", scratch=short)
    with pytest.raises(ValueError, match="scratch holds .* gemm_bwd_data needs .*bwd_data_scratch_size"):
        tc.gemm_bwd_data(delta, W, A, None, ACT_CODES["relu"], dprev, precision="tf32", scratch=short)
    import numpy as np

    with pytest.raises(TypeError, match="scratch must be a float32"):
        tc.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out, precision="tf32",
                    scratch=fake.zeros(tc.fwd_scratch_size(M, N, K), dtype=np.float64))
    assert not fake.launches


@pytest.mark.parametrize("act", ["identity", "tanh", "silu"])
def test_bwd_data_split_k_at_awkward_sizes(fake, act):
    """N = 4097 (the reduction), K = 17 (odd: scalar stores and loads), M = 3: one tile, 16 slices
    of 272 (15 x 272 = 4080 < 4097), no 16-byte paths."""
    from gpubp.activations import ACT_CODES, NEEDS_Z

    M, N, K = 3, 4097, 17
    delta, W, Ap, Zp, out = _arrays(fake, (M, N), (N, K), (M, K), (M, K), (M, K))
    assert tc.bwd_data_splits(M, N, K, 132) == (16, 272)
    ws = _scratch(fake, tc.bwd_data_scratch_size(M, N, K))
    tc.gemm_bwd_data(delta, W, Ap, Zp if act in NEEDS_Z else None, ACT_CODES[act], out, precision="3xtf32",
                     scratch=ws)
    part, epi = fake.launches
    assert part.name == "gemm_tc_splitk_partial<1, true, 3>" and part.grid == (1, 1, 16)
    assert (part.arg("P"), part.arg("Q"), part.arg("R"), part.arg("r_per_split")) == (M, K, N, 272)
    assert part.arg("vec_x") == part.arg("vec_y") == part.arg("vec_out") == 0
    assert part.arg("split_stride") == 52                  # 3 * 17 = 51, padded to a multiple of 4
    assert epi.name == f"gemm_tc_bwd_data_splitk_epilogue<{ACT_CODES[act]}>" and epi.arg("vec") == 0
    assert epi.arg("n") == M * K and epi.arg("S") == 16 and epi.arg("out") is out
    g = {"identity": out, "tanh": Ap, "silu": Zp}[act]    # identity reads nothing: a placeholder
    assert epi.arg("Aprev") is g and epi.arg("Zprev") is g


def test_misaligned_scratch_takes_the_scalar_paths(fake):
    import numpy as np

    from gpubp.activations import ACT_CODES

    M, N, K = 200, 256, 1024
    A, W, b, A_out = _arrays(fake, (M, K), (N, K), (N,), (M, N))
    n = tc.fwd_scratch_size(M, N, K)
    assert n > 0
    flat = fake.zeros(n + 1, dtype=np.float32)
    tc.gemm_fwd(A, W, b, ACT_CODES["relu"], A_out, precision="tf32", scratch=flat[1:])
    part, epi = fake.launches
    assert part.arg("vec_out") == 0 and epi.arg("vec") == 0 and part.arg("vec_x") == 1


def test_bf16_split_k_runs_the_rounding_epilogues(fake):
    """bf16 stores Z, A and the input gradient rounded: its split-K epilogues are the BF16
    instantiations, with the same arguments as the float32-storing ones."""
    from gpubp.activations import ACT_CODES

    M, N, K = 256, 4096, 4096
    A, W, b, A_out, Z_out, delta, dprev = _arrays(fake, (M, K), (N, K), (N,), (M, N), (M, N), (M, N), (M, K))
    ws = _scratch(fake, max(tc.fwd_scratch_size(M, N, K), tc.bwd_data_scratch_size(M, N, K)))
    tc.gemm_fwd(A, W, b, ACT_CODES["gelu"], A_out, Z_out, precision="bf16", scratch=ws)
    tc.gemm_bwd_data(delta, W, A, None, ACT_CODES["tanh"], dprev, precision="bf16", scratch=ws)
    names = [l.name for l in fake.launches]
    assert names == ["gemm_tc_splitk_partial<2, false, 3>", "gemm_tc_fwd_splitk_epilogue<5, true>",
                     "gemm_tc_splitk_partial<2, true, 3>", "gemm_tc_bwd_data_splitk_epilogue<2, true>"]
    epi = fake.launches[1]
    assert epi.arg("Aout") is A_out and epi.arg("Zout") is Z_out and epi.arg("write_z") == 1
    assert fake.launches[3].arg("Aprev") is A and fake.launches[3].arg("out") is dprev
    assert tc.kernel_names("bf16", M, N, K, ACT_CODES["gelu"], ACT_CODES["tanh"], sms=132) >= {
        "gemm_tc_fwd_splitk_epilogue<5, true>", "gemm_tc_bwd_data_splitk_epilogue<2, true>"}
    assert "gemm_tc_fwd_splitk_epilogue<5>" in tc.kernel_names("tf32", M, N, K, ACT_CODES["gelu"], None, sms=132)

