// PyTorch's SGD reading a sliced gradient. Mirrors ops/sgd (CPU): the same f32 expressions,
// compiled with --fmad=false.

// One element: weight decay, momentum, Nesterov, in PyTorch's order.
__device__ __forceinline__ float sgd_step(float p, float* b_io, float g0, float lr, float momentum,
                                          float weight_decay, int nesterov) {
    float g = g0 + weight_decay * p;
    float b = momentum * *b_io + g;
    *b_io = b;
    float d = nesterov ? g + momentum * b : b;
    return p - lr * d;
}

// PyTorch SGD over every element of a parameter (len < 2^31); the gradient is read through the
// slice map: mode 0 full; 1 rows (param [channels, group], gradient [width, group] in slice
// order); 2 columns (param [rows, channels*group], gradient [rows, width*group]). Divisions by
// `group` and by `row_len = channels*group` use the host's (magic, shift) pairs (`div_by`); a
// full gradient whose rows are aligned moves 4 values a load.
extern "C" __global__ void sgd(float* param, float* buf, const float* grad, int len, int mode,
                               int start, int width, int channels, int group,
                               unsigned group_magic, unsigned group_shift, int row_len,
                               unsigned row_magic, unsigned row_shift, float lr, float momentum,
                               float weight_decay, int nesterov) {
    if (mode == 0 && by_fours<float>(len, param, buf, grad)) {
        for (int i = 4 * (int)global_id(); i < len; i += 4 * (int)global_stride()) {
            Lanes<float, 4> p = load_lanes<float, 4>(param + i), b = load_lanes<float, 4>(buf + i);
            Lanes<float, 4> g = load_lanes<float, 4>(grad + i);
#pragma unroll
            for (int j = 0; j < 4; ++j)
                p.v[j] = sgd_step(p.v[j], &b.v[j], g.v[j], lr, momentum, weight_decay, nesterov);
            store_lanes(buf + i, b);
            store_lanes(param + i, p);
        }
        return;
    }
    for (int idx = (int)global_id(); idx < len; idx += (int)global_stride()) {
        float g0 = 0.0f;
        if (mode == 0) {
            g0 = grad[idx];
        } else {
            // Row r of the parameter (mode 2), channel ch within it, and the channel's position
            // in the slice: (ch - start) mod channels.
            int r = mode == 2 ? (int)div_by(idx, row_magic, row_shift) : 0;
            int rem = idx - r * row_len;
            int ch = (int)div_by(rem, group_magic, group_shift);
            int within = rem - ch * group;
            int pos = ch - start;
            if (pos < 0) pos += channels;
            if (pos < width) g0 = grad[((i64)r * width + pos) * group + within];
        }
        param[idx] = sgd_step(param[idx], &buf[idx], g0, lr, momentum, weight_decay, nesterov);
    }
}
