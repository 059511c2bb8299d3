// Batch norm fused with ReLU and SliceOut's scale, on channel-major rows: channel j of the
// buffer is the contiguous row [j*m, (j+1)*m). The host launches one call per run of the
// slice with every pointer already offset (buffer rows by run.at, per-layer vectors by
// run.channel), so the kernels see plain contiguous channels. Expressions follow
// src/ops/batchnorm exactly (the module is compiled with --fmad=false), so the ReLU mask a
// backward pass recomputes is the one forward used.
//
// Activations and their gradients are the storage type T (each kernel `k` stores f32, `k_bf16`
// bf16); statistics, parameters and their gradients are f32 in every program. Sums are of the
// stored values widened, and each stored value is rounded once, as the CPU op does.
//
// Where a row's length is a multiple of 4 and the rows are aligned (`by_fours`, every layer of
// a WRN), a thread moves 4 adjacent values with one load or store each (16 bytes f32, 8 bf16);
// otherwise one at a time. Element-wise results are the same either way; the reductions'
// f64 partial sums group differently.

__device__ __forceinline__ float pre_activation(float x, float mean, float invstd, float g,
                                                float b) {
    return g * ((x - mean) * invstd) + b;
}

// Batch statistics, multi-block (grid: parts of the row, channel): f64 sums of x and x^2 per
// part, then the channel's last block adds the parts in order and writes mean/invstd (f32, to
// `mean_out`/`invstd_out`) and the running statistics. var = E[x^2] - mean^2 in f64 loses about
// 1e-16 * (mean/std)^2 relative, far below f32's rounding of the result.
template <typename T>
__device__ __forceinline__ void bn_stats_t(float* mean_out, float* invstd_out,
                                           float* running_mean, float* running_var, double* part,
                                           unsigned* count, const T* inp, i64 m, double momentum,
                                           double unbias, double eps) {
    __shared__ double sh[32];
    int c = blockIdx.y;
    const T* x = inp + (i64)c * m;
    i64 lo, hi;
    double s = 0.0, q = 0.0;
    auto add = [&](T xi) {
        double v = (double)widen(xi);
        s += v;
        q += v * v;
    };
    if (by_fours<T>(m, x, x, x)) {
        part_range(m, 4, &lo, &hi);
        for (i64 i = lo + 4 * threadIdx.x; i < hi; i += 4 * blockDim.x) {
            Lanes<T, 4> in = load_lanes<T, 4>(x + i);
#pragma unroll
            for (int j = 0; j < 4; ++j) add(in.v[j]);
        }
    } else {
        part_range(m, 1, &lo, &hi);
        for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) add(x[i]);
    }
    if (!channel_totals(&s, &q, part, count, c, sh)) return;
    double mean64 = s / (double)m;
    double var64 = fmax(q / (double)m - mean64 * mean64, 0.0);
    mean_out[c] = (float)mean64;
    invstd_out[c] = (float)(1.0 / sqrt(var64 + eps));
    running_mean[c] = (float)((1.0 - momentum) * (double)running_mean[c] + momentum * mean64);
    running_var[c] = (float)((1.0 - momentum) * (double)running_var[c] + momentum * var64 * unbias);
}

// Element-wise: out = relu(pre) * scale from saved statistics. Grid: x over m, y = channel.
template <typename T>
__device__ __forceinline__ void bn_relu_apply_t(T* out, const T* inp, const float* mean,
                                                const float* invstd, const float* gamma,
                                                const float* beta, i64 m, float scale) {
    int c = blockIdx.y;
    float mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
    map_row(out + (i64)c * m, inp + (i64)c * m, m,
            [=](T x) { return narrow<T>(fmaxf(pre_activation(widen(x), mu, is, g, b), 0.0f) * scale); });
}

// Eval mode: running statistics, no scale. Grid: x over m, y = channel.
template <typename T>
__device__ __forceinline__ void bn_relu_eval_t(T* out, const T* inp, const float* gamma,
                                               const float* beta, const float* running_mean,
                                               const float* running_var, i64 m, double eps) {
    int c = blockIdx.y;
    float mu = running_mean[c];
    float is = (float)(1.0 / sqrt((double)running_var[c] + eps));
    float g = gamma[c], b = beta[c];
    map_row(out + (i64)c * m, inp + (i64)c * m, m,
            [=](T x) { return narrow<T>(fmaxf(pre_activation(widen(x), mu, is, g, b), 0.0f)); });
}

