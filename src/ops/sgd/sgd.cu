// PyTorch's SGD reading a sliced gradient. Mirrors ops/sgd (CPU): the same f32 expressions,
// compiled with --fmad=false.

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
