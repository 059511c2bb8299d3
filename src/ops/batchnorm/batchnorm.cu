// Batch norm fused with ReLU and SliceOut's scale, on channel-major rows: channel j of the
// buffer is the contiguous row [j*m, (j+1)*m). The host launches one call per run of the
// slice with every pointer already offset (buffer rows by run.at, per-layer vectors by
// run.channel), so the kernels see plain contiguous channels. Expressions follow
// src/ops/batchnorm exactly (the module is compiled with --fmad=false), so the ReLU mask a
// backward pass recomputes is the one forward used.

__device__ __forceinline__ float pre_activation(float x, float mean, float invstd, float g,
                                                float b) {
    return g * ((x - mean) * invstd) + b;
}

// One block per channel: two passes in f64 for mean and variance, running-stat update, then
// out = relu(pre) * scale. mean/invstd (f32) go to `mean_out`/`invstd_out`.
extern "C" __global__ void bn_relu_train(float* out, float* mean_out, float* invstd_out,
                                         const float* inp, const float* gamma,
                                         const float* beta, float* running_mean,
                                         float* running_var, i64 m, float scale,
                                         double momentum, double unbias, double eps) {
    __shared__ double sh[32];
    int c = blockIdx.x;
    const float* x = inp + (i64)c * m;
    float* o = out + (i64)c * m;
    double s = 0.0;
    for (i64 i = threadIdx.x; i < m; i += blockDim.x) s += (double)x[i];
    double mean64 = block_sum(s, sh) / (double)m;
    double q = 0.0;
    for (i64 i = threadIdx.x; i < m; i += blockDim.x) {
        double d = (double)x[i] - mean64;
        q += d * d;
    }
    double var64 = block_sum(q, sh) / (double)m;
    float mu = (float)mean64;
    float is = (float)(1.0 / sqrt(var64 + eps));
    if (threadIdx.x == 0) {
        mean_out[c] = mu;
        invstd_out[c] = is;
        running_mean[c] = (float)((1.0 - momentum) * (double)running_mean[c] + momentum * mean64);
        running_var[c] =
            (float)((1.0 - momentum) * (double)running_var[c] + momentum * var64 * unbias);
    }
    float g = gamma[c], b = beta[c];
    for (i64 i = threadIdx.x; i < m; i += blockDim.x)
        o[i] = fmaxf(pre_activation(x[i], mu, is, g, b), 0.0f) * scale;
}

// Element-wise: out = relu(pre) * scale from saved statistics. Grid: x over m, y = channel.
extern "C" __global__ void bn_relu_apply(float* out, const float* inp, const float* mean,
                                         const float* invstd, const float* gamma,
                                         const float* beta, i64 m, float scale) {
    int c = blockIdx.y;
    float mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
    const float* x = inp + (i64)c * m;
    float* o = out + (i64)c * m;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < m;
         i += (i64)gridDim.x * blockDim.x)
        o[i] = fmaxf(pre_activation(x[i], mu, is, g, b), 0.0f) * scale;
}

// Eval mode: running statistics, no scale. Grid: x over m, y = channel.
extern "C" __global__ void bn_relu_eval(float* out, const float* inp, const float* gamma,
                                        const float* beta, const float* running_mean,
                                        const float* running_var, i64 m, double eps) {
    int c = blockIdx.y;
    float mu = running_mean[c];
    float is = (float)(1.0 / sqrt((double)running_var[c] + eps));
    float g = gamma[c], b = beta[c];
    const float* x = inp + (i64)c * m;
    float* o = out + (i64)c * m;
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < m;
         i += (i64)gridDim.x * blockDim.x)
        o[i] = fmaxf(pre_activation(x[i], mu, is, g, b), 0.0f);
}

// One block per channel: f64 sums of the gradient reaching the pre-activation and of it times
// xhat, then d_x = gamma*invstd*(g - mean(g) - xhat*mean(g*xhat)), written or added.
extern "C" __global__ void bn_relu_backward(float* d_inp, float* d_gamma, float* d_beta,
                                            const float* d_out, const float* inp,
                                            const float* mean, const float* invstd,
                                            const float* gamma, const float* beta, i64 m,
                                            float scale, int accumulate) {
    __shared__ double sh[32];
    int c = blockIdx.x;
    const float* x = inp + (i64)c * m;
    const float* dy = d_out + (i64)c * m;
    float* dx = d_inp + (i64)c * m;
    float mu = mean[c], is = invstd[c], g = gamma[c], b = beta[c];
    double sg = 0.0, sgx = 0.0;
    for (i64 i = threadIdx.x; i < m; i += blockDim.x) {
        float xv = x[i];
        float gr = pre_activation(xv, mu, is, g, b) > 0.0f ? dy[i] * scale : 0.0f;
        sg += (double)gr;
        sgx += (double)gr * (double)((xv - mu) * is);
    }
    sg = block_sum(sg, sh);
    sgx = block_sum(sgx, sh);
    if (threadIdx.x == 0) {
        d_beta[c] = (float)sg;
        d_gamma[c] = (float)sgx;
    }
    float k = g * is;
    float mean_g = (float)(sg / (double)m);
    float mean_gx = (float)(sgx / (double)m);
    for (i64 i = threadIdx.x; i < m; i += blockDim.x) {
        float xv = x[i];
        float gr = pre_activation(xv, mu, is, g, b) > 0.0f ? dy[i] * scale : 0.0f;
        float v = k * (gr - mean_g - (xv - mu) * is * mean_gx);
        dx[i] = accumulate ? dx[i] + v : v;
    }
}
