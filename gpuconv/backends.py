"""The table of backends, imported lazily so that ``import gpuconv`` pulls in neither CuPy nor JAX."""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = {"cpu": "gpuconv.cpu", "cuda": "gpuconv.cuda"}
_EXTRAS = {"cuda": "pip install 'gpuconv[cuda13]' (or gpuconv[cuda12])"}


def get_backend(name: str) -> ModuleType:
    """The backend module for ``"cpu"`` or ``"cuda"``; a missing optional dependency says what to install."""
    if name not in _MODULES:
        raise ValueError(f"backend must be one of {sorted(_MODULES)}, got {name!r}")
    try:
        return importlib.import_module(_MODULES[name])
    except ImportError as e:
        raise ImportError(f"the {name} backend needs a missing dependency ({e}); "
                          f"install it with {_EXTRAS[name]}") from e
