// im2col / col2im for convolutions over channel-major (C, N, H, W) activations, one chunk of
// images at a time. The column matrix of a chunk is row-major [c*k*k, nc*ho*wo]: row
// (ci, kh, kw), column (image, oh, ow), exactly what the GEMM `W[cout, c*k*k] * col` wants.
//
// Both are memory-bound. A thread takes V adjacent columns (im2col) or V adjacent input pixels
// (col2im) of one channel (grid y) and walks all k*k taps of them, so a column index is split
// (with `div_by`, no divisions) once per V*k*k elements, and each tap's V values go out as one
// V-wide store. The host picks V (4, 2 or 1) so that the V columns lie in one row of one image
// (ow, or w, a multiple of V) and the stores are aligned (`vector_width` in cuda.rs); the sums
// and roundings are the same for every V. For k = 3 and k = 1 the taps are a compile-time loop
// that unrolls, so a thread's loads are in flight together.
//
// Columns and activations are the storage type T: `im2col`, `col2im`, `weight_slice` store f32,
// `*_bf16` bf16. im2col copies stored values (no rounding; `im2col_bn_relu` rounds each BN
// output once, as the BN op's store does); col2im sums a pixel's window
// entries in f32, kh then kw (the CPU's order), and rounds the result once; the weight copy
// rounds each f32 weight once.

// The kernel width as a compile-time constant (K > 0) or the launch's (K = 0).
#define TAPS(K, k_arg) ((K) > 0 ? (K) : (k_arg))

// A train-mode BN + ReLU (+ SliceOut's scale) that im2col applies to what it gathers, in place
// of reading the BN's recomputed output (`im2col_bn_relu`): the saved statistics (one per
// buffer channel, slice order), the layer's gamma and beta (buffer channel c is layer channel
// (start + c) mod channels) and the scale. The value is src/ops/batchnorm's bn_relu_value,
// the expression batchnorm.cu's bn_relu_apply stores; both modules are compiled with
// --fmad=false, so it is the same to the bit.
struct BnFold {
    const float* mean;
    const float* invstd;
    const float* gamma;
    const float* beta;
    int start, channels;
    float scale;
};

template <typename T, int K, int V, bool FOLD>
__device__ __forceinline__ void im2col_channel(T* __restrict__ col,
                                               const T* __restrict__ inp, int n, int h,
                                               int w, int k_arg, int stride, int pad, int wo,
                                               int hwo, unsigned hwo_magic, unsigned hwo_shift,
                                               unsigned wo_magic, unsigned wo_shift, int n0,
                                               int nc, BnFold f) {
    const int k = TAPS(K, k_arg);
    int ci = blockIdx.y;
    // The channel's BN (named apart from the loop's `g`).
    float bn_mu = 0.0f, bn_is = 0.0f, bn_g = 0.0f, bn_b = 0.0f;
    if (FOLD) {
        int layer = (f.start + ci) % f.channels;
        bn_mu = f.mean[ci], bn_is = f.invstd[ci], bn_g = f.gamma[layer], bn_b = f.beta[layer];
    }
    int cols = nc * hwo, groups = cols / V;
    const T* src = inp + ((i64)ci * n + n0) * h * w;
    T* dst = col + (i64)ci * k * k * cols;
    for (int g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
        int x = g * V;
        int i = (int)div_by(x, hwo_magic, hwo_shift);
        int p = x - i * hwo;
        int oh = (int)div_by(p, wo_magic, wo_shift);
        int ow = p - oh * wo;
        int ih0 = oh * stride - pad, iw0 = ow * stride - pad;
        const T* img = src + (i64)i * h * w;
#pragma unroll
        for (int kh = 0; kh < k; ++kh) {
            int ih = ih0 + kh;
            bool row_in = (unsigned)ih < (unsigned)h;
#pragma unroll
            for (int kw = 0; kw < k; ++kw) {
                Lanes<T, V> out;
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    int iw = iw0 + j * stride + kw;
                    T v = narrow<T>(0.0f);
                    if (row_in && (unsigned)iw < (unsigned)w) {
                        v = img[ih * w + iw];
                        if (FOLD) {
                            float y = bn_g * ((widen(v) - bn_mu) * bn_is) + bn_b;
                            v = narrow<T>(fmaxf(y, 0.0f) * f.scale);
                        }
                    }
                    out.v[j] = v;
                }
                store_lanes(dst + (i64)(kh * k + kw) * cols + x, out);
            }
        }
    }
}

