"""Learning-rate schedules for `MLP.fit(..., lr_schedule=...)`: callables `step -> learning rate`.

Steps count from 1 over one `fit` call.  Any callable of that form works
(`lambda step: 0.1 / step`); these are the usual ones.
"""

from __future__ import annotations

import math

from .checks import real_number


def _positive(name, x):
    v = real_number(x)
    if v is None or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {x!r}")
    return v


def _positive_int(name, x):
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise ValueError(f"{name} must be a positive integer, got {x!r}")
    return x


def cosine(lr, total_steps, min_lr=0.0, warmup_steps=0):
    """Linear warm-up over `warmup_steps` (`lr * step / warmup_steps`), then cosine decay from
    `lr` towards `min_lr` over the steps up to `total_steps` (the rate of step `total_steps` is held
    after it).  Every rate is positive, as the optimizers require."""
    lr = _positive("lr", lr)
    total_steps = _positive_int("total_steps", total_steps)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be an integer in [0, total_steps), got {warmup_steps!r}")
    if isinstance(min_lr, bool) or not isinstance(min_lr, (int, float)) or not 0 <= min_lr < lr:
        raise ValueError(f"min_lr must lie in [0, lr), got {min_lr!r}")

    def schedule(step):
        if step <= warmup_steps:
            return lr * step / warmup_steps
        frac = (min(step, total_steps) - warmup_steps - 1) / (total_steps - warmup_steps)   # in [0, 1)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))

    return schedule


def step_decay(lr, step_size, gamma=0.1):
    """`lr * gamma ** ((step - 1) // step_size)`: PyTorch's StepLR counted in optimizer steps."""
    lr = _positive("lr", lr)
    step_size = _positive_int("step_size", step_size)
    gamma = _positive("gamma", gamma)

    def schedule(step):
        return lr * gamma ** ((step - 1) // step_size)

    return schedule