// The gradient reaching the pre-activation (ReLU's mask recomputed, SliceOut's scale applied).
__device__ __forceinline__ float pre_grad(float dy, float x, float mu, float is, float g, float b,
                                          float scale) {
    return pre_activation(x, mu, is, g, b) > 0.0f ? dy * scale : 0.0f;
}

// Backward sums, multi-block as bn_stats: f64 sums of the pre-activation gradient g and of
// g * xhat; the last block writes d_beta, d_gamma and the two means (f64) to `means[2c..]`.
template <typename T>
__device__ __forceinline__ void bn_backward_sums_t(float* d_gamma, float* d_beta, double* means,
                                                   double* part, unsigned* count, const T* d_out,
                                                   const T* inp, const float* mean,
                                                   const float* invstd, const float* gamma,
                                                   const float* beta, i64 m, float scale) {
    __shared__ double sh[32];
    int c = blockIdx.y;
    const T* x = inp + (i64)c * m;
    const T* dy = d_out + (i64)c * m;
    float mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
    i64 lo, hi;
    double sg = 0.0, sgx = 0.0;
    auto add = [&](T xi, T dyi) {
        float xv = widen(xi);
        float gr = pre_grad(widen(dyi), xv, mu, is, g, b, scale);
        sg += (double)gr;
        sgx += (double)gr * (double)((xv - mu) * is);
    };
    if (by_fours<T>(m, x, dy, dy)) {
        part_range(m, 4, &lo, &hi);
        for (i64 i = lo + 4 * threadIdx.x; i < hi; i += 4 * blockDim.x) {
            Lanes<T, 4> xs = load_lanes<T, 4>(x + i), dys = load_lanes<T, 4>(dy + i);
#pragma unroll
            for (int j = 0; j < 4; ++j) add(xs.v[j], dys.v[j]);
        }
    } else {
        part_range(m, 1, &lo, &hi);
        for (i64 i = lo + threadIdx.x; i < hi; i += blockDim.x) add(x[i], dy[i]);
    }
    if (!channel_totals(&sg, &sgx, part, count, c, sh)) return;
    d_beta[c] = (float)sg;
    d_gamma[c] = (float)sgx;
    means[2 * c] = sg / (double)m;
    means[2 * c + 1] = sgx / (double)m;
}

// d_x = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat)), written or added, with the means of
// bn_backward_sums. Grid: x over m, y = channel.
template <typename T>
__device__ __forceinline__ void bn_relu_backward_t(T* d_inp, const double* means, const T* d_out,
                                                   const T* inp, const float* mean,
                                                   const float* invstd, const float* gamma,
                                                   const float* beta, i64 m, float scale,
                                                   int accumulate) {
    int c = blockIdx.y;
    const T* x = inp + (i64)c * m;
    const T* dy = d_out + (i64)c * m;
    T* dx = d_inp + (i64)c * m;
    float mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
    float k = g * is;
    float mean_g = (float)means[2 * c];
    float mean_gx = (float)means[2 * c + 1];
    // The stored gradient of one element, from its x, dy and (accumulating) what d_inp held.
    auto grad = [=](T xi, T dyi, T old) {
        float xv = widen(xi);
        float v = k * (pre_grad(widen(dyi), xv, mu, is, g, b, scale) - mean_g - (xv - mu) * is * mean_gx);
        return narrow<T>(accumulate ? widen(old) + v : v);
    };
    if (by_fours<T>(m, x, dy, dx)) {
        for (i64 i = 4 * global_id(); i < m; i += 4 * global_stride()) {
            Lanes<T, 4> xs = load_lanes<T, 4>(x + i), dys = load_lanes<T, 4>(dy + i), r;
            if (accumulate) r = load_lanes<T, 4>(dx + i);
#pragma unroll
            for (int j = 0; j < 4; ++j) r.v[j] = grad(xs.v[j], dys.v[j], r.v[j]);
            store_lanes(dx + i, r);
        }
        return;
    }
    for (i64 i = global_id(); i < m; i += global_stride()) dx[i] = grad(x[i], dy[i], accumulate ? dx[i] : x[i]);
}