// col = columns of images [n0, n0 + nc) of `inp` (n images, h x w). Grid: x over the chunk's
// nc*ho*wo columns / vec (fewer than 2^30 columns), y = input channel. `hwo` splits a column
// into images; `vec` is V.
template <typename T, int K, bool FOLD>
__device__ __forceinline__ void im2col_k(T* col, const T* inp, int n, int h, int w, int k,
                                         int stride, int pad, int wo, int hwo,
                                         unsigned hwo_magic, unsigned hwo_shift, unsigned wo_magic,
                                         unsigned wo_shift, int n0, int nc, int vec, BnFold f) {
    if (vec == 4)
        im2col_channel<T, K, 4, FOLD>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic,
                                      hwo_shift, wo_magic, wo_shift, n0, nc, f);
    else if (vec == 2)
        im2col_channel<T, K, 2, FOLD>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic,
                                      hwo_shift, wo_magic, wo_shift, n0, nc, f);
    else
        im2col_channel<T, K, 1, FOLD>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic,
                                      hwo_shift, wo_magic, wo_shift, n0, nc, f);
}

template <typename T, bool FOLD>
__device__ __forceinline__ void im2col_t(T* col, const T* inp, int n, int h, int w, int k,
                                         int stride, int pad, int wo, int hwo,
                                         unsigned hwo_magic, unsigned hwo_shift, unsigned wo_magic,
                                         unsigned wo_shift, int n0, int nc, int vec, BnFold f) {
    if (k == 3)
        im2col_k<T, 3, FOLD>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic, hwo_shift,
                             wo_magic, wo_shift, n0, nc, vec, f);
    else if (k == 1)
        im2col_k<T, 1, FOLD>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic, hwo_shift,
                             wo_magic, wo_shift, n0, nc, vec, f);
    else
        im2col_k<T, 0, FOLD>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic, hwo_shift,
                             wo_magic, wo_shift, n0, nc, vec, f);
}

template <typename T, int K, int V>
__device__ __forceinline__ void col2im_channel(T* __restrict__ d_inp,
                                               const T* __restrict__ col, int n, int h,
                                               int w, int k_arg, int stride, int pad, int ho,
                                               int wo, unsigned hw_magic, unsigned hw_shift,
                                               unsigned w_magic, unsigned w_shift, int n0, int nc,
                                               int accumulate) {
    const int k = TAPS(K, k_arg);
    int ci = blockIdx.y;
    int hw = h * w, hwo = ho * wo, cols = nc * hwo, groups = nc * hw / V;
    const T* rows = col + (i64)ci * k * k * cols;
    T* dst = d_inp + ((i64)ci * n + n0) * hw;
    for (int g = blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += gridDim.x * blockDim.x) {
        int x = g * V;
        int i = (int)div_by(x, hw_magic, hw_shift);
        int q = x - i * hw;
        int ih = (int)div_by(q, w_magic, w_shift);
        int iw0 = q - ih * w;
        const T* img = rows + (i64)i * hwo;
        float s[V];
#pragma unroll
        for (int j = 0; j < V; ++j) s[j] = 0.0f;
#pragma unroll
        for (int kh = 0; kh < k; ++kh) {
            int y = ih + pad - kh;
            int oh = stride == 1 ? y : y / stride;
            bool row_in = y >= 0 && (stride == 1 || y % stride == 0) && oh < ho;
#pragma unroll
            for (int kw = 0; kw < k; ++kw) {
                const T* tap = img + (i64)(kh * k + kw) * cols;
#pragma unroll
                for (int j = 0; j < V; ++j) {
                    int xx = iw0 + j + pad - kw;
                    int ow = stride == 1 ? xx : xx / stride;
                    if (row_in && xx >= 0 && (stride == 1 || xx % stride == 0) && ow < wo)
                        s[j] += widen(tap[oh * wo + ow]);
                }
            }
        }
        Lanes<T, V> out;
        if (accumulate) {
            Lanes<T, V> old = load_lanes<T, V>(dst + x);
#pragma unroll
            for (int j = 0; j < V; ++j) out.v[j] = narrow<T>(widen(old.v[j]) + s[j]);
        } else {
#pragma unroll
            for (int j = 0; j < V; ++j) out.v[j] = narrow<T>(s[j]);
        }
        store_lanes(dst + x, out);
    }
}

