"""Learning-rate schedules for `MLP.fit(..., lr_schedule=...)`: callables `step -> learning rate`.

Steps count from 1 over one `fit` call: a second call (one after `MLP.load` too) starts the
schedule again, and a checkpoint holds no schedule position.  To continue a schedule, offset it
by the steps already taken: `lambda step: schedule(step + done)`.  Any callable `step -> rate`
works (`lambda step: 0.1 / step`); these are the usual ones.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from .checks import check_positive_int, real_number


def _positive(name, x):
    v = real_number(x)
    if v is None or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {x!r}")
    return v


def _is_int(x) -> bool:
    """A Python or numpy integer (not a bool): `fit(epochs=...)` takes both, and so do the schedules."""
    return not isinstance(x, (bool, np.bool_)) and isinstance(x, (int, np.integer))


def cosine(lr, total_steps, min_lr=0.0, warmup_steps=0):
    """Linear warm-up over `warmup_steps` (`lr * step / warmup_steps`), then cosine decay from
    `lr` towards `min_lr` over the steps up to `total_steps` (the rate of step `total_steps` is held
    after it).  Every rate is positive, as the optimizers require."""
    lr = _positive("lr", lr)
    total_steps = check_positive_int("total_steps", total_steps)
    if not _is_int(warmup_steps) or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be an integer in [0, total_steps), got {warmup_steps!r}")
    warmup_steps = int(warmup_steps)
    low = real_number(min_lr)
    if low is None or not 0 <= low < lr:
        raise ValueError(f"min_lr must lie in [0, lr), got {min_lr!r}")
    min_lr = low

    span = total_steps - warmup_steps

    def schedule(step):
        if step <= warmup_steps:
            return lr * step / warmup_steps
        # 0.5 (1 + cos(pi f)), f = (step - warmup - 1) / span in [0, 1), written as sin^2(pi (1 - f) / 2)
        # with 1 - f = left / span: the same number, but 1 + cos(pi f) rounds to 0 near f = 1 once span
        # passes about 3e8 steps, and a rate of 0 is refused by the optimizers
        left = total_steps - min(step, total_steps) + 1          # in [1, span]
        return min_lr + (lr - min_lr) * math.sin(0.5 * math.pi * left / span) ** 2

    return schedule


def step_decay(lr, step_size, gamma=0.1):
    """`lr * gamma ** ((step - 1) // step_size)`: PyTorch's StepLR counted in optimizer steps.

    Every rate is positive, as the optimizers require: one that underflows to 0 (`0.1 * 0.1 ** 323`
    is 0.0 in floats) is held at the smallest positive normal float, `sys.float_info.min`; one beyond
    float's range (gamma > 1) is `inf`, which `fit` refuses naming the step."""
    lr = _positive("lr", lr)
    step_size = check_positive_int("step_size", step_size)
    gamma = _positive("gamma", gamma)

    def schedule(step):
        k = (step - 1) // step_size
        try:
            rate = lr * gamma ** k
        except OverflowError:   # gamma ** k past float's range (Python raises where numpy gives inf)
            try:                # lr * gamma ** k may still be a float (lr 1e-300)
                rate = math.exp(math.log(lr) + k * math.log(gamma))
            except OverflowError:
                return math.inf
        return max(rate, sys.float_info.min)

    return schedule
