"""The CPU emulation of CUDA itself: thread indexing, barriers, shared memory, half, vector types, launch checks.

The kernel tests trust this layer to run CUDA source the way a GPU would and to fail loudly where a GPU would
misbehave; these tests show that it does both.
"""

from __future__ import annotations

import numpy as np
import pytest
from emu import EmuExecutor, kernel_names

from gpuconv.cuda.compile import KernelError

SOURCE = r"""
extern "C" __global__ void indices(int* out) {
    // out[block linear][thread linear] = packed (tid.x, tid.y, tid.z, bid.x, bid.y, bid.z, dims)
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int nt = blockDim.x * blockDim.y * blockDim.z;
    int* o = out + 8 * (b * nt + t);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
    o[6] = blockDim.x * 100 + blockDim.y * 10 + blockDim.z;
    o[7] = gridDim.x * 100 + gridDim.y * 10 + gridDim.z;
}

// Each thread publishes a value and reads its neighbour's: correct only with the barrier in between.
extern "C" __global__ void neighbour(float* y, const float* x, int with_barrier) {
    __shared__ float buf[128];
    int t = threadIdx.x, n = blockDim.x;
    buf[t] = x[blockIdx.x * n + t];
    if (with_barrier) __syncthreads();
    y[blockIdx.x * n + t] = buf[(t + 1) % n];
}

// Double use of one buffer: the second barrier protects the first round's reads from the second round's writes.
extern "C" __global__ void two_rounds(float* y, const float* x, int with_second_barrier) {
    __shared__ float buf[64];
    int t = threadIdx.x, n = blockDim.x;
    float acc = 0.f;
    for (int round = 0; round < 2; ++round) {
        buf[t] = x[round * n + t];
        __syncthreads();
        acc += buf[(t + 1) % n] * (round + 1);
        if (with_second_barrier) __syncthreads();
    }
    y[t] = acc;
}

// Reads shared memory nobody wrote in this block: a GPU gives garbage, the emulation NaN.
extern "C" __global__ void stale(float* y) {
    __shared__ float buf[32];
    if (blockIdx.x == 0) buf[threadIdx.x] = 1.f;
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = buf[threadIdx.x];
}

// Dynamic shared memory: block b writes its threads' values from the second thread on, then every thread reads
// its neighbour's; thread 0's slot was never written in this block, so its reader sees the poison.
extern "C" __global__ void dynamic(float* y, const float* x, int n) {
    float* buf = reinterpret_cast<float*>(dynamic_smem());
    int t = threadIdx.x;
    if (t > 0) buf[t] = x[blockIdx.x * blockDim.x + t];
    if (t == 0 && n > (int)blockDim.x) buf[n - 1] = 0.f;  // past the launch's bytes when n exceeds them
    __syncthreads();
    y[blockIdx.x * blockDim.x + t] = buf[(t + 1) % blockDim.x];
}

extern "C" __global__ void early_exit(float* y) {
    if (threadIdx.x == 3) return;
    __syncthreads();
    y[threadIdx.x] = 1.f;
}

extern "C" __global__ void two_barriers(float* y) {
    if (threadIdx.x < 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    y[threadIdx.x] = 1.f;
}

extern "C" __global__ void halves(float* f, __half* h, const __half* hin, const float* fin, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        f[i] = __half2float(hin[i]);
        h[i] = __float2half(fin[i]);
    }
}

extern "C" __global__ void vec4(float* y, const float* x, int offset) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(x + offset) + threadIdx.x);
    double2 d = make_double2(v.x, v.y);
    y[4 * threadIdx.x + 0] = v.w;
    y[4 * threadIdx.x + 1] = v.z;
    y[4 * threadIdx.x + 2] = float(d.y);
    y[4 * threadIdx.x + 3] = float(d.x);
}

extern "C" __global__ void sizes(int* out) {
    out[0] = sizeof(float4); out[1] = alignof(float4);
    out[2] = sizeof(double2); out[3] = alignof(double2);
    out[4] = sizeof(__half); out[5] = alignof(__half);
    out[6] = sizeof(float2); out[7] = alignof(float2);
    out[8] = min(3, 4u); out[9] = max(-2, 5);
    out[10] = int(min(2.5f, 1.5f) * 2); out[11] = int(max(1.0, 2.0f));
}

extern "C" __global__ void write_past(float* y, int n) {
    y[n + threadIdx.x] = 1.f;
}

extern "C" __global__ void null_read(float* y, int zero) {
    const float* p = reinterpret_cast<const float*>(static_cast<unsigned long>(zero) + 64);
    y[threadIdx.x] = p[threadIdx.x];
}

extern "C" __global__ void checks(float* y) {
    assert(threadIdx.x < 4);
    y[threadIdx.x] = 1.f;
}
"""