// d_inp (+)= col2im(col) for images [n0, n0 + nc): every input pixel gathers the column
// entries that read it, kh then kw (no atomics, deterministic). Pixels no window reads get 0.
// Grid: x over the channel's nc*h*w pixels / vec, y = channel.
template <typename T, int K>
__device__ __forceinline__ void col2im_k(T* d_inp, const T* col, int n, int h, int w, int k,
                                         int stride, int pad, int ho, int wo, unsigned hw_magic,
                                         unsigned hw_shift, unsigned w_magic, unsigned w_shift,
                                         int n0, int nc, int accumulate, int vec) {
    if (vec == 4)
        col2im_channel<T, K, 4>(d_inp, col, n, h, w, k, stride, pad, ho, wo, hw_magic, hw_shift,
                                w_magic, w_shift, n0, nc, accumulate);
    else if (vec == 2)
        col2im_channel<T, K, 2>(d_inp, col, n, h, w, k, stride, pad, ho, wo, hw_magic, hw_shift,
                                w_magic, w_shift, n0, nc, accumulate);
    else
        col2im_channel<T, K, 1>(d_inp, col, n, h, w, k, stride, pad, ho, wo, hw_magic, hw_shift,
                                w_magic, w_shift, n0, nc, accumulate);
}

template <typename T>
__device__ __forceinline__ void col2im_t(T* d_inp, const T* col, int n, int h, int w, int k,
                                         int stride, int pad, int ho, int wo, unsigned hw_magic,
                                         unsigned hw_shift, unsigned w_magic, unsigned w_shift,
                                         int n0, int nc, int accumulate, int vec) {
    if (k == 3)
        col2im_k<T, 3>(d_inp, col, n, h, w, k, stride, pad, ho, wo, hw_magic, hw_shift, w_magic,
                       w_shift, n0, nc, accumulate, vec);
    else if (k == 1)
        col2im_k<T, 1>(d_inp, col, n, h, w, k, stride, pad, ho, wo, hw_magic, hw_shift, w_magic,
                       w_shift, n0, nc, accumulate, vec);
    else
        col2im_k<T, 0>(d_inp, col, n, h, w, k, stride, pad, ho, wo, hw_magic, hw_shift, w_magic,
                       w_shift, n0, nc, accumulate, vec);
}

// Tap `tap` of the weight [cout, cin*kk] between output-slice position r and input-slice
// position j. Slices wrap: r is layer channel (out_start + r) mod cout, j input channel
// (in_start + j) mod cin.
__device__ __forceinline__ float weight_at(const float* w, int cout, int cin, int kk, int out_start,
                                           int r, int in_start, int j, int tap) {
    int row = out_start + r, ch = in_start + j;
    if (row >= cout) row -= cout;
    if (ch >= cin) ch -= cin;
    return w[((i64)row * cin + ch) * kk + tap];
}

// copy = the rows of the output slice and the column groups of the input slice of the weight,
// in slice order: [ow, iw*kk]. Small (a few MiB at most), so plain index arithmetic. Mirrors
// ops/conv2d/cpu.rs `copy_weight`.
template <typename T>
__device__ __forceinline__ void weight_slice_t(T* copy, const float* w, int cout, int cin, int kk,
                                               int out_start, int ow, int in_start, int iw) {
    int ldc = iw * kk, total = ow * ldc;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        int r = e / ldc, c = e - r * ldc;
        int j = c / kk, tap = c - j * kk;
        copy[e] = narrow<T>(weight_at(w, cout, cin, kk, out_start, r, in_start, j, tap));
    }
}

// The entry points: f32 storage, then bf16 (`*_bf16`).

extern "C" __global__ void im2col(float* col, const float* inp, int n, int h, int w, int k,
                                  int stride, int pad, int wo, int hwo, unsigned hwo_magic,
                                  unsigned hwo_shift, unsigned wo_magic, unsigned wo_shift,
                                  int n0, int nc, int vec) {
    im2col_t<float, false>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic, hwo_shift,
                           wo_magic, wo_shift, n0, nc, vec, BnFold{});
}

extern "C" __global__ void im2col_bf16(bf16* col, const bf16* inp, int n, int h, int w, int k,
                                       int stride, int pad, int wo, int hwo, unsigned hwo_magic,
                                       unsigned hwo_shift, unsigned wo_magic, unsigned wo_shift,
                                       int n0, int nc, int vec) {
    im2col_t<bf16, false>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic, hwo_shift,
                          wo_magic, wo_shift, n0, nc, vec, BnFold{});
}

