// What the host builds of the CUDA kernels share (winograd_kernels.cpp, fold_kernels.cpp,
// sgd_kernels.cpp): a few definitions that stand in for CUDA's built-ins, and `launch`, which
// runs every thread of a grid in turn. The kernels are grid-stride loops with no
// synchronisation, so any order is a valid schedule; the reductions' built-ins below only let
// their kernels compile and are never run.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

struct Dim3 {
    unsigned x, y, z;
};
static Dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
struct uint2 {
    unsigned x, y;
};
struct uint4 {
    unsigned x, y, z, w;
};
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline double __shfl_down_sync(unsigned, double v, int) { return v; }
inline void __syncthreads() {}
inline void __threadfence() {}
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    unsigned o = *p;
    *p += v;
    return o;
}
template <class T>
T __ldcg(const T* p) {
    return *p;
}
using std::max;
using std::min;

// Runs `kernel` for every thread of a (gx, gy) grid of 256-thread blocks, gx at most 3 so the
// grid-stride loops take more than one turn.
template <class F>
void launch(long work, unsigned gy, F kernel) {
    unsigned gx = (unsigned)std::min(3L, std::max(1L, (work + 255) / 256));
    gridDim = {gx, gy, 1};
    blockDim = {256, 1, 1};
    for (unsigned by = 0; by < gy; ++by)
        for (unsigned bx = 0; bx < gx; ++bx)
            for (unsigned t = 0; t < 256; ++t) {
                blockIdx = {bx, by, 0};
                threadIdx = {t, 0, 0};
                kernel();
            }
}
