"""The benchmark suite behind `gpubp bench`, installed with the library.

- `shapes`: the networks, batch sizes and timing modes measured;
- `cost`: the cost model of docs/spec.md (FLOPs, fewest bytes per step);
- `timing`: clocks (host, CUDA events) and the repetition loop;
- `peers`: the training steps timed side by side (gpubp, unfused CuPy,
  PyTorch, scikit-learn), all from the same parameters;
- `environment`: versions, the GPU's properties, device memory helpers;
- `rows`: the suite, its ceiling, step and kernel rows, and the ratios;
- `goals`: the goals as data (`Goal`, `GOALS`) and how each is judged;
- `report`: bench.md, bench.png and the console summary;
- `cli`: `gpubp bench`'s arguments and `main(argv)`.

`python -m gpubp bench ...` and `python -m gpubp.bench ...` run the same.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