// The entry points: `k` over f32 storage, `k_bf16` over bf16 storage.

extern "C" __global__ void bn_stats(float* mean_out, float* invstd_out, float* running_mean,
                                    float* running_var, double* part, unsigned* count,
                                    const float* inp, i64 m, double momentum, double unbias,
                                    double eps) {
    bn_stats_t(mean_out, invstd_out, running_mean, running_var, part, count, inp, m, momentum,
               unbias, eps);
}

extern "C" __global__ void bn_stats_bf16(float* mean_out, float* invstd_out,
                                         float* running_mean, float* running_var, double* part,
                                         unsigned* count, const bf16* inp, i64 m,
                                         double momentum, double unbias, double eps) {
    bn_stats_t(mean_out, invstd_out, running_mean, running_var, part, count, inp, m, momentum,
               unbias, eps);
}

extern "C" __global__ void bn_relu_apply(float* out, const float* inp, const float* mean,
                                         const float* invstd, const float* gamma,
                                         const float* beta, i64 m, float scale) {
    bn_relu_apply_t(out, inp, mean, invstd, gamma, beta, m, scale);
}

extern "C" __global__ void bn_relu_apply_bf16(bf16* out, const bf16* inp, const float* mean,
                                              const float* invstd, const float* gamma,
                                              const float* beta, i64 m, float scale) {
    bn_relu_apply_t(out, inp, mean, invstd, gamma, beta, m, scale);
}

extern "C" __global__ void bn_relu_eval(float* out, const float* inp, const float* gamma,
                                        const float* beta, const float* running_mean,
                                        const float* running_var, i64 m, double eps) {
    bn_relu_eval_t(out, inp, gamma, beta, running_mean, running_var, m, eps);
}

extern "C" __global__ void bn_relu_eval_bf16(bf16* out, const bf16* inp, const float* gamma,
                                             const float* beta, const float* running_mean,
                                             const float* running_var, i64 m, double eps) {
    bn_relu_eval_t(out, inp, gamma, beta, running_mean, running_var, m, eps);
}

extern "C" __global__ void bn_backward_sums(float* d_gamma, float* d_beta, double* means,
                                            double* part, unsigned* count, const float* d_out,
                                            const float* inp, const float* mean,
                                            const float* invstd, const float* gamma,
                                            const float* beta, i64 m, float scale) {
    bn_backward_sums_t(d_gamma, d_beta, means, part, count, d_out, inp, mean, invstd, gamma, beta,
                       m, scale);
}

extern "C" __global__ void bn_backward_sums_bf16(float* d_gamma, float* d_beta, double* means,
                                                 double* part, unsigned* count,
                                                 const bf16* d_out, const bf16* inp,
                                                 const float* mean, const float* invstd,
                                                 const float* gamma, const float* beta, i64 m,
                                                 float scale) {
    bn_backward_sums_t(d_gamma, d_beta, means, part, count, d_out, inp, mean, invstd, gamma, beta,
                       m, scale);
}

extern "C" __global__ void bn_relu_backward(float* d_inp, const double* means, const float* d_out,
                                            const float* inp, const float* mean,
                                            const float* invstd, const float* gamma,
                                            const float* beta, i64 m, float scale,
                                            int accumulate) {
    bn_relu_backward_t(d_inp, means, d_out, inp, mean, invstd, gamma, beta, m, scale, accumulate);
}

extern "C" __global__ void bn_relu_backward_bf16(bf16* d_inp, const double* means,
                                                 const bf16* d_out, const bf16* inp,
                                                 const float* mean, const float* invstd,
                                                 const float* gamma, const float* beta, i64 m,
                                                 float scale, int accumulate) {
    bn_relu_backward_t(d_inp, means, d_out, inp, mean, invstd, gamma, beta, m, scale, accumulate);
}
