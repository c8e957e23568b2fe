"""The reduction slices of the tensor-core split-K GEMMs (kernels/gemm_tc.cu section 4), modelled
on the CPU: for the slice choices the launcher makes (`cuda_gemm_tc.fwd_splits` /
`bwd_data_splits`, i.e. `cuda_launch.wave_splits`), replay which reduction indices r each slice's
blocks copy into shared memory, following `tc_core` / `tc_load_tile`'s rules:

- slice z sums r in [z * per, min(R, (z + 1) * per)) in k-tiles of TC_BK from its start;
- an RC operand (X always; Y in the forward) is copied in 4-float chunks at r0 + 4 (c % 4):
  with vec (R % 4 == 0, 16-byte aligned base) one 16-byte cp.async per chunk, taken whole when
  its first r is below the slice end (else zero-filled); without vec each float alone;
- a PC operand (Y of the input gradient) is copied one r row at a time (chunks run along p).

Checked for every slice of every shape: each r in [0, R) is summed by exactly one slice (no
chunk runs past its slice's end into the next slice, none is missed), every 16-byte source is
16-byte aligned (its element offset p * R + r is a multiple of 4), no slice is empty, the
slices fit the scratch the launcher asks for, and the grid's z extent is the slice count.
"""

import pytest

from gpubp.backends import cuda_gemm_tc as tc

BK = tc.BK


def _rc_indices(r_begin, r_end, vec):
    """The r each thread block's RC copies take for one slice (a multiset, as a list)."""
    taken = []
    ntiles = -(-(r_end - r_begin) // BK) if r_end > r_begin else 0
    for t in range(ntiles):
        r0 = r_begin + t * BK
        for c in range(4):          # the 4 chunks of a row of the k-tile
            gr = r0 + 4 * c
            if vec:
                assert gr % 4 == 0, f"16-byte cp.async from an unaligned r {gr}"
                if gr < r_end:
                    taken.extend(range(gr, gr + 4))
            else:
                taken.extend(r for r in range(gr, gr + 4) if r < r_end)
    return taken


def _pc_indices(r_begin, r_end):
    ntiles = -(-(r_end - r_begin) // BK) if r_end > r_begin else 0
    return [r for t in range(ntiles) for r in range(r_begin + t * BK, r_begin + (t + 1) * BK) if r < r_end]


SHAPES = [(M, Q, R) for M in (1, 3, 64, 200, 256) for Q in (1, 10, 17, 128, 1000)
          for R in (1, 5, 255, 256, 257, 1000, 1023, 1024, 4096, 4097, 5000)]


@pytest.mark.parametrize("sms", [1, 16, 132])
@pytest.mark.parametrize("which", ["fwd", "bwd_data"])
def test_every_reduction_index_is_summed_by_exactly_one_slice(which, sms):
    split = 0
    for P, Q, R in SHAPES:
        if which == "fwd":     # out M x N = P x Q, reduction over K = R
            S, per = tc.fwd_splits(P, Q, R, sms)
            need = tc.fwd_scratch_size(P, Q, R, sms=sms)
        else:                  # delta M x N, W N x K: out M x K = P x Q, reduction over N = R
            S, per = tc.bwd_data_splits(P, R, Q, sms)
            need = tc.bwd_data_scratch_size(P, R, Q, sms=sms)
        if S == 1:
            assert per == max(R, 1) and need == 0
            continue
        split += 1
        assert per % BK == 0 and (S - 1) * per < R, (P, Q, R, S, per)
        assert need == S * tc.partial_stride(P, Q) and tc.partial_stride(P, Q) % 4 == 0
        for vec in ((True, False) if R % 4 == 0 else (False,)):
            seen_x, seen_y = [], []
            for z in range(S):
                r_begin, r_end = z * per, min(R, z * per + per)
                assert r_end > r_begin, f"slice {z} of {S} is empty ({P, Q, R})"
                seen_x += _rc_indices(r_begin, r_end, vec)
                seen_y += _pc_indices(r_begin, r_end) if which == "bwd_data" else _rc_indices(r_begin, r_end, vec)
            assert sorted(seen_x) == list(range(R)), (which, P, Q, R, S, per, vec)
            assert sorted(seen_y) == list(range(R)), (which, P, Q, R, S, per, vec)
    assert split > 0   # the shapes do reach the split path


def test_the_model_catches_a_slice_that_is_not_whole_chunks():
    """A slice end off the 4-float grid (per = 18) makes a whole 16-byte chunk run into the next
    slice: the model must see r counted twice."""
    taken = _rc_indices(0, 18, True) + _rc_indices(18, 36, False)
    assert sorted(taken) != list(range(36))