@pytest.fixture(params=[0, 7], ids=["in-order", "shuffled"])
def ex(request: pytest.FixtureRequest) -> EmuExecutor:
    return EmuExecutor(seed=request.param)


def test_kernel_names_ignore_comments() -> None:
    src = '// extern "C" __global__ void hidden(\nextern "C" __global__ void a(int n) {}\n' \
          '/* extern "C" __global__ void b( */ extern "C"  __global__\n void c (float* x) {}'
    assert kernel_names(src) == ["a", "c"]
    assert "indices" in kernel_names(SOURCE) and "checks" in kernel_names(SOURCE)


@pytest.mark.parametrize("grid,block", [((3, 2, 2), (4, 3, 2)), ((1, 1, 1), (1, 1, 1)), ((5, 1, 1), (64, 1, 1))])
def test_thread_and_block_indices(ex: EmuExecutor, grid: tuple[int, int, int], block: tuple[int, int, int]) -> None:
    nb, nt = int(np.prod(grid)), int(np.prod(block))
    out = ex.empty((nb, nt, 8), np.int32)
    ex.run_source(SOURCE, "indices", grid, block, [out])
    bz, by, bx = np.unravel_index(np.arange(nb), grid[::-1])
    tz, ty, tx = np.unravel_index(np.arange(nt), block[::-1])
    np.testing.assert_array_equal(out[..., 0], np.broadcast_to(tx, (nb, nt)))
    np.testing.assert_array_equal(out[..., 1], np.broadcast_to(ty, (nb, nt)))
    np.testing.assert_array_equal(out[..., 2], np.broadcast_to(tz, (nb, nt)))
    np.testing.assert_array_equal(out[..., 3], np.broadcast_to(bx[:, None], (nb, nt)))
    np.testing.assert_array_equal(out[..., 4], np.broadcast_to(by[:, None], (nb, nt)))
    np.testing.assert_array_equal(out[..., 5], np.broadcast_to(bz[:, None], (nb, nt)))
    assert (out[..., 6] == block[0] * 100 + block[1] * 10 + block[2]).all()
    assert (out[..., 7] == grid[0] * 100 + grid[1] * 10 + grid[2]).all()


def test_barrier_orders_shared_memory(ex: EmuExecutor) -> None:
    x = ex.to_device(np.random.default_rng(0).uniform(-1, 1, (3, 128)).astype(np.float32))
    y = ex.empty((3, 128), np.float32)
    ex.run_source(SOURCE, "neighbour", (3, 1, 1), (128, 1, 1), [y, x, 1])
    np.testing.assert_array_equal(y, np.roll(x, -1, axis=1))


def test_missing_barrier_gives_wrong_results(ex: EmuExecutor) -> None:
    x = ex.to_device(np.random.default_rng(0).uniform(-1, 1, (3, 128)).astype(np.float32))
    y = ex.empty((3, 128), np.float32)
    ex.run_source(SOURCE, "neighbour", (3, 1, 1), (128, 1, 1), [y, x, 0])
    assert not np.array_equal(y, np.roll(x, -1, axis=1), equal_nan=True)


