"""The cost model of docs/spec.md ("Cost of a step"): FLOPs and the fewest bytes moved."""

from __future__ import annotations

import math


def n_params(sizes) -> int:
    """Trainable parameters of a dense network of layer sizes `sizes`."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def step_flops(sizes, batch) -> int:
    """The GEMM FLOPs of a step, `2 B (3 sum n_{l-1} n_l - n_0 n_1)`: 2 per multiply-add for the
    forward product and for dW of every layer, and for delta @ W of every layer but the first
    (no step or fused run computes dLoss/dX: the input needs no gradient)."""
    prods = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * batch * (3 * sum(prods) - prods[0])


#: optimizer state elements per parameter
OPT_STATES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


def step_min_bytes(sizes, batch, optimizer="adam", itemsize=4, label_bytes=4) -> int:
    """Fewest bytes a step moves: each weight, gradient and optimizer-state
    element once; each kept activation `A[1..L]` written once and read once; the
    input `X` read once and the int labels read once."""
    P = n_params(sizes)
    per_param = 2 + OPT_STATES[optimizer]
    return itemsize * (P * per_param + 2 * batch * sum(sizes[1:]) + batch * sizes[0]) + batch * label_bytes


def run_min_bytes(sizes, batch, itemsize=4) -> int:
    """Fewest bytes of a fused run's forward and backward (no loss, no optimizer, no dLoss/dX):
    each parameter read once and its gradient written once, each activation `A[1..L]` written
    once and read once, the input and the given last delta read once."""
    return itemsize * (2 * n_params(sizes) + 2 * batch * sum(sizes[1:]) + batch * (sizes[0] + sizes[-1]))


def kernel_flops(batch, n_out, n_in) -> int:
    return 2 * batch * n_out * n_in


def kernel_min_bytes(kind, batch, n_out, n_in, itemsize=4) -> int:
    """fwd: read A_prev, W, b, write A; bwd_data: read delta, W, A_prev (for g'),
    write delta_prev; bwd_weight: read delta, A_prev, write dW, db."""
    B, N, K = batch, n_out, n_in
    elems = {"fwd": B * K + N * K + N + B * N,
             "bwd_data": B * N + N * K + 2 * B * K,
             "bwd_weight": B * N + B * K + N * K + N}[kind]
    return itemsize * elems


def n_sets(set_bytes, l2_bytes, cap_bytes=2 ** 31) -> int:
    """How many input sets to rotate so that together they are at least twice the L2."""
    n = math.ceil(2 * l2_bytes / max(set_bytes, 1))
    n = min(n, max(1, cap_bytes // max(set_bytes, 1)))
    return int(min(max(n, 2), 8))