// im2col of relu(bn(inp)) * scale (BnFold): `inp` is the BN's input, `mean`/`invstd` its saved
// statistics, `gamma`/`beta` the whole layer's; the other arguments are im2col's.
extern "C" __global__ void im2col_bn_relu(float* col, const float* inp, int n, int h, int w,
                                          int k, int stride, int pad, int wo, int hwo,
                                          unsigned hwo_magic, unsigned hwo_shift,
                                          unsigned wo_magic, unsigned wo_shift, int n0, int nc,
                                          int vec, const float* mean, const float* invstd,
                                          const float* gamma, const float* beta, int start,
                                          int channels, float scale) {
    BnFold f{mean, invstd, gamma, beta, start, channels, scale};
    im2col_t<float, true>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic, hwo_shift,
                          wo_magic, wo_shift, n0, nc, vec, f);
}

extern "C" __global__ void im2col_bn_relu_bf16(bf16* col, const bf16* inp, int n, int h, int w,
                                               int k, int stride, int pad, int wo, int hwo,
                                               unsigned hwo_magic, unsigned hwo_shift,
                                               unsigned wo_magic, unsigned wo_shift, int n0,
                                               int nc, int vec, const float* mean,
                                               const float* invstd, const float* gamma,
                                               const float* beta, int start, int channels,
                                               float scale) {
    BnFold f{mean, invstd, gamma, beta, start, channels, scale};
    im2col_t<bf16, true>(col, inp, n, h, w, k, stride, pad, wo, hwo, hwo_magic, hwo_shift,
                         wo_magic, wo_shift, n0, nc, vec, f);
}

extern "C" __global__ void col2im(float* d_inp, const float* col, int n, int h, int w, int k,
                                  int stride, int pad, int ho, int wo, unsigned hw_magic,
                                  unsigned hw_shift, unsigned w_magic, unsigned w_shift, int n0,
                                  int nc, int accumulate, int vec) {
    col2im_t(d_inp, col, n, h, w, k, stride, pad, ho, wo, hw_magic, hw_shift, w_magic, w_shift,
             n0, nc, accumulate, vec);
}

extern "C" __global__ void col2im_bf16(bf16* d_inp, const bf16* col, int n, int h, int w, int k,
                                       int stride, int pad, int ho, int wo, unsigned hw_magic,
                                       unsigned hw_shift, unsigned w_magic, unsigned w_shift,
                                       int n0, int nc, int accumulate, int vec) {
    col2im_t(d_inp, col, n, h, w, k, stride, pad, ho, wo, hw_magic, hw_shift, w_magic, w_shift,
             n0, nc, accumulate, vec);
}

extern "C" __global__ void weight_slice(float* copy, const float* w, int cout, int cin, int kk,
                                        int out_start, int ow, int in_start, int iw) {
    weight_slice_t(copy, w, cout, cin, kk, out_start, ow, in_start, iw);
}

// The bf16 copy a bf16 program's GEMMs read: each f32 weight rounded once (`copy_weight`).
extern "C" __global__ void weight_slice_bf16(bf16* copy, const float* w, int cout, int cin,
                                             int kk, int out_start, int ow, int in_start,
                                             int iw) {
    weight_slice_t(copy, w, cout, cin, kk, out_start, ow, in_start, iw);
}

// copy = the transpose of the weight's slice with its taps reversed, [iw, ow*kk]:
// copy[j][r*kk + t] = w[out channel r][in channel j][kk-1-t], channels in slice order and
// wrapping (`weight_at`), each f32 weight rounded once. The weight of an input gradient
// computed as a convolution of dY (stride 1, "same" padding). Mirrors ops/conv2d/cpu.rs
// `copy_weight_flipped`.
template <typename T>
__device__ __forceinline__ void weight_flip_t(T* copy, const float* w, int cout, int cin, int kk,
                                              int out_start, int ow, int in_start, int iw) {
    int ldc = ow * kk, total = iw * ldc;
    for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
        int j = e / ldc, c = e - j * ldc;
        int r = c / kk, tap = c - r * kk;
        copy[e] = narrow<T>(weight_at(w, cout, cin, kk, out_start, r, in_start, j, kk - 1 - tap));
    }
}

extern "C" __global__ void weight_flip(float* copy, const float* w, int cout, int cin, int kk,
                                       int out_start, int ow, int in_start, int iw) {
    weight_flip_t(copy, w, cout, cin, kk, out_start, ow, in_start, iw);
}

extern "C" __global__ void weight_flip_bf16(bf16* copy, const float* w, int cout, int cin, int kk,
                                            int out_start, int ow, int in_start, int iw) {
    weight_flip_t(copy, w, cout, cin, kk, out_start, ow, in_start, iw);
}
