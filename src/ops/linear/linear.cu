// The classifier and its gradients. Mirrors ops/linear (CPU): f64 dot products.

// logits[i, k] = bias[k] + sum_ch weight[k, ch] * inp[ch, i] (inp is channel-major [c, n]).
extern "C" __global__ void linear_forward(float* out, const float* inp, const float* weight,
                                          const float* bias, int c, int n, int o) {
    i64 total = (i64)n * o;
    for (i64 idx = global_id(); idx < total; idx += global_stride()) {
        int i = (int)(idx / o), k = (int)(idx % o);
        double dot = 0.0;
        for (int ch = 0; ch < c; ++ch)
            dot += (double)weight[(i64)k * c + ch] * (double)inp[(i64)ch * n + i];
        out[idx] = (float)(dot + (double)bias[k]);
    }
}

// The three gradients of the classifier in one launch over c*n + o*c + o entries.
extern "C" __global__ void linear_backward(float* d_inp, float* d_weight, float* d_bias,
                                           const float* d_out, const float* inp,
                                           const float* weight, int c, int n, int o) {
    i64 a = (i64)c * n, b = a + (i64)o * c, total = b + o;
    for (i64 idx = global_id(); idx < total; idx += global_stride()) {
        if (idx < a) {
            int ch = (int)(idx / n), i = (int)(idx % n);
            double dot = 0.0;
            for (int k = 0; k < o; ++k)
                dot += (double)d_out[(i64)i * o + k] * (double)weight[(i64)k * c + ch];
            d_inp[idx] = (float)dot;
        } else if (idx < b) {
            i64 j = idx - a;
            int k = (int)(j / c), ch = (int)(j % c);
            double dot = 0.0;
            for (int i = 0; i < n; ++i)
                dot += (double)d_out[(i64)i * o + k] * (double)inp[(i64)ch * n + i];
            d_weight[j] = (float)dot;
        } else {
            int k = (int)(idx - b);
            double s = 0.0;
            for (int i = 0; i < n; ++i) s += (double)d_out[(i64)i * o + k];
            d_bias[k] = (float)s;
        }
    }
}
