"""A model of the Hopper GEMM's TMA/mbarrier/wgmma pipeline (kernels/gemm_wgmma.cu, `wg_pipeline`),
run on the CPU over many interleavings.

The kernel's own protocol is read from its source: the `full` and `empty` barriers' arrival
counts, the parities the producer and the consumers wait on, the `wgmma.wait_group` depth and
the stage each consumer releases; the stage count and the number of consumer warpgroups come
from kernel_constants.  The model runs one producer thread, the consumer warpgroups, the TMA
copies and the wgmma groups as separate actors with PTX semantics:

- an mbarrier completes a phase when its pending arrivals and its transaction bytes are both
  zero (arrive.expect_tx adds the bytes, each TMA copy's complete_tx removes its own), and
  `mbarrier.try_wait.parity p` succeeds once the phase of parity p has completed, i.e. while
  the current phase's parity differs from p;
- a consumer's wgmma group for k-tile kt reads its stage from issue until it completes (in
  issue order, at any time), and `wgmma.wait_group n` blocks until at most n are pending.

A random scheduler picks among the enabled actions.  Checked on every step: no TMA writes a
stage while a consumer's wgmma may still read its previous k-tile, no consumer passes its
`full` wait before that k-tile's bytes have all landed, no consumer releases a stage while one
of its own wgmma groups still reads it; and every run ends (no deadlock) with every k-tile
consumed by every consumer.  The mutations at the end show the model catches the classic
mistakes (one arrival for two consumers, releasing the current stage, a wrong parity).
"""

import random
import re

import pytest

from gpubp.backends.cuda_source import kernels_dir
from gpubp.backends.kernel_constants import WG_STAGES, WG_THREADS

STAGE_BYTES = 1000   # any positive transaction size: the model checks the protocol, not the layout
TMA_PER_STAGE = 2    # the A and the W tile of a stage, each completing its own bytes


def _c_expr(expr: str, kt: int) -> int:
    """Evaluate one of the kernel's integer expressions in kt and WG_STAGES (non-negative ints:
    C's / and % are Python's // and %)."""
    py = expr.replace("WG_STAGES", str(WG_STAGES)).replace("/", "//")
    if not re.fullmatch(r"[\d\s()+\-*/%&kt]+", py):
        raise AssertionError(f"unexpected expression in the kernel: {expr!r}")
    return eval(py, {}, {"kt": kt})


def kernel_protocol() -> dict:
    """The pipeline's protocol as written in kernels/gemm_wgmma.cu."""
    src = (kernels_dir() / "gemm_wgmma.cu").read_text()

    def one(pattern):
        found = re.findall(pattern, src)
        assert len(found) == 1, f"expected one match of {pattern!r} in gemm_wgmma.cu, found {found}"
        return found[0]

    producer_wait = one(r"if \(kt >= WG_STAGES\) mbar_wait\(empty\(s\), ([^;]+)\);")
    consumer_wait = one(r"mbar_wait\(full\(s\), ([^;]+)\);")
    release_cond, release_stage = one(r"if \((kt > 0) && threadIdx\.x % 128 == 0\) mbar_arrive\(empty\(([^;]+)\)\);")
    assert release_cond == "kt > 0"
    return {
        "full_count": int(one(r"mbar_init\(full\(s\), (\d+)\);")),
        "empty_count": int(one(r"mbar_init\(empty\(s\), (\d+)\);")),
        "producer_parity": lambda kt: _c_expr(producer_wait, kt),
        "consumer_parity": lambda kt: _c_expr(consumer_wait, kt),
        "wait_depth": int(one(r"wg_commit\(\);\s*wg_wait<(\d+)>\(\);")),
        "release_stage": lambda kt: _c_expr(release_stage, kt),
        "stages": WG_STAGES,
        "consumers": WG_THREADS // 128 - 1,
    }


class Barrier:
    def __init__(self, count):
        self.count, self.pending, self.tx, self.phase = count, count, 0, 0

    def _maybe_complete(self):
        if self.pending == 0 and self.tx == 0:
            self.phase += 1
            self.pending = self.count

    def arrive(self, tx=0):
        assert self.pending > 0, "more arrivals than the barrier's count in one phase"
        self.tx += tx
        self.pending -= 1
        self._maybe_complete()

    def complete_tx(self, nbytes):
        self.tx -= nbytes
        self._maybe_complete()

    def passed(self, parity):
        return (self.phase & 1) != parity


class ProtocolError(AssertionError):
    pass


