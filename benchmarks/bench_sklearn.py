"""gpubp.sklearn's MLPClassifier / MLPRegressor against scikit-learn's own, at the same settings.

    python benchmarks/bench_sklearn.py [--backend auto|numpy|cuda] [--dtype float32|float64]
        [--seeds 2] [--threads 1] [--hidden 100] [--max-iter 200] [--json FILE]

For each of scikit-learn's bundled data sets iris, digits, breast_cancer
(classification, accuracy) and diabetes (regression, R^2 of the target / 100),
a 75/25 split (stratified for the classifiers, `random_state=0`), then
`make_pipeline(StandardScaler(), Estimator(hidden_layer_sizes=(H,),
max_iter=..., random_state=seed))` with every other argument at its default
(adam, alpha 1e-4, batch min(200, n), tol 1e-4, n_iter_no_change 10) for both
libraries.  Reported per data set: the mean test score and epochs (`n_iter_`)
over the seeds, and the median fit time of each library; the two are timed
in alternation, seed by seed, so that load from other processes falls on
both alike.  `--threads` limits the BLAS threads of both (threadpoolctl):
these networks are small, and one thread is the fastest on a CPU shared with
other work.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a checkout

DATASETS = ("iris", "digits", "breast_cancer", "diabetes")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", default="auto", choices=("auto", "numpy", "cuda"), help="gpubp's backend")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"), help="gpubp's dtype")
    p.add_argument("--seeds", type=int, default=2, help="random_state 0 .. seeds-1 for both")
    p.add_argument("--threads", type=int, default=1, help="BLAS threads for both (0: leave as they are)")
    p.add_argument("--hidden", type=int, default=100, help="units of the one hidden layer")
    p.add_argument("--max-iter", type=int, default=200, help="max_iter (epochs) for both")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    return p.parse_args(argv)


def load(name):
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    classify = name != "diabetes"
    if not classify:
        y = y / 100.0
    return classify, train_test_split(X, y, test_size=0.25, random_state=0, stratify=y if classify else None)


def fit_and_score(est, split):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    Xtr, Xte, ytr, yte = split
    model = make_pipeline(StandardScaler(), est)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t = time.perf_counter()
        model.fit(Xtr, ytr)
        dt = time.perf_counter() - t
    return dt, float(model.score(Xte, yte)), int(model[-1].n_iter_)


def run(args) -> list[dict]:
    from sklearn.neural_network import MLPClassifier as SkClassifier
    from sklearn.neural_network import MLPRegressor as SkRegressor

    from gpubp.sklearn import MLPClassifier, MLPRegressor

    rows = []
    for name in DATASETS:
        classify, split = load(name)
        Sk, G = (SkClassifier, MLPClassifier) if classify else (SkRegressor, MLPRegressor)
        res = {"sklearn": [], "gpubp": []}
        for seed in range(args.seeds):
            kw = dict(hidden_layer_sizes=(args.hidden,), max_iter=args.max_iter, random_state=seed)
            order = [("sklearn", lambda: Sk(**kw)),
                     ("gpubp", lambda: G(**kw, backend=args.backend, dtype=args.dtype))]
            if seed % 2:
                order.reverse()
            for who, make in order:
                res[who].append(fit_and_score(make(), split))
        row = {"dataset": name, "n_train": len(split[0]), "n_features": split[0].shape[1],
               "metric": "accuracy" if classify else "R^2"}
        for who, r in res.items():
            t, s, n = map(np.asarray, zip(*r))
            row[who] = {"fit_s_median": float(np.median(t)), "score_mean": float(s.mean()),
                        "score_min": float(s.min()), "score_max": float(s.max()), "n_iter_mean": float(n.mean())}
        row["speedup"] = row["sklearn"]["fit_s_median"] / row["gpubp"]["fit_s_median"]
        rows.append(row)
    return rows


def table(rows, args, backend_desc) -> str:
    lines = [f"gpubp.sklearn vs scikit-learn: one hidden layer of {args.hidden}, max_iter {args.max_iter}, "
             f"{args.seeds} seeds, defaults otherwise; gpubp on {backend_desc}, {args.dtype}; "
             f"{'BLAS threads ' + str(args.threads) if args.threads else 'BLAS threads as found'}",
             "",
             "| data set | train | metric | scikit-learn score | gpubp score | sklearn epochs | gpubp epochs "
             "| sklearn fit (s) | gpubp fit (s) | speed-up |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        s, g = r["sklearn"], r["gpubp"]
        lines.append(f"| {r['dataset']} | {r['n_train']} | {r['metric']} | {s['score_mean']:.4f} | "
                     f"{g['score_mean']:.4f} | {s['n_iter_mean']:.0f} | {g['n_iter_mean']:.0f} | "
                     f"{s['fit_s_median']:.3f} | {g['fit_s_median']:.3f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from threadpoolctl import threadpool_limits

    from gpubp.backends import get_backend

    be = get_backend(args.backend)
    t0 = time.perf_counter()
    if args.threads:
        with threadpool_limits(limits=args.threads, user_api="blas"):
            rows = run(args)
    else:
        rows = run(args)
    print(table(rows, args, be.describe()))
    print(f"\n(total {time.perf_counter() - t0:.1f} s; {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()})")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "backend": be.describe(), "rows": rows},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