def test_missing_barrier_before_reuse_gives_wrong_results(ex: EmuExecutor) -> None:
    x = ex.to_device(np.random.default_rng(1).uniform(-1, 1, (2, 64)).astype(np.float32))
    expected = np.roll(x[0], -1) + 2 * np.roll(x[1], -1)
    y = ex.empty((64,), np.float32)
    ex.run_source(SOURCE, "two_rounds", (1, 1, 1), (64, 1, 1), [y, x, 1])
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    ex.run_source(SOURCE, "two_rounds", (1, 1, 1), (64, 1, 1), [y, x, 0])
    assert not np.allclose(y, expected, rtol=1e-6)


def test_each_block_starts_with_poisoned_shared_memory(ex: EmuExecutor) -> None:
    y = ex.empty((3, 32), np.float32)
    ex.run_source(SOURCE, "stale", (3, 1, 1), (32, 1, 1), [y])
    assert (y[0] == 1).all()
    assert np.isnan(y[1:]).all()


def test_barrier_not_reached_by_every_thread_is_an_error(ex: EmuExecutor) -> None:
    y = ex.empty((8,), np.float32)
    with pytest.raises(KernelError, match=r"__syncthreads\(\) at line \d+ is not reached by every thread"):
        ex.run_source(SOURCE, "early_exit", (1, 1, 1), (8, 1, 1), [y])


def test_threads_at_different_barriers_is_an_error(ex: EmuExecutor) -> None:
    y = ex.empty((8,), np.float32)
    with pytest.raises(KernelError, match=r"wait at different __syncthreads\(\)"):
        ex.run_source(SOURCE, "two_barriers", (1, 1, 1), (8, 1, 1), [y])


def test_half_conversions_match_numpy() -> None:
    ex = EmuExecutor()
    bits = np.arange(2**16, dtype=np.uint16)
    hin = ex.to_device(bits.view(np.float16))
    rng = np.random.default_rng(2)
    fin = np.concatenate([
        rng.uniform(-70000, 70000, 20000), rng.uniform(-1e-4, 1e-4, 20000),  # overflow and subnormals
        np.float16(rng.uniform(-2, 2, 10000)).astype(np.float64) + 2.0**-12,  # near ties
        [np.inf, -np.inf, 0.0, -0.0, 65504.0, 65520.0, 2.0**-25, 2.0**-24 * 1.5]]).astype(np.float32)
    fin = np.resize(fin, bits.size)
    f = ex.empty(bits.shape, np.float32)
    h = ex.empty(bits.shape, np.float16)
    ex.run_source(SOURCE, "halves", (256, 1, 1), (256, 1, 1), [f, h, hin, ex.to_device(fin), bits.size])
    np.testing.assert_array_equal(f, hin.astype(np.float32))  # NaNs compare equal here
    with np.errstate(over="ignore"):
        expected = fin.astype(np.float16)
    np.testing.assert_array_equal(h.view(np.uint16), expected.view(np.uint16))


def test_vector_types_and_math_overloads() -> None:
    ex = EmuExecutor()
    out = ex.empty((12,), np.int32)
    ex.run_source(SOURCE, "sizes", (1, 1, 1), (1, 1, 1), [out])
    assert out.tolist() == [16, 16, 16, 16, 2, 2, 8, 8, 3, 5, 3, 2]
    x = ex.to_device(np.arange(64, dtype=np.float32))
    y = ex.empty((8, 4), np.float32)
    ex.run_source(SOURCE, "vec4", (1, 1, 1), (8, 1, 1), [y, x, 4])
    v = np.arange(4, 36, dtype=np.float32).reshape(8, 4)
    np.testing.assert_array_equal(y, v[:, [3, 2, 1, 0]])


def test_misaligned_vector_load_is_an_error() -> None:
    ex = EmuExecutor()
    x = ex.to_device(np.arange(64, dtype=np.float32))
    y = ex.empty((8, 4), np.float32)
    with pytest.raises(KernelError, match="misaligned 16-byte load"):
        ex.run_source(SOURCE, "vec4", (1, 1, 1), (8, 1, 1), [y, x, 1])


