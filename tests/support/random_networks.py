"""Random network configurations for the CUDA backend's property tests (fake and emulated CuPy):
sizes that do and do not make fused runs, per-layer activations, every loss with an output
activation it allows, optimizers and precision settings, drawn from a test's `rng`."""

from __future__ import annotations

import numpy as np

from gpubp.activations import ACTIVATIONS
from gpubp.losses import FUSED_OUTPUT, LOSSES
from gpubp.optim import SGD, Adam, AdamW

#: optimizer name -> factory (SGD's variants: plain, momentum + weight decay, Nesterov)
OPTIMIZERS = {
    "sgd": lambda: SGD(0.01),
    "momentum": lambda: SGD(0.01, momentum=0.9, weight_decay=1e-2),
    "nesterov": lambda: SGD(0.01, momentum=0.9, nesterov=True),
    "adam": lambda: Adam(0.01),
    "adamw": lambda: AdamW(0.01, weight_decay=1e-2),
}


def random_network(rng, *, fused_share=0.35, max_width=140, fused_batches=(1024, 1031, 1500),
                   batches=(1, 199)) -> dict:
    """One configuration: `sizes` (1-3 hidden layers; with probability `fused_share` every width
    <= 64 and a batch of at least 1024, so the backend fuses them), `activations` (one per hidden
    layer), `output_activation`, `loss`, `B`."""
    n_hidden = int(rng.integers(1, 4))
    fused = bool(rng.random() < fused_share)
    if fused:
        widths = [int(rng.choice([8, 16, 17, 33, 48, 64])) for _ in range(n_hidden)]
        n_in, B = int(rng.integers(1, 65)), int(rng.choice(fused_batches))
    else:
        widths = [int(rng.integers(1, max_width)) for _ in range(n_hidden)]
        n_in, B = int(rng.integers(1, 80)), int(rng.integers(*batches))
    loss = str(rng.choice(LOSSES))
    n_out = int(rng.integers(2 if loss == "cross_entropy" else 1, 12))
    out_act = "identity" if loss in FUSED_OUTPUT else str(rng.choice(ACTIVATIONS))
    return dict(sizes=[n_in] + widths + [n_out], activations=[str(rng.choice(ACTIVATIONS)) for _ in widths],
                output_activation=out_act, loss=loss, B=B)


__all__ = ["OPTIMIZERS", "random_network"]
