"""Made-up benchmark rows and the goal lookup shared by the benchmark tests (test_bench, test_bench_units)."""
from gpubp.bench import goals


def find_goal(**kw):
    """The one goal of GOALS with these fields."""
    found = [g for g in goals.GOALS if all(getattr(g, k) == v for k, v in kw.items())]
    assert len(found) == 1, (kw, found)
    return found[0]


def kernel_row(peer, kernel, shape, median_ms, **fields):
    """A GPU kernel row of `shape` = (batch, n_out, n_in) timed at `median_ms`, with `fields` added."""
    B, N, K = shape
    return dict(kind="kernel", device="cuda", kernel=kernel, peer=peer, batch=B, n_out=N, n_in=K,
                median_ms=median_ms, **fields)
