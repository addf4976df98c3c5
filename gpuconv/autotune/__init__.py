"""The autotuner: search each strategy's declared space with Optuna, check candidates, remember the winners.

``python -m gpuconv.autotune --shapes resnet50`` tunes a shape set (:mod:`.cli`); :func:`tune` tunes one
problem (:mod:`.search`); :func:`tune_shapes` tunes a set through the cache (:mod:`.workload`). The rest:
:mod:`.target` (a backend as the tuner sees it), :mod:`.evaluate` (check and time one candidate),
:mod:`.result` (trials, results, their JSON), :mod:`.storage` (Optuna), :mod:`.first_call` (the cache-miss
hook behind ``set_autotune``). Importing this package does not import Optuna or JAX; tuning does
(``pip install 'gpuconv[tune,jax]'``).
"""

from ..measure import CpuTimer, CudaEventTimer, Timer, mismatch, tolerance
from .first_call import autotune_enabled, set_autotune, tune_on_first_call
from .result import Trial, TuneResult
from .search import tune
from .storage import make_storage
from .target import Target, make_target, resolve_backend
from .workload import Outcome, tune_shapes

__all__ = ["CpuTimer", "CudaEventTimer", "Outcome", "Target", "Timer", "Trial", "TuneResult", "autotune_enabled",
           "make_storage", "make_target", "mismatch", "resolve_backend", "set_autotune", "tolerance", "tune",
           "tune_on_first_call", "tune_shapes"]
