"""scikit-learn estimators on gpubp networks: `MLPClassifier` and `MLPRegressor`.

    from gpubp.sklearn import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=50, random_state=0).fit(X, y)
    clf.predict(X_test); clf.predict_proba(X_test); clf.score(X_test, y_test)

Both follow `sklearn.neural_network.MLPClassifier` / `MLPRegressor`: the
same constructor arguments where they mean the same thing, the same loss
(softmax cross-entropy for several classes, logistic loss for two classes and
for multilabel indicator targets, half squared error for regression), the same
Glorot-uniform initialisation (drawn from `random_state` in the same order),
the same stopping rules (`tol` / `n_iter_no_change` on the training loss, or on
the validation score with `early_stopping`) and the same fitted attributes
(`classes_`, `n_iter_`, `loss_`, `loss_curve_`, `best_loss_`,
`validation_scores_`, `best_validation_score_`, `t_`, `n_features_in_`,
`n_outputs_`, `n_layers_`, `out_activation_`, `coefs_`, `intercepts_`).  The
network itself is `net_`, a `gpubp.MLP` (save it with `net_.save(path)`);
`coefs_` and `intercepts_` are read-only copies of its parameters, and
assigning a list to either (as scikit-learn allows) sets them.

How the hyper-parameters map onto gpubp:
- `alpha`: scikit-learn adds `alpha / 2 * ||W||^2 / n_batch` to each batch's
  loss, i.e. `alpha * W / n_batch` to the weight gradient.  gpubp gives the
  optimizer `weight_decay = alpha / batch_size` (an L2 term added to the
  gradient, as PyTorch's optimizers do; with `sample_weight`, divided by
  the mean weight, as scikit-learn divides by the batch's weight sum).  Two differences: the decay also
  applies to the biases (scikit-learn's penalty covers the weights only), and
  a last, smaller batch gets `alpha / batch_size` rather than
  `alpha / len(batch)`.  `loss_curve_` includes the penalty as scikit-learn's
  does.
- Where gpubp's loss is a multiple `c` of scikit-learn's (multilabel: gpubp
  averages the logistic loss over the outputs, scikit-learn sums it, so
  `c = 1 / n_outputs`), the gradient is `c` times scikit-learn's; the
  optimizer is adjusted so that the updates are the same: Adam's `eps` is
  multiplied by `c`, SGD's learning rate divided by `c`, and the weight decay
  multiplied by `c`.  An `epsilon` whose Adam `eps` is 0 or subnormal in the
  network's dtype, or a `learning_rate_init` whose SGD rate overflows, is
  refused before training (the estimator kept as it was).
- `solver="adam"`: `gpubp.optim.Adam(learning_rate_init, (beta_1, beta_2),
  epsilon)`.  PyTorch's Adam (used here) adds `eps` to `sqrt(v_hat)`,
  scikit-learn's to `sqrt(v)`: `eps` differs by `sqrt(1 - beta_2^t)`, which
  matters only while `v` is of order `eps^2`.
- `solver="sgd"`: `gpubp.optim.SGD(learning_rate_init, momentum,
  nesterov=nesterovs_momentum)` (Nesterov's only with a momentum above 0,
  as scikit-learn's, whose Nesterov step with no momentum is plain SGD), the
  same updates as scikit-learn's.  `learning_rate` sets the rate between
  epochs as scikit-learn's does: `"invscaling"` to
  `learning_rate_init / (t_ + 1) ** power_t` after each epoch,
  `"adaptive"` divided by 5 where scikit-learn's stopping rule (`tol`,
  `n_iter_no_change`) would stop, stopping once the rate is at or below 1e-6.
  scikit-learn's velocity holds steps, PyTorch's (gpubp's) gradients, so at
  each change of rate gpubp rescales its velocity by old / new rate: the
  updates stay scikit-learn's (tested to rounding).  The schedule belongs to
  the optimizer, as in scikit-learn: `partial_fit` keeps it (and the rate)
  from call to call, a fit makes it anew.  An `invscaling` rate that would
  fall below the dtype's smallest normal number within the call is refused
  before training.  Adam ignores `learning_rate` and `power_t`, as
  scikit-learn's does.  `solver="lbfgs"` is refused: gpubp trains by
  mini-batch steps (`max_fun`, its budget, is checked and unused).
- `MLPRegressor(loss=...)`: `"squared_error"` (gpubp's `half_sse`) or
  `"poisson"` (gpubp's `poisson`: half the Poisson deviance on log-rates, the
  exp fused into the loss; `out_activation_` is `"exp"` as scikit-learn's,
  and `predict` gives the rates).  gpubp averages the deviance over the
  outputs where scikit-learn sums it (`c = 1 / n_outputs` below).  Negative
  targets are refused (scikit-learn trains on them to a NaN loss).  A fitted
  regressor continues (`partial_fit`, `warm_start`) only with the loss it was
  fitted with.  `loss` is keyword-only here (scikit-learn's first positional
  argument), so `MLPRegressor((64,))` still means the hidden layers.
- `warm_start=True`: `fit` continues from the fitted weights with a fresh
  optimizer, as scikit-learn's does; `partial_fit` keeps the optimizer's
  state.  As in scikit-learn, each call makes its generator anew from
  `random_state`: with an int, every warm-started fit draws the same
  early-stopping split.  A warm-started classifier's `y` must hold the classes it was
  fitted on, as in scikit-learn (a `partial_fit` batch may hold any of
  them).  Both train in the estimator's `precision` and `activation` as they
  are at the call (changed by `set_params`, they apply to the fitted network
  from then on, as scikit-learn's activation does; its dtype and backend stay
  the ones it was built with, and other `hidden_layer_sizes` are refused).
  An `activation` changed by `set_params` on a fitted estimator applies from
  the next `predict` (`predict_proba`, `score`) on, without a refit, as in
  scikit-learn, whose predict reads `self.activation`; a changed `precision`
  applies from the next fit or partial_fit.
  As in scikit-learn, `max_iter`, the `ConvergenceWarning` and `n_iter_`
  count the last call's epochs (so `n_iter_` is 1 after a `partial_fit`),
  while `t_` and `loss_curve_` count every epoch since the network was built.
- `sample_weight`: passed to `gpubp.MLP.fit`, which weights each sample's
  loss in its batch, after scaling within each batch of the epoch to sum to
  the batch's rows (only the ratios within a batch enter its loss): `fit`'s
  history averages the batches' losses by their weight sums, scikit-learn's
  `loss_` by their rows, and so does `loss_curve_` then.
- The sample order of each epoch comes from the network's own generator
  (seeded from `random_state`), so runs are reproducible but do not visit the
  samples in scikit-learn's order.
- Sparse inputs (X or y) are refused (gpubp works on dense arrays); so are
  dates, durations and text in X (and in a regressor's y), which a float
  conversion would read as day counts or parse, and multiclass-multioutput
  targets.  Multilabel indicator targets and
  multi-output regression are supported.
- A `fit` or `partial_fit` refused for its input or settings (before its
  first epoch) leaves the estimator as it was, fitted attributes and
  random state included.
- A step whose loss is not finite raises FloatingPointError (naming the epoch and batch), where
  scikit-learn's trains on through the overflow; the network is left on its last finite step, or
  with `early_stopping` on the best epoch's weights, which scikit-learn's ends on too.
- Ctrl-C (KeyboardInterrupt) during the epochs ends the training as in
  scikit-learn: "Training interrupted by user." is warned and the call
  returns the estimator as trained so far (the epoch cut short not counted).

Extra arguments: `backend` ("auto", "numpy", "cuda"), `dtype` ("float32",
"float64") and `precision` ("float32", "tf32", "bf16", "3xtf32"), as in `gpubp.MLP`.
Importing this module needs scikit-learn (`pip install "gpubp[sklearn]"`).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from .optional import MissingExtraError

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
    from scipy.sparse import issparse
    from scipy.special import expit, softmax
except ImportError as e:   # exercised only without scikit-learn
    raise MissingExtraError(
        f"gpubp.sklearn needs scikit-learn 1.6 or newer ({e}): pip install \"gpubp[sklearn]\"") from e

from .checks import DTYPES, finite_after_cast
from .losses import check_target_range, poisson_rates
from .network import MLP, PRECISIONS
from .optim import SGD, Adam, Optimizer, check_eps_fits
from .training import _caller_level

#: scikit-learn's activation names and gpubp's own, as gpubp names
ACTIVATION_NAMES = {"identity": "identity", "logistic": "sigmoid", "sigmoid": "sigmoid", "tanh": "tanh",
                    "relu": "relu", "leaky_relu": "leaky_relu", "gelu": "gelu", "silu": "silu"}
SOLVERS = ("adam", "sgd")
#: scikit-learn's learning-rate schedules of solver="sgd" (Adam ignores them, as scikit-learn's does)
LEARNING_RATES = ("constant", "invscaling", "adaptive")
BACKEND_NAMES = ("auto", "numpy", "cuda")


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _rows_weighted(sw: np.ndarray, batch_size: int) -> np.ndarray:
    """The sample weights `sw` (in the epoch's order) scaled within each batch of `batch_size` rows to
    sum to the batch's rows.

    A batch's loss and gradient depend only on its weights' ratios, so training is unchanged; but
    `fit`'s history averages the batches' losses by their weight sums, and scikit-learn's `loss_`
    by their rows (`batch_loss * len(batch)`): with these weights the two are the same."""
    w = np.array(sw, np.float64)
    for s in range(0, w.shape[0], batch_size):
        part = w[s:s + batch_size]
        top = part.max()
        if top > 0:      # ratios to the largest first: the sum cannot overflow, n / sum stays finite
            unit = part / top
            part[...] = unit * (part.shape[0] / unit.sum())
    return w


def _holds_text(a) -> bool:
    """Whether `a` is an object array holding a string or bytes, which a float conversion would parse."""
    return isinstance(a, np.ndarray) and a.dtype == object and any(isinstance(v, (str, bytes)) for v in a.flat)


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share: checks, the training loop, pickling."""

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, solver: str = "adam",
                 alpha: float = 0.0001, batch_size: int | str = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float = 1e-4, verbose: bool = False, warm_start: bool = False,
                 momentum: float = 0.9, nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 backend: str = "auto", dtype: str = "float32", precision: str = "float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype
        self.precision = precision

    # ------------------------------------------------------------ checks
    def _hidden_sizes(self) -> list[int]:
        h = self.hidden_layer_sizes
        sizes = [h] if not hasattr(h, "__iter__") or isinstance(h, str) or getattr(h, "ndim", None) == 0 else list(h)
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
                raise ValueError(f"hidden_layer_sizes must hold positive integers, got {self.hidden_layer_sizes!r}")
        return [int(s) for s in sizes]

    def _activation(self) -> str:
        """gpubp's name for `self.activation`, refused unless one of ACTIVATION_NAMES."""
        if not isinstance(self.activation, str) or self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATION_NAMES))}, "
                             f"got {self.activation!r}")
        return ACTIVATION_NAMES[self.activation]

    def _check_params(self) -> None:
        if self.solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported: gpubp trains by mini-batch steps; use "
                             "solver='adam' or 'sgd'")
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}, got {self.solver!r}")
        for name in ("shuffle", "warm_start", "early_stopping", "nesterovs_momentum"):   # not read by truth value
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False, got {v!r}")
        v = self.verbose
        if not (isinstance(v, (bool, np.bool_)) or (isinstance(v, numbers.Integral) and v >= 0)):
            raise ValueError(f"verbose must be True, False or a non-negative integer, got {v!r}")
        self._activation()
        self._hidden_sizes()
        checks = [("alpha", self.alpha, 0.0, math.inf, True), ("learning_rate_init", self.learning_rate_init, 0.0,
                  math.inf, False), ("tol", self.tol, 0.0, math.inf, True),
                  ("momentum", self.momentum, 0.0, 1.0, True), ("beta_1", self.beta_1, 0.0, 1.0, True),
                  ("beta_2", self.beta_2, 0.0, 1.0, True), ("epsilon", self.epsilon, 0.0, math.inf, False)]
        for name, v, lo, hi, lo_closed in checks:
            ok = _is_number(v) and math.isfinite(v) and (v >= lo if lo_closed else v > lo) and \
                (v <= hi if name == "momentum" else v < hi)
            if not ok:
                raise ValueError(f"{name} must be a number in {'[' if lo_closed else '('}{lo}, {hi}"
                                 f"{']' if name == 'momentum' else ')'}, got {v!r}")
        if not isinstance(self.learning_rate, str) or self.learning_rate not in LEARNING_RATES:
            raise ValueError(f"learning_rate must be one of {', '.join(map(repr, LEARNING_RATES))}, "
                             f"got {self.learning_rate!r}")
        v = self.power_t
        if not (_is_number(v) and math.isfinite(v) and v >= 0):
            raise ValueError(f"power_t must be a number in [0, inf), got {v!r}")
        v = self.max_fun     # scikit-learn's lbfgs budget: checked as there, unused (lbfgs is refused)
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"max_fun must be a positive integer, got {v!r}")
        if self.solver == "sgd" and self.momentum >= 1:
            raise ValueError(f"momentum must be below 1 for solver='sgd', got {self.momentum!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        v = self.n_iter_no_change
        if not (v == math.inf if _is_number(v) and not isinstance(v, numbers.Integral) else
                (isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1)):
            raise ValueError(f"n_iter_no_change must be a positive integer or np.inf (never stop on tol), got {v!r}")
        bs = self.batch_size
        if not (bs == "auto" if isinstance(bs, str) else
                (isinstance(bs, numbers.Integral) and not isinstance(bs, bool) and bs >= 1)):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {bs!r}")
        vf = self.validation_fraction
        if not (_is_number(vf) and 0 <= vf < 1):     # 0 as scikit-learn: unused without early_stopping
            raise ValueError(f"validation_fraction must be a number in [0, 1), got {vf!r}")
        if self.early_stopping and vf == 0:
            raise ValueError("validation_fraction must be above 0 with early_stopping=True: it is the share of "
                             "the samples held out to score each epoch")
        if self.backend not in BACKEND_NAMES:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}, got {self.backend!r}")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}, got {self.dtype!r}")
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))}, got {self.precision!r}")

    @staticmethod
    def _check_dense_y(y) -> None:
        """Refuse a sparse `y` as validate_data refuses a sparse X (it lets one through with multi_output)."""
        if issparse(y):
            raise TypeError("Sparse data was passed for y, but dense data is required. Use '.toarray()' to "
                            "convert to a dense numpy array.")

    @staticmethod
    def _check_numeric_X(X) -> None:
        """Refuse dates, durations, text and bytes in `X` (or a DataFrame's columns) before validate_data,
        whose conversion to float reads dates as day counts and parses numeric strings (the targets are
        refused alike)."""
        if issparse(X):
            return
        frame = hasattr(X, "dtypes") and hasattr(X, "columns")
        a = None if frame else X if isinstance(X, np.ndarray) else np.asarray(X)
        dtypes = list(X.dtypes) if frame else [a.dtype]
        for dt in dtypes:
            # pandas' own dtypes have a kind as numpy's; its text columns ("str", "string[python]"...) kind "O"
            if getattr(dt, "kind", "O") in "MmUS" or str(dt) == "str" or str(dt).startswith("string"):
                raise ValueError(f"X must hold real numbers, got dtype {dt}: convert it to numbers explicitly")
        # object arrays and columns (pandas' text columns before pandas 3, categories) holding text
        if frame:
            columns = [(dt, X.iloc[:, i].to_numpy()) for i, dt in enumerate(dtypes) if getattr(dt, "kind", None) == "O"]
        else:
            columns = [(a.dtype, a)]
        for dt, col in columns:
            if _holds_text(col):
                raise ValueError(f"X must hold real numbers, got dtype {dt} holding text: convert it to numbers "
                                 "explicitly")

    @staticmethod
    def _check_sample_weight(sample_weight, n: int) -> np.ndarray | None:
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight)
        if w.dtype == object and not _holds_text(w):    # numbers held as objects (a pandas object column)
            try:
                w = w.astype(np.float64)
            except (TypeError, ValueError):
                pass                                     # refused below
        if w.dtype.kind not in "biuf":   # checked first: float() of a 0-d string would parse it
            raise TypeError(f"sample_weight must be numeric, got dtype {w.dtype}")
        if w.ndim == 0:
            w = np.full(n, float(w))
        w = w.astype(np.float64)
        if w.shape != (n,):
            raise ValueError(f"sample_weight has shape {w.shape}; expected ({n},), one weight per sample")
        if not np.all(np.isfinite(w)):
            raise ValueError("sample_weight contains NaN or infinity")
        if np.any(w < 0):
            raise ValueError("sample_weight must be non-negative")
        if not w.max() > 0:           # (non-negative: the sum, which 1e308s overflow, is positive)
            raise ValueError("sample_weight sums to zero: at least one sample needs a positive weight")
        return w

    # ------------------------------------------------------------ the loop
    def _build(self, n_in: int, n_out: int, loss: str) -> None:
        """A fresh network with scikit-learn's Glorot-uniform weights, and its optimizer."""
        act = ACTIVATION_NAMES[self.activation]
        sizes = [n_in, *self._hidden_sizes(), n_out]
        net = MLP(sizes, activation=act, output_activation="identity", loss=loss, backend=self.backend,
                  dtype=self.dtype, seed=0, precision=self.precision)
        factor = 2.0 if act == "sigmoid" else 6.0
        params = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):   # drawn in scikit-learn's order and layout
            bound = np.sqrt(factor / (fan_in + fan_out))
            coef = self._random_state.uniform(-bound, bound, (fan_in, fan_out))
            intercept = self._random_state.uniform(-bound, bound, fan_out)
            params.append((coef.T, intercept))
        net.set_params(params)
        self.net_ = net
        self._optimizer = None
        self._shuffle_seeded = False
        self._best_params = None
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = n_out
        self.n_layers_ = len(sizes)
        self.loss_curve_ = []
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.best_loss_ = np.inf
            self.validation_scores_ = None
            self.best_validation_score_ = None

    def _make_optimizer(self, c: float) -> Optimizer:
        """The optimizer of `solver`, adjusted for a loss `c` times scikit-learn's (weight decay set per fit).

        SGD's schedule is the optimizer's, as scikit-learn's: taken from `learning_rate` and `power_t`
        here (`_sgd_schedule`, `_sgd_power_t`), kept by partial_fit's later calls; its learning rate on
        scikit-learn's scale (before the division by `c`) is `_sgd_lr`, from `learning_rate_init`
        (`_sgd_lr_init`, which `invscaling` scales from)."""
        if self.solver == "adam":
            return Adam(self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon * c)
        self._sgd_lr = self._sgd_lr_init = float(self.learning_rate_init)
        self._sgd_schedule, self._sgd_power_t = self.learning_rate, float(self.power_t)
        return SGD(self.learning_rate_init / c, momentum=self.momentum,
                   nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)

    def _new_optimizer(self, incremental: bool) -> bool:
        """Whether this call trains with a new optimizer: every fit (warm_start included) does, as
        scikit-learn's; partial_fit keeps the one it has."""
        return self._optimizer is None or not incremental

    def _set_sgd_lr(self, lr: float) -> None:
        """SGD's learning rate set to `lr` (scikit-learn's scale), as scikit-learn's schedules set it
        between epochs.

        scikit-learn keeps its velocity as steps (`v = momentum v - lr g`), so a new rate applies to new
        gradients only; gpubp's SGD (PyTorch's) keeps it as gradients (`v = momentum v + g`, a step of
        `-lr v`), where a new rate would rescale the whole velocity.  Multiplying the velocity by
        `old / new` at the change makes the two the same steps, Nesterov's included."""
        opt = self._optimizer
        c, _ = self._loss_scales()
        old, new = opt.lr, lr / c
        velocity = opt.state.get("velocity")
        if velocity is not None:
            velocity *= old / new
        opt.lr = new
        self._sgd_lr = lr

    def _fit(self, X, y, sample_weight, incremental: bool, **kw):
        """Check the call and build the network (`_prepare_fit`), then train it (`_run_epochs`).

        A call refused before its first epoch leaves the estimator as it was: its attributes, and the
        state of the random generator it had drawn from (a RandomState given as `random_state`, which
        the weights and the early-stopping split draw from; an int makes a fresh one at each call), are
        put back.  Only the attributes are restored, so everything that changes an object the
        estimator held before the call (the network's weights, the optimizer) happens in the epochs.
        """
        saved = dict(self.__dict__)
        rs = self.random_state
        # numpy's global generator (random_state=None) is shared with everyone: not rewound
        rs_state = rs.get_state() if isinstance(rs, np.random.RandomState) and rs is not np.random.mtrand._rand \
            else None
        try:
            run = self._prepare_fit(X, y, sample_weight, incremental, **kw)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(saved)
            if rs_state is not None:
                rs.set_state(rs_state)
            raise
        try:
            self._run_epochs(*run)
        except KeyboardInterrupt:
            # as scikit-learn's MLPs: Ctrl-C ends the training and the call returns the estimator as trained
            # so far (`MLP.fit` left the network on its last good step; the epoch cut short is not counted)
            warnings.warn("Training interrupted by user.", UserWarning, stacklevel=_caller_level())
            self._restore_best()
        except FloatingPointError:
            # a diverged step (the error says where): with early stopping the estimator is left on the best
            # epoch's weights, where scikit-learn's, training on through the overflow, ends too
            self._restore_best()
            raise
        return self

    def _restore_best(self) -> None:
        """Early stopping ends on the weights of the epoch with the best validation score."""
        if self.early_stopping and getattr(self, "_best_params", None) is not None:
            self.net_.set_params(self._best_params)

    def _prepare_epochs(self, X, Y, y_orig, sample_weight, incremental: bool) -> tuple:
        """Everything before the first epoch: the validation split, the batch size, the optimizer's settings.

        `X` is already of the network's dtype, `Y` the prepared targets, `y_orig` the labels that score
        the validation split.  Returns `_run_epochs`' arguments; changes only attributes of the estimator
        (`_fit` restores them when a check here refuses the call).
        """
        n_total = X.shape[0]
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if self.net_.precision != self.precision:
            # a warm start or partial_fit after set_params(precision=...): the fitted network trains in
            # the estimator's mode from now on (checked here as the constructor would, switched in
            # _run_epochs, which alone changes the network)
            self.net_._runnable_precision(self.precision)
        hidden = self._hidden_sizes()
        if list(self.net_.sizes[1:-1]) != hidden:
            # scikit-learn's keep the fitted weights (and fail on another depth): never silently another shape
            raise ValueError(f"hidden_layer_sizes={self.hidden_layer_sizes!r} is not the fitted network's "
                             f"{tuple(self.net_.sizes[1:-1])}: warm_start and partial_fit continue the fitted "
                             "network; fit with warm_start=False to build one of the new sizes")
        # a warm start after a fit with the other early_stopping setting: the stopping rule's bookkeeping
        # starts here (that of the other rule is None, as _build leaves it)
        if self.early_stopping and self.validation_scores_ is None:
            self.validation_scores_, self.best_validation_score_, self.best_loss_ = [], -np.inf, None
            self._best_params, self._no_improvement_count = None, 0
        elif not self.early_stopping and self.best_loss_ is None:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_, self._no_improvement_count = min(self.loss_curve_, default=np.inf), 0
        if self.early_stopping:
            # stratified for two classes only, as scikit-learn's MLPs do (they stratify where the network has
            # one output): several classes and multilabel targets get a plain shuffled split, the same
            # split scikit-learn draws from the same random_state
            stratify = y_orig if (self._is_classifier() and np.ndim(y_orig) == 1 and len(self.classes_) == 2) \
                else None
            parts = [X, Y, y_orig] + ([sample_weight] if sample_weight is not None else [])
            try:
                # test_size a Python float: train_test_split's own check refuses np.float32 (which the
                # parameter check takes, as scikit-learn's, whose MLPs skip that nested check)
                split = train_test_split(*parts, random_state=self._random_state,
                                         test_size=float(self.validation_fraction), stratify=stratify)
            except ValueError as e:
                raise ValueError(f"early_stopping cannot split off a validation set of "
                                 f"validation_fraction={self.validation_fraction} from {n_total} samples: {e}") from None
            X, X_val, Y, _, _, y_val = split[:6]
            sw_train, sw_val = (split[6], split[7]) if sample_weight is not None else (None, None)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the "
                                 "size of your dataset.")
        else:
            sw_train, sw_val = sample_weight, None
            X_val = y_val = None
        if sw_train is not None and not sw_train.max() > 0:
            raise ValueError("sample_weight is zero on every training sample (the rows left after "
                             "early_stopping's validation split): at least one needs a positive weight")
        if sw_val is not None and not sw_val.max() > 0:
            raise ValueError("sample_weight is zero on every sample of early_stopping's validation split: "
                             "the validation score needs a positive weight")
        if not self._shuffle_seeded:
            # the epochs' sample order: drawn after the weights and the validation split, as scikit-learn does
            self.net_._rng = np.random.default_rng(int(self._random_state.randint(np.iinfo(np.int32).max)))
            self._shuffle_seeded = True
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn(f"batch_size={self.batch_size} is larger than the {n} training samples; "
                              f"it is clipped to {n}", UserWarning, stacklevel=_caller_level())
            batch_size = int(min(self.batch_size, n))
        # scikit-learn divides a batch's penalty gradient by the batch's weight sum; the mean is taken
        # of the weights over their largest, whose sum cannot overflow (1e308 each would)
        top = 1.0 if sw_train is None else float(sw_train.max())
        w_mean = 1.0 if sw_train is None else top * float((sw_train / top).mean())
        c, _ = self._loss_scales()
        if not math.isfinite(c * self.alpha / (batch_size * w_mean)):
            raise ValueError(f"sample_weight is too small for alpha={self.alpha!r}: scikit-learn divides the L2 "
                             f"penalty by the weight sum, which overflows at a mean weight of {w_mean:.3g}; "
                             "scale sample_weight up (only its ratios matter to the loss)")
        fresh = self._new_optimizer(incremental)
        if fresh:
            # the optimizer's settings as `_make_optimizer` gives them (scaled for a loss c times scikit-learn's)
            # must be in the optimizer's range for the network's dtype: refused here, before the epochs, where
            # the estimator is put back (the optimizer refused them in the epochs, after the network was rebuilt)
            if self.solver == "adam":
                try:
                    check_eps_fits(self.epsilon * c, self.net_.dtype)
                except ValueError as e:
                    scaled = f" (times {c:.3g}: this loss is {c:.3g} times scikit-learn's)" if c != 1 else ""
                    least = float(np.finfo(self.net_.dtype).tiny) / c     # the smallest epsilon whose eps fits
                    raise ValueError(f"epsilon={self.epsilon!r} is too small for the optimizer{scaled}: {e}; "
                                     f"here epsilon must be at least {least:.3g}") from None
            elif not self.learning_rate_init / c < math.inf:
                raise ValueError(f"learning_rate_init={self.learning_rate_init!r} is too large: SGD's rate is it "
                                 f"divided by {c:.3g} (this loss is {c:.3g} times scikit-learn's), which overflows")
        if (self.solver == "sgd" and self.learning_rate == "invscaling") if fresh else \
                (isinstance(self._optimizer, SGD) and self._sgd_schedule == "invscaling"):
            # the rate after this call's last epoch, which the velocity's rescaling divides by, must stay
            # a normal number of the network's dtype (a large power_t drives it to 0)
            lr0, power = (self.learning_rate_init, self.power_t) if fresh else (self._sgd_lr_init, self._sgd_power_t)
            seen = self.t_ + (1 if incremental else self.max_iter) * n
            last = lr0 / (seen + 1) ** power / c
            if not last >= np.finfo(self.net_.dtype).tiny:
                raise ValueError(f"learning_rate='invscaling' with power_t={power!r} takes the learning rate to "
                                 f"{last:.3g} after {seen} samples, below the smallest normal {self.net_.dtype} "
                                 "number: lower power_t or max_iter")
        return X, Y, X_val, y_val, sw_train, sw_val, w_mean, batch_size, incremental

    def _run_epochs(self, X, Y, X_val, y_val, sw_train, sw_val, w_mean, batch_size, incremental) -> None:
        """Train `net_` for this call's epochs (`_prepare_epochs` made the arguments)."""
        c, r = self._loss_scales()
        if self._new_optimizer(incremental):
            self._optimizer = self._make_optimizer(c)
        self._optimizer.weight_decay = c * self.alpha / (batch_size * w_mean)
        fit_kw = {}
        net = self.net_
        if net.precision != self.precision:
            net.precision = self.precision      # checked by _prepare_epochs
        self._sync_activation()
        n = X.shape[0]
        Xd = net.backend.asarray(X, net.dtype)   # one copy to the device
        n_batches = -(-n // batch_size)
        n_epochs = 1 if incremental else self.max_iter
        self.n_iter_ = 0    # this call's epochs, as scikit-learn counts them
        for epoch in range(1, n_epochs + 1):
            Xe, Ye, shuffle = Xd, Y, bool(self.shuffle)
            if sw_train is not None:
                # the epoch's order drawn here, as `fit` would draw it (one permutation from the network's
                # generator), so that the batches whose weights `_rows_weighted` scales are known
                order = net._rng.permutation(n) if shuffle else None
                sw = sw_train
                if order is not None:
                    Xe = net.backend.xp.take(Xd, net.backend.asarray(order, np.int64), axis=0)
                    Ye, sw, shuffle = Y[order], sw_train[order], False
                fit_kw["sample_weight"] = _rows_weighted(sw, batch_size)
            try:
                hist = net.fit(Xe, Ye, epochs=1, batch_size=batch_size, optimizer=self._optimizer,
                               shuffle=shuffle, progress=False, **fit_kw)
            except FloatingPointError as e:   # a diverged step: net.fit ran one epoch, named as this call's
                raise FloatingPointError(str(e).replace(" (epoch 1, batch ", f" (epoch {epoch}, batch ", 1)) from None
            self.n_iter_ += 1
            self.t_ += n
            # the L2 penalty of scikit-learn's reported loss, with the weights at the end of the epoch
            sq = sum(float(np.dot(W.ravel(), W.ravel())) for W, _ in net.get_params()) if self.alpha else 0.0
            self.loss_ = float(hist["loss"][-1]) * r + 0.5 * self.alpha * sq * n_batches / (n * w_mean)
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if self.early_stopping:
                score = self._score_on(X_val, y_val, sw_val)
                self.validation_scores_.append(score)
                if self.verbose:
                    print(f"Validation score: {score:f}")
                self._no_improvement_count = (self._no_improvement_count + 1
                                              if score < self.best_validation_score_ + self.tol else 0)
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    self._best_params = net.get_params()
            else:
                self._no_improvement_count = (self._no_improvement_count + 1
                                              if self.loss_ > self.best_loss_ - self.tol else 0)
                self.best_loss_ = min(self.best_loss_, self.loss_)
            schedule = self._sgd_schedule if isinstance(self._optimizer, SGD) else None
            if schedule == "invscaling":
                # scikit-learn's rate after each epoch: learning_rate_init / (samples seen + 1) ** power_t
                self._set_sgd_lr(self._sgd_lr_init / (self.t_ + 1) ** self._sgd_power_t)
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if self.early_stopping else "Training loss"
                msg = f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
                if schedule != "adaptive":
                    if self.verbose:
                        print(msg + " Stopping.")
                    break
                if self._sgd_lr <= 1e-6:
                    if self.verbose:
                        print(msg + " Learning rate too small. Stopping.")
                    break
                # adaptive: the rate divided by 5, and the count starts again (scikit-learn's trigger_stopping)
                self._set_sgd_lr(self._sgd_lr / 5.0)
                if self.verbose:
                    print(msg + f" Setting learning rate to {self._sgd_lr:f}")
                self._no_improvement_count = 0
            if not incremental and epoch == self.max_iter:    # this call's epochs: a warm-started fit warns too
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                              "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=_caller_level())
        self._restore_best()

    def _sync_activation(self) -> None:
        """The fitted network's hidden activation set to `self.activation` as it is now.

        After `set_params(activation=...)` on a fitted estimator, scikit-learn's MLPs read the new
        activation at the next predict, warm start or partial_fit and apply it to the fitted
        weights; so does this (the step plans, made for the old one, are dropped)."""
        net, act = self.net_, self._activation()
        if net.activations[:-1] != (act,) * (net.n_layers - 1):
            net.activations = (act,) * (net.n_layers - 1) + net.activations[-1:]
            net._plans.clear()

    # ------------------------------------------------------------ shared outputs
    def _outputs(self, X, check_input: bool = True) -> np.ndarray:
        """The network's raw outputs (logits for the classifier) as float64, after the input checks.

        `check_input=False` is for arrays `fit` validated itself (the early-stopping validation split,
        a plain array cut from validated input: checking it again would warn that it has no feature
        names when `fit` was given a DataFrame, as scikit-learn's own MLPs avoid too).
        """
        check_is_fitted(self, "net_")
        if check_input:
            self._check_numeric_X(X)
            X = validate_data(self, X, reset=False, dtype=(np.float64, np.float32))
        self._sync_activation()   # set_params(activation=...) applies from the next predict on, as in scikit-learn
        net = self.net_
        return net.backend.to_numpy(net.forward(self._in_net_dtype(X))).astype(np.float64)

    def _in_net_dtype(self, X, dtype=None, name: str = "X") -> np.ndarray:
        """`X` (validated: finite) as a contiguous array of the network's dtype (or `dtype`: a network
        about to be built), refusing values it cannot hold."""
        try:
            return finite_after_cast(X, self.net_.dtype if dtype is None else dtype, name)
        except ValueError as e:
            raise ValueError(f"{e}, the network's dtype: scale the {'input' if name == 'X' else 'targets'} "
                             "(e.g. StandardScaler) or use dtype='float64'") from None

    def _fit_dtype(self, first: bool) -> np.dtype:
        """The dtype of the network a fit trains: a fresh one's (`dtype`), or the fitted one's."""
        return np.dtype(self.dtype) if first else self.net_.dtype

    @property
    def coefs_(self) -> list[np.ndarray]:
        """Weights per layer in scikit-learn's layout `(n_in, n_out)`.

        Read-only copies of the network's weights: writing into one would change nothing, so it is
        refused ("assignment destination is read-only"); assign a whole list instead
        (`est.coefs_ = [...]`, as scikit-learn's allow), which sets the network's weights."""
        check_is_fitted(self, "net_")
        return [_read_only(W.T.copy()) for W, _ in self.net_.get_params()]

    @coefs_.setter
    def coefs_(self, coefs) -> None:
        self._set_layers(coefs, 0, "coefs_")

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """Biases per layer: read-only copies, set as a whole list (see `coefs_`)."""
        check_is_fitted(self, "net_")
        return [_read_only(b.copy()) for _, b in self.net_.get_params()]

    @intercepts_.setter
    def intercepts_(self, intercepts) -> None:
        self._set_layers(intercepts, 1, "intercepts_")

    def _set_layers(self, arrays, which: int, name: str) -> None:
        """Write `arrays` (one per layer, scikit-learn's layout) as the network's weights (`which` 0)
        or biases (1); all are checked before anything is written."""
        check_is_fitted(self, "net_")
        current = self.net_.get_params()
        try:
            arrays = [np.asarray(a) for a in arrays]
        except TypeError:
            raise TypeError(f"{name} must be a list of arrays, one per layer") from None
        if len(arrays) != len(current):
            raise ValueError(f"{name} needs {len(current)} arrays, one per layer, got {len(arrays)}")
        for l, (a, (W, b)) in enumerate(zip(arrays, current)):
            want = W.T.shape if which == 0 else b.shape
            if a.shape != want:
                raise ValueError(f"{name}[{l}] has shape {a.shape}; expected {want}")
            if a.dtype.kind not in "biuf":
                raise TypeError(f"{name}[{l}] must be numeric, got dtype {a.dtype}")
        self.net_.set_params([(a.T, b) if which == 0 else (W, a) for a, (W, b) in zip(arrays, current)])

    # ------------------------------------------------------------ pickling
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        net = state.pop("net_", None)
        state.pop("_optimizer", None)
        if net is not None:
            opt = self._optimizer
            state["_net_state"] = {
                "config": net.config(), "params": net.get_params(), "metadata": net.metadata, "rng": net._rng,
                "optimizer": None if opt is None else {
                    "cls": type(opt).__name__, "hyper": opt.hyper(), "t": opt.t,
                    "state": {k: net.backend.to_numpy(v).copy() for k, v in opt.state.items()}}}
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        saved = state.pop("_net_state", None)
        # estimators pickled before these parameters existed trained as they now do with these values
        # (and their SGD optimizer a constant rate, the only schedule state such a one reads)
        for k, v in (("learning_rate", "constant"), ("power_t", 0.5), ("nesterovs_momentum", False),
                     ("max_fun", 15000), ("_sgd_schedule", "constant")):
            state.setdefault(k, v)
        if not self._is_classifier():
            state.setdefault("loss", "squared_error")
        super().__setstate__(state)
        self._optimizer = None
        if saved is None:
            return
        cfg = dict(saved["config"])
        net = MLP(cfg.pop("layer_sizes"), backend=self.backend, **cfg)
        net.set_params(saved["params"])
        net.metadata = saved["metadata"]
        net._rng = saved["rng"]
        om = saved["optimizer"]
        if om is not None:
            hyper = dict(om["hyper"])
            if "betas" in hyper:
                hyper["betas"] = tuple(hyper["betas"])
            opt = {"Adam": Adam, "SGD": SGD}[om["cls"]](**hyper)
            opt.bind(net.backend, net._params)
            for k, a in om["state"].items():
                opt.state[k][...] = net.backend.asarray(a, net.dtype)
            opt.t = om["t"]
            net.optimizer = self._optimizer = opt
        self.net_ = net

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        return tags


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multilayer perceptron classifier trained by gpubp, with scikit-learn's `MLPClassifier` interface.

    Any labels (strings, `{1, 2}`, ...) are encoded through `classes_`.  Two
    classes train one logistic output, more classes a softmax over one output
    per class, a multilabel indicator matrix one logistic output per label.
    `predict_proba` returns `(n_samples, n_classes)` (two columns for two
    classes).  See the module's documentation for how each argument maps
    onto gpubp.
    """

    def _is_classifier(self) -> bool:
        return True

    def _loss_scales(self) -> tuple[float, float]:
        """(gpubp loss / scikit-learn loss for the gradient, factor from gpubp's loss to the reported loss)."""
        if self._multilabel:
            return 1.0 / self.n_outputs_, float(self.n_outputs_)
        return 1.0, 1.0

    def _prepare_y(self, y, first: bool, classes=None, warm: bool = False):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind == "multiclass-multioutput":
            raise ValueError("multiclass-multioutput targets are not supported: give one label per sample, or "
                             "a 0/1 indicator matrix for multilabel classification")
        if kind == "multilabel-indicator":
            Y = np.asarray(y, dtype=np.float64)
            if not np.isin(Y, (0.0, 1.0)).all():      # type_of_target takes any two integers ({-1, 1}, {0, 2})
                raise ValueError(f"a multilabel indicator matrix y must hold 0 and 1 only, got values "
                                 f"{np.unique(Y).tolist()}")
            if first:
                if classes is not None and not np.array_equal(np.unique(np.asarray(classes)), np.arange(Y.shape[1])):
                    # as the later calls check them: a multilabel classifier's classes are its columns
                    raise ValueError(f"y is a multilabel indicator matrix of {Y.shape[1]} labels, whose classes "
                                     f"are {list(range(Y.shape[1]))}; got classes={classes!r}")
                self._multilabel = True
                self.classes_ = np.arange(Y.shape[1])
                self._label_encoder = None
            elif not self._multilabel or Y.shape[1] != self.classes_.shape[0]:
                raise ValueError(f"y is a multilabel indicator matrix of {Y.shape[1]} labels; this classifier "
                                 f"was fitted on {'other targets' if not self._multilabel else len(self.classes_)}")
            return Y, (y != 0).astype(np.int64)
        y = column_or_1d(y)
        if first:
            labels = np.unique(y) if classes is None else np.unique(np.asarray(classes))
            if labels.shape[0] < 2:
                raise ValueError(f"the classifier needs samples of at least 2 classes; got 1 class "
                                 f"({labels.tolist()[0]!r})" if labels.shape[0] else
                                 "the classifier needs at least 2 classes")
            self._multilabel = False
            self._label_encoder = LabelEncoder().fit(labels)
            self.classes_ = self._label_encoder.classes_
        elif self._multilabel:
            raise ValueError("this classifier was fitted on a multilabel indicator matrix; y is a label vector")
        elif warm and set(np.unique(y).tolist()) != set(self.classes_.tolist()):
            # as scikit-learn's: a warm-started fit trains on every class it has (partial_fit's batches,
            # on any of them)
            raise ValueError(f"warm_start can only be used where y has the same classes as in the previous "
                             f"call to fit: classes_ is {self.classes_.tolist()}, y has {np.unique(y).tolist()}; "
                             "fit with warm_start=False to start a new network on these classes")
        unseen = np.setdiff1d(np.unique(y), self.classes_)
        if unseen.size:
            raise ValueError(f"y holds labels {unseen.tolist()} that are not in classes_ {self.classes_.tolist()}")
        enc = self._label_encoder.transform(y)
        if len(self.classes_) == 2:
            return enc.astype(np.float64).reshape(-1, 1), y
        return enc.astype(np.int64), y

    def _prepare_fit(self, X, y, sample_weight, incremental: bool, classes=None) -> tuple:
        self._check_params()
        first = not (incremental or self.warm_start) or not hasattr(self, "net_")
        if classes is not None and np.ndim(classes) != 1:   # np.unique would flatten a table of labels
            raise ValueError(f"classes must be a 1-D list of labels, got an array of shape {np.shape(classes)}")
        if incremental and not first and classes is not None and not np.array_equal(
                np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={classes!r} is not the same as on the first call to partial_fit "
                             f"({self.classes_.tolist()})")
        if incremental and first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit: every label the "
                             "classifier will see")
        self._check_dense_y(y)
        self._check_numeric_X(X)
        X, y = validate_data(self, X, y, reset=first, dtype=(np.float64, np.float32), multi_output=True)
        sw = self._check_sample_weight(sample_weight, X.shape[0])
        # made anew at each call, as scikit-learn's: a warm-started fit with an int random_state draws
        # its early-stopping split from that seed again (the epochs' order has its own generator)
        self._random_state = check_random_state(self.random_state)
        Y, y_orig = self._prepare_y(y, first, classes, warm=not (first or incremental))
        X = self._in_net_dtype(X, self._fit_dtype(first))
        if first:
            if self._multilabel or len(self.classes_) == 2:
                n_out, loss = (Y.shape[1], "binary_cross_entropy")
                self.out_activation_ = "logistic"
            else:
                n_out, loss = len(self.classes_), "cross_entropy"
                self.out_activation_ = "softmax"
            self._build(X.shape[1], n_out, loss)
        return self._prepare_epochs(X, Y, y_orig, sw, incremental)

    def fit(self, X, y, sample_weight=None) -> MLPClassifier:
        """Fit the network to `X` `(n_samples, n_features)` and labels `y` (or a multilabel indicator matrix)."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None) -> MLPClassifier:
        """One epoch over `(X, y)`, continuing from the current weights and optimizer state.

        `classes` (every label the classifier will see) is required on the first call.
        """
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, `(n_samples, n_classes)`, columns in the order of `classes_`."""
        z = self._outputs(X)
        if self._multilabel:
            return expit(z)
        if z.shape[1] == 1:
            p = expit(z)
            return np.hstack([1.0 - p, p])
        return softmax(z, axis=1)

    def predict_log_proba(self, X) -> np.ndarray:
        """Logarithm of `predict_proba`."""
        return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """Predicted labels (an indicator matrix for multilabel targets)."""
        return self._predict(X)

    def _predict(self, X, check_input: bool = True) -> np.ndarray:
        z = self._outputs(X, check_input)
        if self._multilabel:
            return (z > 0).astype(np.int64)
        idx = (z[:, 0] > 0).astype(np.int64) if z.shape[1] == 1 else z.argmax(axis=1)
        return self.classes_[idx]

    def _score_on(self, X, y, sample_weight) -> float:
        return float(accuracy_score(y, self._predict(X, check_input=False), sample_weight=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


#: scikit-learn's regression losses and the gpubp loss each trains (`poisson`: on log-rates, the exp
#: fused into the loss as scikit-learn's log link)
_REGRESSION_LOSSES = {"squared_error": "half_sse", "poisson": "poisson"}
#: scikit-learn's `out_activation_` for each gpubp loss
_OUT_ACTIVATIONS = {"half_sse": "identity", "poisson": "exp"}


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multilayer perceptron regressor trained by gpubp, with scikit-learn's `MLPRegressor` interface.

    Minimises half the squared error (identity output) or, with
    `loss="poisson"`, half the Poisson deviance (log link: the network
    outputs log-rates and `predict` their exponential; `y` non-negative);
    `y` may be `(n_samples,)` or `(n_samples, n_targets)`.  `predict` returns
    `(n_samples,)` for one target, as scikit-learn's does.  See the module's
    documentation for how each argument maps onto gpubp.
    """

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, loss: str = "squared_error",
                 solver: str = "adam", alpha: float = 0.0001, batch_size: int | str = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 0.001, power_t: float = 0.5,
                 max_iter: int = 200, shuffle: bool = True, random_state: Any = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False, validation_fraction: float = 0.1,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10,
                 max_fun: int = 15000, backend: str = "auto", dtype: str = "float32", precision: str = "float32"):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_fun=max_fun, backend=backend, dtype=dtype, precision=precision)
        self.loss = loss

    def _is_classifier(self) -> bool:
        return False

    def _check_params(self) -> None:
        if not isinstance(self.loss, str) or self.loss not in _REGRESSION_LOSSES:
            raise ValueError(f"loss must be one of {', '.join(map(repr, _REGRESSION_LOSSES))}, got {self.loss!r}")
        super()._check_params()

    def _loss_scales(self) -> tuple[float, float]:
        if self.net_.loss == "poisson":
            # gpubp's poisson averages half the deviance over the outputs, scikit-learn's sums it (for
            # the gradient and the reported loss alike)
            return 1.0 / self.n_outputs_, float(self.n_outputs_)
        # gpubp's half_sse is 1/2 sum over the outputs, the gradient scikit-learn uses; its reported
        # loss averages over the outputs
        return 1.0, 1.0 / self.n_outputs_

    def _prepare_fit(self, X, y, sample_weight, incremental: bool) -> tuple:
        self._check_params()
        first = not (incremental or self.warm_start) or not hasattr(self, "net_")
        self._check_dense_y(y)
        self._check_numeric_X(X)
        if _holds_text(np.asarray(y)):                # y_numeric would parse it
            raise ValueError("y must hold real numbers, got dtype object holding text")
        X, y = validate_data(self, X, y, reset=first, dtype=(np.float64, np.float32), multi_output=True,
                             y_numeric=True)
        if np.asarray(y).dtype.kind not in "biuf":   # y_numeric converts objects only: np.asarray(y, float64)
            raise ValueError(f"y must hold real numbers, got dtype {np.asarray(y).dtype}")  # would read dates, text
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)            # scikit-learn's DataConversionWarning, as its MLPRegressor
        sw = self._check_sample_weight(sample_weight, X.shape[0])
        Y = np.asarray(y, dtype=np.float64)
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        X = self._in_net_dtype(X, self._fit_dtype(first))
        self._in_net_dtype(Y, self._fit_dtype(first), "y")   # only checked: the network casts the targets
        self._random_state = check_random_state(self.random_state)     # at each call, as the classifier's
        loss = _REGRESSION_LOSSES[self.loss]
        check_target_range(Y, loss, "y")    # before any change (poisson: scikit-learn's trains to a NaN loss)
        if first:
            self.out_activation_ = _OUT_ACTIVATIONS[loss]
            self._build(X.shape[1], Y.shape[1], loss)
        elif Y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[1]} targets; this regressor was fitted on {self.n_outputs_}")
        elif self.net_.loss != loss:      # set_params(loss=...) after a fit: its network has the other output
            fitted = next(k for k, v in _REGRESSION_LOSSES.items() if v == self.net_.loss)
            call = "partial_fit" if incremental else "warm-started fit"
            raise ValueError(f"this regressor was fitted with loss={fitted!r}; a {call} cannot continue it "
                             f"with loss={self.loss!r}: fit it anew (warm_start=False)")
        return self._prepare_epochs(X, Y, y, sw, incremental)

    def fit(self, X, y, sample_weight=None) -> MLPRegressor:
        """Fit the network to `X` `(n_samples, n_features)` and targets `y`."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None) -> MLPRegressor:
        """One epoch over `(X, y)`, continuing from the current weights and optimizer state."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """Predictions: `(n_samples,)` for one target, else `(n_samples, n_targets)`."""
        return self._predict(X)

    def _predict(self, X, check_input: bool = True) -> np.ndarray:
        out = self._outputs(X, check_input)
        if self.net_.loss == "poisson":       # the network outputs log-rates; the prediction is the rate
            out = poisson_rates(out)          # in float64, as scikit-learn's predictions
        return out.ravel() if out.shape[1] == 1 else out

    def _score_on(self, X, y, sample_weight) -> float:
        # as scikit-learn's: predictions that overflowed score NaN (r2_score would raise on them)
        pred = self._predict(X, check_input=False)
        if not np.isfinite(pred).all():
            return math.nan
        return float(r2_score(y, pred, sample_weight=sample_weight))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.positive_only = self.loss == "poisson"   # negative targets are refused
        tags.regressor_tags.poor_score = False
        return tags


__all__ = ["MLPClassifier", "MLPRegressor", "ACTIVATION_NAMES"]
