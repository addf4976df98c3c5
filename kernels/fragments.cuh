// What the SIMT GEMM kernels (gemm, implicit_gemm, dgrad, wgrad) share for their register fragments: a thread's
// TM (or TN) values along one axis of its tile lie in groups of consecutive ACC_T, each group read from shared
// memory as one AccVec (LDS.128 where the group is 16 bytes), the groups far enough apart that a warp reads
// consecutive vectors.
//
// The kernels keep the group loop inline: as a function template taking the fragment by reference, ptxas spilled
// 16 bytes at wgrad's 64 x 64 tile of 8 x 8 in float16 (168 registers) where the inline loop takes 194 and none.
#pragma once
#include "common.cuh"

template <int N>
struct __align__(N * sizeof(ACC_T)) AccVec {
    ACC_T e[N];
};
