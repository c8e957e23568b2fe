"""The benchmark suite behind `gpubp bench`, installed with the library.

- `shapes`: the networks, batch sizes and timing modes measured;
- `cost`: the cost model of docs/spec.md (FLOPs, fewest bytes per step);
- `timing`: clocks (host, CUDA events) and the repetition loop;
- `peers`: the training steps timed side by side (gpubp in each precision
  mode, unfused CuPy, PyTorch eager / autocast / compile, scikit-learn), all
  from the same parameters;
- `environment`: versions, the GPU's properties, device memory helpers;
- `gemms`: the fused GEMMs timed alone: gpubp's variants and cuBLAS per precision;
- `fused_runs`: a narrow network's fused forward and backward timed alone;
- `rows`: the suite, its ceiling, step, fused-run and kernel rows, and the ratios;
- `goals`: the goals as data (`Goal`, `GOALS`) and how each is judged;
- `report`: bench.md, bench.png and the console summary;
- `cli`: `gpubp bench`'s arguments and `main(argv)`.

`python -m gpubp bench ...` and `python -m gpubp.bench ...` run the same.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
