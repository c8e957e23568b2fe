"""Edge cases of the `poisson` loss found by auditing a5909e6 (mutation testing and review)."""

import math

import numpy as np
import pytest

from gpubp.backends.base import half_poisson_deviance
from gpubp.backends.numpy_backend import NumpyBackend

NP = NumpyBackend()


def run(A, Y, dtype=np.float64):
    A, Y = np.asarray(A, dtype), np.asarray(Y, dtype)
    loss, delta = np.empty(1, dtype), np.empty_like(A)
    NP.loss_and_delta(A, None, Y, "poisson", "identity", loss, delta)
    return loss[0], delta


@pytest.mark.parametrize("y", [1e-300, 1e-10, 0.5])
def test_a_finite_rate_far_above_a_small_target_has_a_finite_loss(y):
    """e^z - y - y (z - log y) at z = 700 is about e^700 = 1.01e304, finite in double (scikit-learn's
    HalfPoissonLoss says so too), whatever y's size: y (expm1(d) - d) with d = z - log y overflows in
    expm1 once d passes 709.8, which must not turn the finite value into inf."""
    z = 700.0
    expected = math.exp(z) - y - y * (z - math.log(y))
    loss, delta = run([[z]], [[y]])
    assert math.isfinite(loss) and loss == pytest.approx(expected, rel=1e-12)
    assert delta[0, 0] == pytest.approx(math.exp(z) - y, rel=1e-12)
    assert half_poisson_deviance(np, np.array([[z]]), np.array([[y]]))[0, 0] == pytest.approx(expected, rel=1e-12)


def test_the_value_is_continuous_in_y_at_zero_for_a_large_rate():
    z = 705.0
    at_zero = half_poisson_deviance(np, np.array([[z]]), np.array([[0.0]]))[0, 0]
    near_zero = half_poisson_deviance(np, np.array([[z]]), np.array([[1e-300]]))[0, 0]
    assert near_zero == pytest.approx(at_zero, rel=1e-12)


def test_a_subnormal_target_at_an_ordinary_rate_has_its_finite_loss():
    """y = 5e-324 (float64's smallest subnormal), z = -10: d = z - log y = 734 overflows expm1, yet the
    value e^-10 - y - y d is 4.54e-5, and a float64 network trained on such a target must not stop."""
    y, z = float(np.finfo(np.float64).smallest_subnormal), -10.0
    loss, _ = run([[z]], [[y]])
    assert loss == pytest.approx(math.exp(z), rel=1e-12)


def test_the_loss_kernels_a_step_wants_are_the_ones_it_launches():
    """`kernel_names` (what cuda_backend compiles ahead of a step) names the pointwise loss kernel of the
    output's own activation for the squared-error losses, and the identity one for the losses that fuse
    their nonlinearity (binary_cross_entropy, poisson); every one is among those the module builds."""
    from gpubp.activations import ACT_CODES
    from gpubp.backends import cuda_elementwise as ew
    from gpubp.backends.kernel_constants import LOSS_CODES

    for dtype, ctype in ((np.float32, "float"), (np.float64, "double")):
        built = set(ew._loss_names(ctype, False))
        for loss, code in LOSS_CODES.items():
            acts = ACT_CODES.values() if loss in ("mse", "half_sse") else [ACT_CODES["identity"]]
            for act in acts:
                names = {n for n in ew.kernel_names(dtype, loss, act, 3) if n.startswith("loss_pointwise")}
                want = act if loss in ("mse", "half_sse") else ACT_CODES["identity"]
                assert names == {f"loss_pointwise<{ctype}, {code}, {want}>"} and names <= built, (loss, act)
