// Warp-level hardware behind named device functions: tensor-core mma.sync, ldmatrix, cp.async, TF32 rounding.
//
// On the GPU each function is one inline PTX instruction (sm_80 and later). In the CPU emulation
// (GPUCONV_EMU) each is an implementation of the per-thread fragment layout documented in the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 / mma.m16n8k8", "ldmatrix"): every lane puts its registers into the
// warp's exchange area, the warp meets at a warp barrier, and each lane takes back exactly the elements the
// ISA assigns to its registers. A kernel that puts an element in the wrong register therefore computes a
// wrong result on the CPU too. With groupID = lane >> 2 and tig = lane % 4 (threadID_in_group):
//
//   m16n8k16 .f16/.bf16  A (16x16, row): reg i holds the pair (row, col), (row, col + 1) with
//                        row = groupID + 8 * (i & 1), col = 2 * tig + 8 * (i >> 1)
//                        B (16x8, col):   reg i holds (k, n), (k + 1, n) with k = 2 * tig + 8 * i, n = groupID
//   m16n8k8 .tf32        A (16x8):  reg i holds (groupID + 8 * (i & 1), tig + 4 * (i >> 1))
//                        B (8x8):   reg i holds (tig + 4 * i, groupID)
//   C/D (16x8, .f32)     reg i holds (groupID + 8 * (i >> 1), 2 * tig + (i & 1))
//   ldmatrix .m8n8 .b16  matrix j's eight row addresses come from lanes 8j..8j+7; lane l receives, in
//                        register j, the 32 bits at byte 4 * (l % 4) of row l / 4 of matrix j.
//
// The emulated mma multiplies exactly (f16/bf16/tf32 products are exact in float) and adds in float in
// k order onto C. TF32 operands are read as the hardware reads them, from the upper 19 bits; kernels round
// with tf32_round (cvt.rna) first.
#pragma once

#if defined(GPUCONV_EMU)
#include <cstring>
#endif

// ---- TF32 rounding: cvt.rna.tf32.f32 (nearest, ties away from zero, to 10 mantissa bits) -------------------
static __device__ __forceinline__ unsigned tf32_round(const float v) {
#if defined(GPUCONV_EMU)
    unsigned u;
    std::memcpy(&u, &v, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;  // Inf and NaN stay as they are
    return (u + 0x1000u) & ~0x1fffu;
#else
    unsigned u;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(u) : "f"(v));
    return u;
#endif
}

// The rounded value as a float (for operands staged in memory as TF32).
static __device__ __forceinline__ float tf32_round_float(const float v) {
    const unsigned u = tf32_round(v);
#if defined(GPUCONV_EMU)
    float f;
    std::memcpy(&f, &u, 4);
#else
    float f;
    asm("mov.b32 %0, %1;" : "=f"(f) : "r"(u));
#endif
    return f;
}

// ---- shared and global addresses for the asynchronous copies and ldmatrix -----------------------------------
#if !defined(GPUCONV_EMU)
static __device__ __forceinline__ unsigned smem_u32(const void* p) {
    // The builtin, not inline PTX: the compiler knows the pointer is into shared memory and works in 32-bit
    // shared addresses from the start, instead of building a generic address and converting it at every use.
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
static __device__ __forceinline__ unsigned long long gmem_u64(const void* p) {
    unsigned long long r;
    asm("cvta.to.global.u64 %0, %1;" : "=l"(r) : "l"(p));
    return r;
}
#endif

// ---- cp.async: 16 bytes global -> shared, bypassing L1; bytes beyond src_bytes (0..16) are zero-filled ----
static __device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, const int src_bytes) {
#if defined(GPUCONV_EMU)
    ::emu::check_alignment(smem_dst, 16, __FILE__, __LINE__);
    if (src_bytes > 0) ::emu::check_alignment(gmem_src, 16, __FILE__, __LINE__);
    ::emu::ThreadState& ts = *::emu::current_thread;
    if (ts.async_pending == ::emu::kMaxAsyncCopies) ::emu::fail("too many cp.async in flight", __FILE__, __LINE__);
    ts.async[ts.async_pending++] = ::emu::AsyncCopy{smem_dst, gmem_src, src_bytes, -1};
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)),
                 "l"(gmem_u64(gmem_src)), "r"(src_bytes));
#endif
}