def simulate(proto: dict, ktiles: int, rng: random.Random) -> None:
    """One random interleaving of the pipeline over `ktiles` k-tiles; raises ProtocolError."""
    S, C = proto["stages"], proto["consumers"]
    full = [Barrier(proto["full_count"]) for _ in range(S)]
    empty = [Barrier(proto["empty_count"]) for _ in range(S)]
    landed = [0] * ktiles                 # TMA copies of k-tile kt that have completed
    tma = []                              # in-flight copies: (stage, kt)
    issued = [[] for _ in range(C)]       # k-tiles whose wgmma group consumer c issued
    done = [set() for _ in range(C)]      # k-tiles whose wgmma group of consumer c completed
    pend = [[] for _ in range(C)]         # consumer c's pending groups, oldest first
    prod = {"kt": 0, "step": "wait"}
    cons = [{"kt": 0, "step": "wait"} for _ in range(C)]

    def fail(msg):
        raise ProtocolError(f"ktiles={ktiles}: {msg}")

    def actions():
        acts = []
        kt = prod["kt"]
        if kt < ktiles:
            s = kt % S
            if prod["step"] == "wait":
                if kt < S or empty[s].passed(proto["producer_parity"](kt)):
                    acts.append(("prod_wait", None))
            else:
                acts.append(("prod_issue", None))
        acts.extend(("tma_done", i) for i in range(len(tma)))
        for c in range(C):
            if pend[c]:
                acts.append(("group_done", c))
            st, kt = cons[c], cons[c]["kt"]
            if st["step"] == "wait" and kt < ktiles:
                if full[kt % S].passed(proto["consumer_parity"](kt)):
                    acts.append(("cons_pass", c))
            elif st["step"] == "issue":
                acts.append(("cons_issue", c))
            elif st["step"] == "wait_group" and len(pend[c]) <= proto["wait_depth"]:
                acts.append(("cons_release", c))
        return acts

    def finished():
        return (prod["kt"] == ktiles and not tma and
                all(st["kt"] == ktiles and not pend[c] for c, st in enumerate(cons)))

    while True:
        acts = actions()
        if not acts:
            if finished():
                break
            fail(f"deadlock: producer at k-tile {prod['kt']}, consumers at {[st['kt'] for st in cons]}")
        what, arg = rng.choice(acts)
        if what == "prod_wait":
            prod["step"] = "issue"
        elif what == "prod_issue":
            kt = prod["kt"]
            s = kt % S
            if kt >= S:   # the copy overwrites k-tile kt - S: every consumer must be done reading it
                for c in range(C):
                    if kt - S not in done[c]:
                        fail(f"TMA of k-tile {kt} overwrites stage {s} while consumer {c} may still read "
                             f"k-tile {kt - S}")
            full[s].arrive(tx=TMA_PER_STAGE * STAGE_BYTES)
            tma.extend([(s, kt)] * TMA_PER_STAGE)
            prod["kt"], prod["step"] = kt + 1, "wait"
        elif what == "tma_done":
            s, kt = tma.pop(arg)
            landed[kt] += 1
            full[s].complete_tx(STAGE_BYTES)
        elif what == "group_done":
            done[arg].add(pend[arg].pop(0))
        elif what == "cons_pass":
            kt = cons[arg]["kt"]
            if landed[kt] != TMA_PER_STAGE:
                fail(f"consumer {arg} passed its full wait of k-tile {kt} before its data landed")
            cons[arg]["step"] = "issue"
        elif what == "cons_issue":
            kt = cons[arg]["kt"]
            issued[arg].append(kt)
            pend[arg].append(kt)
            cons[arg]["step"] = "wait_group"
        elif what == "cons_release":
            kt = cons[arg]["kt"]
            if kt > 0:
                s = proto["release_stage"](kt)
                reading = [k for k in issued[arg] if k % S == s and k not in done[arg]]
                if reading:
                    fail(f"consumer {arg} releases stage {s} while its wgmma of k-tile {reading} reads it")
                empty[s].arrive()
            cons[arg]["kt"], cons[arg]["step"] = kt + 1, "wait"
    for c in range(C):
        if issued[c] != list(range(ktiles)):
            fail(f"consumer {c} consumed {issued[c]}")


def _run_all(proto, runs=25):
    for ktiles in range(1, 21):
        for seed in range(runs):
            simulate(proto, ktiles, random.Random(1000 * ktiles + seed))


def test_kernel_protocol_is_read_from_the_source():
    p = kernel_protocol()
    assert p["stages"] == 4 and p["consumers"] == 2
    assert p["full_count"] == 1 and p["empty_count"] == p["consumers"]
    assert [p["consumer_parity"](kt) for kt in range(9)] == [0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert [p["producer_parity"](kt) for kt in range(4, 13)] == [0, 0, 0, 0, 1, 1, 1, 1, 0]
    assert [p["release_stage"](kt) for kt in range(1, 6)] == [0, 1, 2, 3, 0]


def test_pipeline_protocol_never_deadlocks_or_races():
    _run_all(kernel_protocol())


@pytest.mark.parametrize("mutation, message", [
    ({"empty_count": 1}, "more arrivals|overwrites"),
    ({"release_stage": lambda kt: kt % WG_STAGES}, "releases stage"),
    ({"wait_depth": 2}, "releases stage"),
    ({"consumer_parity": lambda kt: (kt // WG_STAGES + 1) & 1}, "before its data landed|deadlock"),
    ({"producer_parity": lambda kt: (kt // WG_STAGES) & 1}, "overwrites|deadlock"),
])
def test_the_model_catches_protocol_mistakes(mutation, message):
    proto = {**kernel_protocol(), **mutation}
    with pytest.raises(ProtocolError, match=message):
        _run_all(proto, runs=10)
