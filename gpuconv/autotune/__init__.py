"""The autotuner: search each strategy's declared space with Optuna, check candidates, remember the winners.

``python -m gpuconv.autotune --shapes resnet50`` tunes a shape set (:mod:`.cli`); :func:`tune` tunes one
problem (:mod:`.search`); :func:`tune_shapes` tunes a set through the cache (:mod:`.workload`). The rest:
:mod:`.target` (a backend as the tuner sees it), :mod:`.evaluate` (check and time one candidate),
:mod:`.result` (trials, results, their JSON), :mod:`.storage` (Optuna), :mod:`.first_call` (the cache-miss
hook behind ``set_autotune``), :mod:`.evidence` (interleaved rounds and the interval a decision needs),
:mod:`.load` (how busy the machine is), :mod:`.timing` (timers that keep every sample, the machine-wide timing
lock) and :mod:`.verify` (re-time stored decisions). Importing this package does not import Optuna or JAX; tuning does
(``pip install 'gpuconv[tune,jax]'``).
"""

from ..measure import CpuTimer, CudaEventTimer, Timer, mismatch, tolerance
from .evidence import Evidence, median_interval, race
from .first_call import autotune_enabled, set_autotune, tune_on_first_call
from .load import Load, system_load
from .result import Trial, TuneResult
from .search import tune
from .storage import make_storage
from .target import Target, make_target, resolve_backend
from .timing import SampledCpuTimer, SampledCudaTimer, Samples, TimingLock
from .verify import Verification, verify
from .workload import Outcome, tune_shapes, verify_shapes

__all__ = ["CpuTimer", "CudaEventTimer", "Evidence", "Load", "Outcome", "SampledCpuTimer", "SampledCudaTimer",
           "Samples", "Target", "Timer", "TimingLock", "Trial", "TuneResult", "Verification", "autotune_enabled",
           "make_storage", "make_target", "mismatch", "race", "resolve_backend", "set_autotune", "median_interval",
           "system_load", "tolerance", "tune", "tune_on_first_call", "tune_shapes", "verify", "verify_shapes"]