// Close the group of this thread's copies issued since the last commit.
static __device__ __forceinline__ void cp_async_commit() {
#if defined(GPUCONV_EMU)
    ::emu::ThreadState& ts = *::emu::current_thread;
    for (int i = 0; i < ts.async_pending; ++i)
        if (ts.async[i].group < 0) ts.async[i].group = ts.async_groups;
    ++ts.async_groups;
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Wait until at most N of this thread's committed groups are still in flight. The emulation performs a
// copy only here, as late as the hardware may, so a read of its destination before the wait sees old data.
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
#if defined(GPUCONV_EMU)
    ::emu::ThreadState& ts = *::emu::current_thread;
    const int done_below = ts.async_groups - N;  // groups [0, done_below) must have landed
    int kept = 0;
    for (int i = 0; i < ts.async_pending; ++i) {
        ::emu::AsyncCopy c = ts.async[i];
        if (c.group >= 0 && c.group < done_below) {
            if (c.bytes > 0) std::memcpy(c.dst, c.src, static_cast<std::size_t>(c.bytes));
            if (c.bytes < 16) std::memset(static_cast<unsigned char*>(c.dst) + c.bytes, 0, 16 - c.bytes);
        } else {
            ts.async[kept++] = c;
        }
    }
    ts.async_pending = kept;
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ---- ldmatrix .m8n8 .b16 (non-transposed): x1 / x2 / x4 matrices; `row` is this lane's row address ---------
#if defined(GPUCONV_EMU)
namespace warp_emu {
template <int NUM>
inline void ldmatrix(unsigned* r, const void* row) {
    const int lane = ::emu::lane_id();
    unsigned char* ex = ::emu::warp_exchange();
    std::memcpy(ex + lane * ::emu::kExchangeBytes, &row, sizeof(row));
    __syncwarp();
    for (int j = 0; j < NUM; ++j) {
        const void* src;
        std::memcpy(&src, ex + (8 * j + lane / 4) * ::emu::kExchangeBytes, sizeof(src));
        ::emu::check_alignment(src, 16, __FILE__, __LINE__);  // every row address is 16-byte aligned
        std::memcpy(&r[j], static_cast<const unsigned char*>(src) + 4 * (lane % 4), 4);
    }
}
}  // namespace warp_emu
#endif

static __device__ __forceinline__ void ldmatrix_x1(unsigned r[1], const void* row) {
#if defined(GPUCONV_EMU)
    warp_emu::ldmatrix<1>(r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_u32(row)));
#endif
}

static __device__ __forceinline__ void ldmatrix_x2(unsigned r[2], const void* row) {
#if defined(GPUCONV_EMU)
    warp_emu::ldmatrix<2>(r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(row)));
#endif
}

static __device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* row) {
#if defined(GPUCONV_EMU)
    warp_emu::ldmatrix<4>(r, row);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(row)));
#endif
}

// ---- mma.sync: D (16x8, f32) = A * B + C ------------------------------------------------------------------
#if defined(GPUCONV_EMU)
namespace warp_emu {
enum class Kind { f16, bf16, tf32 };

inline float element(Kind kind, unsigned reg, int half) {
    if (kind == Kind::tf32) {
        const unsigned u = reg & ~0x1fffu;  // the tensor core reads the upper 19 bits
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    const unsigned short bits = static_cast<unsigned short>(half ? reg >> 16 : reg & 0xffffu);  // low = first
    if (kind == Kind::f16) return __half2float(__ushort_as_half(bits));
    const unsigned u = static_cast<unsigned>(bits) << 16;  // bf16 is the upper half of a float
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

struct Slot {
    unsigned a[4];
    unsigned b[2];
};

// Gather A (16 x KK) and B (KK x 8) from the lanes' registers by the ISA's layout, then each lane computes
// its four elements of D.
template <Kind KIND>
inline void mma(float d[4], const unsigned a[4], const unsigned b[2], const float c[4]) {
    constexpr int KK = KIND == Kind::tf32 ? 8 : 16;
    const int lane = ::emu::lane_id();
    unsigned char* ex = ::emu::warp_exchange();
    Slot mine;
    std::memcpy(mine.a, a, sizeof(mine.a));
    std::memcpy(mine.b, b, sizeof(mine.b));
    std::memcpy(ex + lane * ::emu::kExchangeBytes, &mine, sizeof(mine));
    __syncwarp();
    float A[16][KK], B[KK][8];
    for (int l = 0; l < 32; ++l) {
        Slot s;
        std::memcpy(&s, ex + l * ::emu::kExchangeBytes, sizeof(s));
        const int group = l >> 2, tig = l % 4;
        for (int i = 0; i < 4; ++i) {
            if (KIND == Kind::tf32) {
                A[group + 8 * (i & 1)][tig + 4 * (i >> 1)] = element(KIND, s.a[i], 0);
            } else {
                for (int h = 0; h < 2; ++h) A[group + 8 * (i & 1)][2 * tig + 8 * (i >> 1) + h] = element(KIND, s.a[i], h);
            }
        }
        for (int i = 0; i < 2; ++i) {
            if (KIND == Kind::tf32) {
                B[tig + 4 * i][group] = element(KIND, s.b[i], 0);
            } else {
                for (int h = 0; h < 2; ++h) B[2 * tig + 8 * i + h][group] = element(KIND, s.b[i], h);
            }
        }
    }
    const int group = lane >> 2, tig = lane % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = group + 8 * (i >> 1), col = 2 * tig + (i & 1);
        float acc = c[i];
        for (int k = 0; k < KK; ++k) acc += A[row][k] * B[k][col];
        d[i] = acc;
    }
}
}  // namespace warp_emu
#endif

// f16 inputs (each register two halves, the lower one first), f32 accumulators.
static __device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const unsigned a[4], const unsigned b[2],
                                                         const float c[4]) {
#if defined(GPUCONV_EMU)
    warp_emu::mma<warp_emu::Kind::f16>(d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
#endif
}

// bf16 inputs, f32 accumulators; the same fragment layout as f16.
static __device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const unsigned a[4], const unsigned b[2],
                                                          const float c[4]) {
#if defined(GPUCONV_EMU)
    warp_emu::mma<warp_emu::Kind::bf16>(d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
#endif
}

// TF32 inputs (float bits, rounded with tf32_round), f32 accumulators.
static __device__ __forceinline__ void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2],
                                                         const float c[4]) {
#if defined(GPUCONV_EMU)
    warp_emu::mma<warp_emu::Kind::tf32>(d, a, b, c);
#else
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
#endif
}
