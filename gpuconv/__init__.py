"""gpuconv: GPU-first 1-d and 2-d convolution for CuPy and NumPy, with an autotuner that remembers."""

from .conv import conv1d, conv2d
from .plan import set_autotune

__version__ = "0.1.0"
__all__ = ["conv1d", "conv2d", "set_autotune", "__version__"]
