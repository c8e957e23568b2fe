"""Shared fixtures and helpers of the test suite."""

import numpy as np
import pytest

import gpubp
from gpubp.activations import ACTIVATIONS
from gpubp.losses import FUSED_OUTPUT, LOSSES
from support.emulate import install_if_requested


# GPUBP_EMULATE_GPU=1: tests/gpu run on the CPU kernel emulator (tests/support/emulate.py).  Here,
# not in a tests/gpu/conftest.py: a second module named `conftest` would hide this one from the
# tests' `from conftest import ...`.
install_if_requested()


def rel_err(out, ref) -> float:
    """||out - ref|| / ||ref|| (NaN never passes a `<` check)."""
    out, ref = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (den if den > 0 else 1.0))


def random_targets(rng, loss, B, n_out, dtype=np.float64, labels=True):
    """Valid random targets of every kind a loss takes."""
    if loss == "cross_entropy":
        if labels:
            return rng.integers(0, n_out, size=B)
        p = rng.random((B, n_out)) + 0.1
        return (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    if loss == "binary_cross_entropy":
        return rng.random((B, n_out)).astype(dtype)
    if loss == "poisson":   # counts: zeros among them (the deviance's y = 0 branch), and rates between
        counts = rng.poisson(rng.uniform(0.2, 4.0, (B, n_out))).astype(dtype)
        return np.where(rng.random((B, n_out)) < 0.2, rng.uniform(0, 3, (B, n_out)), counts).astype(dtype)
    return rng.standard_normal((B, n_out)).astype(dtype)


def output_activation_for(loss, act):
    return "identity" if loss in FUSED_OUTPUT else act


@pytest.fixture
def rng():
    """A generator with a fresh seed each run; the seed is printed, so a failure can be replayed."""
    seed = int(np.random.SeedSequence().entropy % (2 ** 63))
    print(f"rng seed: {seed}")
    return np.random.default_rng(seed)


__all__ = ["rel_err", "random_targets", "output_activation_for", "ACTIVATIONS", "LOSSES", "gpubp"]
