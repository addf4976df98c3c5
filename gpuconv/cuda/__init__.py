"""The CUDA backend (CuPy): kernels in kernels/*.cu, strategies in this package."""
