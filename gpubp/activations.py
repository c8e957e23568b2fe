"""Activation names (docs/spec.md, "Activations") and what each derivative needs.

The math lives in the backends; this module is the single list of names.
"""

from __future__ import annotations

#: every activation, in the order of docs/spec.md's table (the index is the CUDA code)
ACTIVATIONS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "gelu", "silu")

#: activations whose derivative needs the pre-activation Z (the others use A)
NEEDS_Z = frozenset({"gelu", "silu"})

#: the negative slope of leaky_relu
LEAKY_SLOPE = 0.01

#: sqrt(2/pi) and the cubic coefficient of the tanh approximation of GELU
GELU_C = 0.7978845608028654
GELU_K = 0.044715


def check_activation(name, what: str = "activation") -> str:
    """Return `name` if it is an activation, else raise a ValueError naming the choices."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be a string naming an activation, got {type(name).__name__}")
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return name

#: the integer code of each activation in the CUDA kernels (kernels/activations.cuh)
ACT_CODES = {name: i for i, name in enumerate(ACTIVATIONS)}
