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
    assert len(names) == 3 * (2 * len(ACTIVATIONS) + 2) + 1
    assert "gemm_tc_fwd<2, 6, 3>" in names and "gemm_tc_bwd_weight<1, 3>" in names
    assert tc.smem_bytes("tf32") == tc.smem_bytes("3xtf32") == 3 * 2 * 128 * 20 * 4
    assert tc.smem_bytes("bf16") == 3 * 2 * 128 * 24 * 4
    src = tc.SPECS[0].source()
    # the kernel's tile constants come from the header the launcher's constants write
    assert "#define TC_BM 128" in src and "#define TC_BK 16" in src and "#define TC_THREADS 256" in src
    assert "#define TC_BM" not in (kernels_dir() / "gemm_tc.cu").read_text()
    assert "TC_BF16 ? TC_BK + 8 : TC_BK + 4" in src   # the pitches smem_bytes assumes


def test_bad_precision_is_refused_before_any_device_call():
    with pytest.raises(ValueError, match="precision"):
        tc._check_precision("float32")
    with pytest.raises(ValueError, match="precision"):
        tc._check_precision("fp16")
