// Global average pooling over channel-major rows and its gradient. Mirrors ops/pool (CPU):
// f64 sums of the stored values, the same f32 division. The pooled values and their gradient
// are f32 in every program (the head); the image-sized side is the storage type T.

// out[r] = mean of row r (hw values) of inp; one warp per row.
template <typename T>
__device__ __forceinline__ void avgpool_forward_t(float* out, const T* inp, i64 rows, int hw) {
    i64 warp = global_id() >> 5;
    int lane = threadIdx.x & 31;
    i64 warps = global_stride() >> 5;
    for (i64 r = warp; r < rows; r += warps) {
        double s = 0.0;
        for (int j = lane; j < hw; j += 32) s += (double)widen(inp[r * hw + j]);
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
        if (lane == 0) out[r] = (float)(s * (1.0 / (double)hw));
    }
}

template <typename T>
__device__ __forceinline__ void avgpool_backward_t(T* d_inp, const float* d_out, i64 rows, int hw) {
    float hw_f = (float)hw;
    i64 total = rows * hw;
    for (i64 i = global_id(); i < total; i += global_stride())
        d_inp[i] = narrow<T>(d_out[i / hw] / hw_f);
}

extern "C" __global__ void avgpool_forward(float* out, const float* inp, i64 rows, int hw) {
    avgpool_forward_t(out, inp, rows, hw);
}

extern "C" __global__ void avgpool_forward_bf16(float* out, const bf16* inp, i64 rows, int hw) {
    avgpool_forward_t(out, inp, rows, hw);
}

extern "C" __global__ void avgpool_backward(float* d_inp, const float* d_out, i64 rows, int hw) {
    avgpool_backward_t(d_inp, d_out, rows, hw);
}

extern "C" __global__ void avgpool_backward_bf16(bf16* d_inp, const float* d_out, i64 rows,
                                                 int hw) {
    avgpool_backward_t(d_inp, d_out, rows, hw);
}
