// Global average pooling over channel-major rows and its gradient. Mirrors ops/pool (CPU):
// f64 sums, the same f32 division.

// out[r] = mean of row r (hw values) of inp; one warp per row.
extern "C" __global__ void avgpool_forward(float* out, const float* inp, i64 rows, int hw) {
    i64 warp = global_id() >> 5;
    int lane = threadIdx.x & 31;
    i64 warps = global_stride() >> 5;
    for (i64 r = warp; r < rows; r += warps) {
        double s = 0.0;
        for (int j = lane; j < hw; j += 32) s += (double)inp[r * hw + j];
        for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
        if (lane == 0) out[r] = (float)(s * (1.0 / (double)hw));
    }
}

extern "C" __global__ void avgpool_backward(float* d_inp, const float* d_out, i64 rows, int hw) {
    float hw_f = (float)hw;
    i64 total = rows * hw;
    for (i64 i = global_id(); i < total; i += global_stride()) d_inp[i] = d_out[i / hw] / hw_f;
}
