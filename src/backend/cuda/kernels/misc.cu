// The small ops: residual add, global average pool, the classifier, softmax cross-entropy,
// SGD, and the batch gather. Each mirrors its CPU op in src/ops (f64 sums where the CPU sums
// in f64; the same f32 expressions elsewhere, compiled with --fmad=false).

extern "C" __global__ void add(float* out, const float* inp, i64 len) {
    for (i64 i = global_id(); i < len; i += global_stride()) out[i] += inp[i];
}

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

// One block: stats = [mean loss, correct count]; d_logits (may be null) = (softmax-onehot)/n.
// A label that is not a class index makes the loss NaN (the CPU op panics instead).
extern "C" __global__ void cross_entropy(float* stats, float* d_logits, const float* logits,
                                         const float* labels, int n, int o) {
    __shared__ double sh[32];
    double total = 0.0, correct = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float* row = logits + (i64)i * o;
        float label = labels[i];
        int y = (label >= 0.0f && label < (float)o) ? (int)label : -1;
        if (y < 0 || (float)y != label) {
            total += __longlong_as_double(0x7ff8000000000000LL);
            continue;
        }
        int best = 0;
        float mx = row[0];
        for (int k = 1; k < o; ++k)
            if (row[k] > mx) {
                best = k;
                mx = row[k];
            }
        double m = (double)mx, se = 0.0;
        for (int k = 0; k < o; ++k) se += exp((double)row[k] - m);
        total += (m - (double)row[y]) + log(se);
        correct += best == y ? 1.0 : 0.0;
        if (d_logits) {
            double inv_n = 1.0 / (double)n;
            for (int k = 0; k < o; ++k) {
                double p = exp((double)row[k] - m) / se;
                d_logits[(i64)i * o + k] = (float)((p - (k == y ? 1.0 : 0.0)) * inv_n);
            }
        }
    }
    total = block_sum(total, sh);
    correct = block_sum(correct, sh);
    if (threadIdx.x == 0) {
        stats[0] = n > 0 ? (float)(total / (double)n) : 0.0f;
        stats[1] = (float)correct;
    }
}

// PyTorch SGD over every element of a parameter; the gradient is read through the slice map:
// mode 0 full; 1 rows (param [channels, group], gradient [width, group] in slice order);
// 2 columns (param [rows, channels*group], gradient [rows, width*group]).
extern "C" __global__ void sgd(float* param, float* buf, const float* grad, i64 len, int mode,
                               int start, int width, int channels, int group, float lr,
                               float momentum, float weight_decay, int nesterov) {
    for (i64 idx = global_id(); idx < len; idx += global_stride()) {
        float g0 = 0.0f;
        if (mode == 0) {
            g0 = grad[idx];
        } else if (mode == 1) {
            i64 ch = idx / group;
            int pos = (int)((ch + channels - start) % channels);
            if (pos < width) g0 = grad[(i64)pos * group + idx % group];
        } else {
            i64 row_len = (i64)channels * group;
            i64 r = idx / row_len, rem = idx % row_len;
            i64 ch = rem / group;
            int pos = (int)((ch + channels - start) % channels);
            if (pos < width) g0 = grad[r * width * group + (i64)pos * group + rem % group];
        }
        float p = param[idx];
        float g = g0 + weight_decay * p;
        float b = momentum * buf[idx] + g;
        buf[idx] = b;
        float d = nesterov ? g + momentum * b : b;
        param[idx] = p - lr * d;
    }
}
