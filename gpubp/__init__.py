"""gpubp: dense networks trained by backpropagation on fused CUDA kernels, with a numpy reference.

    import gpubp
    net = gpubp.MLP([64, 128, 10], activation="relu", loss="cross_entropy", seed=0)
    history = net.fit(X, y, epochs=20, batch_size=32, optimizer=gpubp.optim.Adam(1e-3))
"""

from . import log as _log  # noqa: F401  (sets up the "gpubp" logger's default output)
from . import callbacks, optim, schedules
from .activations import ACTIVATIONS
from .backends import available_backends, get_backend
from .losses import LOSSES
from .network import MLP

__version__ = "0.1.0"

__all__ = ["MLP", "optim", "callbacks", "schedules", "ACTIVATIONS", "LOSSES", "available_backends", "get_backend", "__version__"]
