"""gpuconv: GPU-first 1-d and 2-d convolution for CuPy and NumPy, with an autotuner that remembers.

Architecture: one problem description flows one way, and imports follow it::

    problem      arguments -> a validated ConvProblem (problem_from_arrays, make_problem)
    backends     cpu/ (NumPy + BLAS) and cuda/ (CuPy + kernels/*.cu): STRATEGIES, heuristic, prepare, fingerprint
    cache        a JSON store of records under keys it is given
    plan         forced, tuned (key = problem + backend fingerprint) or heuristic plan; a hook for cache misses
    conv         conv1d/conv2d, grad (input and weight gradients), transpose (conv_transpose1d/2d): a memoized
                 runner per call signature; a gradient is the forward problem with its direction set

    on top:      reference (jax.lax), measure (inputs, checks, timers), torch and jax (autograd and jit
                 wrappers), autotune (installs the miss hook), demo, benchmarks/

Nothing below imports anything above it (``tests/test_architecture.py`` checks it).
"""

from . import grad
from .autotune.first_call import set_autotune
from .conv import conv1d, conv2d
from .transpose import conv_transpose1d, conv_transpose2d

__version__ = "0.1.0"
__all__ = ["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d", "grad", "set_autotune", "__version__"]
