"""Optional dependencies: imported only where they are used, with an error naming the extra to install.

`import gpubp` needs only numpy (and tqdm for progress bars); scikit-learn,
matplotlib, PyTorch and CuPy come with the extras `gpubp[sklearn]`,
`gpubp[plot]`, `gpubp[torch]`, `gpubp[cuda12]` / `gpubp[cuda13]`.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message says which extra brings it."""


def require(module: str, extra: str, purpose: str, package: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingExtraError saying that `purpose` needs `pip install "gpubp[extra]"`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise   # the package is there but one of its own imports failed: show that error
        raise MissingExtraError(
            f"{purpose} needs {package or top}, which is not installed: "
            f"pip install \"gpubp[{extra}]\"") from e


__all__ = ["MissingExtraError", "require"]
