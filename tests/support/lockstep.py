"""Two threads in lockstep, for tests of state shared between networks.

`in_lockstep(calls, timeout)` runs `calls(k, meet)` for k = 0 and 1 one after the other (`meet`
does nothing), then in two threads whose `meet` is one barrier, so that each call of one thread
runs beside the same call of the other.  Returns `(sequential, threaded)`: the two lists of
results; a thread that raised leaves None (its traceback is printed by threading's hook) and
aborts the barrier, so the other stops at its next meeting instead of waiting out the timeout.
"""

from __future__ import annotations

import threading


def in_lockstep(calls, timeout: float):
    sequential = [calls(k, lambda: None) for k in (0, 1)]
    barrier = threading.Barrier(2, timeout=timeout)
    threaded = [None, None]

    def run(k):
        try:
            threaded[k] = calls(k, barrier.wait)
        except BaseException:
            barrier.abort()
            raise

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sequential, threaded