def test_dynamic_shared_memory_is_the_launch_bytes_poisoned_per_block() -> None:
    ex = EmuExecutor()
    x = ex.to_device(np.arange(1, 129, dtype=np.float32))
    y = ex.empty((128,), np.float32)
    ex.run_source(SOURCE, "dynamic", (2, 1, 1), (64, 1, 1), [y, x, 64], shared=64 * 4)
    got = y.reshape(2, 64)
    assert np.isnan(got[:, 63]).all()  # thread 0's slot: written by no thread of either block
    np.testing.assert_array_equal(got[:, :63], x.reshape(2, 64)[:, 1:])


def test_dynamic_shared_memory_ends_where_the_launch_says() -> None:
    ex = EmuExecutor()
    x = ex.to_device(np.ones(64, np.float32))
    y = ex.empty((64,), np.float32)
    ex.run_source(SOURCE, "dynamic", (1, 1, 1), (64, 1, 1), [y, x, 68], shared=68 * 4)  # 4 more floats: fine
    with pytest.raises(KernelError, match=r"access at byte 256 of dynamic shared memory, past the launch's 256 bytes"):
        ex.run_source(SOURCE, "dynamic", (1, 1, 1), (64, 1, 1), [y, x, 65], shared=64 * 4)
    with pytest.raises(KernelError, match="past the launch's 0 bytes"):
        ex.run_source(SOURCE, "dynamic", (1, 1, 1), (64, 1, 1), [y, x, 64])
    ex.run_source(SOURCE, "dynamic", (1, 1, 1), (64, 1, 1), [y, x, 64], shared=64 * 4)  # still usable


def test_out_of_bounds_write_is_reported() -> None:
    ex = EmuExecutor()
    y = ex.empty((10,), np.float32)
    ex.run_source(SOURCE, "write_past", (1, 1, 1), (2, 1, 1), [y, 8])
    with pytest.raises(KernelError, match="wrote outside an array of 40 bytes .*byte offset 40"):
        ex.run_source(SOURCE, "write_past", (1, 1, 1), (2, 1, 1), [y, 10])


def test_segfault_ends_the_launch_not_the_process() -> None:
    ex = EmuExecutor()
    y = ex.empty((4,), np.float32)
    with pytest.raises(KernelError, match="segmentation fault"):
        ex.run_source(SOURCE, "null_read", (1, 1, 1), (4, 1, 1), [y, 0])
    ex.run_source(SOURCE, "checks", (1, 1, 1), (4, 1, 1), [y])  # still usable
    assert (y == 1).all()


def test_device_assert_is_an_error() -> None:
    ex = EmuExecutor()
    y = ex.empty((8,), np.float32)
    with pytest.raises(KernelError, match=r"thread \(4,0,0\): assertion failed: threadIdx.x < 4"):
        ex.run_source(SOURCE, "checks", (1, 1, 1), (8, 1, 1), [y])


def test_launch_arguments_are_checked() -> None:
    ex = EmuExecutor()
    y32 = ex.empty((8,), np.float32)
    y64 = ex.empty((8,), np.float64)
    with pytest.raises(KernelError, match="argument 0 must be a float32 array, got float64"):
        ex.run_source(SOURCE, "checks", (1, 1, 1), (8, 1, 1), [y64])
    with pytest.raises(KernelError, match="takes 2 arguments"):
        ex.run_source(SOURCE, "write_past", (1, 1, 1), (1, 1, 1), [y32])
    with pytest.raises(KernelError, match="argument 1 must be an int"):
        ex.run_source(SOURCE, "write_past", (1, 1, 1), (1, 1, 1), [y32, y32])
    with pytest.raises(KernelError, match="no extern \"C\" __global__ function 'nope'"):
        ex.run_source(SOURCE, "nope", (1, 1, 1), (1, 1, 1), [y32])


def test_compile_errors_point_at_the_source_line() -> None:
    ex = EmuExecutor()
    src = '#line 1 "kernels/broken.cu"\nextern "C" __global__ void k(float* y) {\n  y[0] = undefined_name;\n}\n'
    with pytest.raises(KernelError, match=r"kernels/broken.cu:2:.*undefined_name"):
        ex.run_source(src, "k", (1, 1, 1), (1, 1, 1), [ex.empty((1,), np.float32)])
