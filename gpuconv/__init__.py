"""gpuconv: GPU-first 1-d and 2-d convolution for CuPy and NumPy, with an autotuner that remembers.

Architecture: one problem description flows one way, and imports follow it::

    problem      arguments -> a validated ConvProblem (problem_from_arrays, make_problem)
    backends     cpu/ (NumPy + BLAS) and cuda/ (CuPy + kernels/*.cu): STRATEGIES, heuristic, prepare, fingerprint
    cache        a JSON store of records under keys it is given
    plan         forced, tuned (key = problem + backend fingerprint) or heuristic plan; a hook for cache misses
    conv         conv1d/conv2d: a memoized runner per call signature

    on top:      reference (jax.lax), measure (inputs, checks, timers), autotune (installs the miss hook),
                 demo, benchmarks/

Nothing below imports anything above it (``tests/test_architecture.py`` checks it).
"""

from .autotune.first_call import set_autotune
from .conv import conv1d, conv2d

__version__ = "0.1.0"
__all__ = ["conv1d", "conv2d", "set_autotune", "__version__"]
