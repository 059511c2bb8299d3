// Helpers shared by every kernel file; prepended to each one before NVRTC compiles it (a file
// on its own has no kernels). NVRTC has no standard headers, so only built-ins are used.

typedef long long i64;

// Sum of `v` over the block, returned to every thread. `sh` holds at least 32 doubles;
// blockDim.x must be a multiple of 32. Doubles, so that long reductions (BN statistics over
// N*H*W values) match the CPU reference's f64 sums.
__device__ double block_sum(double v, double* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // `sh` may still be read by a previous call
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    v = (int)threadIdx.x < warps ? sh[threadIdx.x] : 0.0;
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

__device__ __forceinline__ i64 global_id() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 global_stride() { return (i64)gridDim.x * blockDim.x; }
