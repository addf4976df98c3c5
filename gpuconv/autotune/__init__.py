"""The autotuner: search each strategy's declared space with Optuna, check candidates, remember the winners.

``python -m gpuconv.autotune --shapes resnet50`` tunes a shape set (see :mod:`.cli`); :func:`tune` tunes
one problem; :func:`tune_shapes` tunes a set through the cache. Importing this package does not import
Optuna or JAX; tuning does (``pip install 'gpuconv[tune,jax]'``).
"""

from .check import mismatch, tolerance
from .timing import CpuTimer, CudaEventTimer, Timer
from .tuner import Target, Trial, TuneResult, make_storage, make_target, resolve_backend, tune, tune_on_first_call
from .workload import Outcome, tune_shapes

__all__ = ["CpuTimer", "CudaEventTimer", "Outcome", "Target", "Timer", "Trial", "TuneResult", "make_storage",
           "make_target", "mismatch", "resolve_backend", "tolerance", "tune", "tune_on_first_call", "tune_shapes"]
