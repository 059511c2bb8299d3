// The folded im2col of src/ops/conv2d/conv2d.cu (`im2col_bn_relu`, `_bf16`) runs on the host
// beside the two kernels it replaces: batchnorm.cu's `bn_relu_apply` (one launch per run of the
// slice, as src/ops/batchnorm/cuda.rs does) then `im2col`. A few definitions stand in for CUDA's
// built-ins and every thread of a grid runs in turn (the kernels are grid-stride loops). The
// columns must agree to the bit, and with im2col's definition, for f32 and bf16, every vector
// width the host may pick, 3x3 and 1x1 layers of stride 1 and 2, a full, a sliced and a
// wrapping slice, and a chunk of images.
// Built with -ffp-contract=off, as the kernels are compiled with --fmad=false.
// tests/it/fold_kernels.rs compiles and runs this with the host's C++ compiler.
#include <cmath>
#include <random>
#include <vector>

#include "cuda_host.h"
#include "../../src/gpu/common.cu"
#include "../../src/ops/batchnorm/batchnorm.cu"
#include "../../src/ops/conv2d/conv2d.cu"

// src/gpu/launch.rs's FastDiv: x / d as (umulhi(x, magic) + x) >> shift.
struct FastDiv {
    unsigned magic, shift;
    explicit FastDiv(unsigned long long d) {
        shift = 64 - (d == 1 ? 64 : __builtin_clzll(d - 1));
        magic = (unsigned)((1ULL << 32) * ((1ULL << shift) - d) / d + 1);
    }
};

struct Case {
    int n, h, w, k, stride, pad, channels, start, width, n0, nc;
};

void bn_apply(float* o, const float* x, const float* mu, const float* is, const float* g,
              const float* b, i64 m, float s) {
    bn_relu_apply(o, x, mu, is, g, b, m, s);
}
void bn_apply(bf16* o, const bf16* x, const float* mu, const float* is, const float* g,
              const float* b, i64 m, float s) {
    bn_relu_apply_bf16(o, x, mu, is, g, b, m, s);
}
template <class... A>
void gather(float* col, const float* x, A... a) {
    im2col(col, x, a...);
}
template <class... A>
void gather(bf16* col, const bf16* x, A... a) {
    im2col_bf16(col, x, a...);
}
template <class... A>
void gather_folded(float* col, const float* x, A... a) {
    im2col_bn_relu(col, x, a...);
}
template <class... A>
void gather_folded(bf16* col, const bf16* x, A... a) {
    im2col_bn_relu_bf16(col, x, a...);
}

// Returns the number of mismatching columns (0 when the two paths agree to the bit).
template <class T>
long check(const Case& c, int vec, std::mt19937& rng) {
    std::normal_distribution<float> normal;
    const int hw = c.h * c.w, ho = (c.h + 2 * c.pad - c.k) / c.stride + 1;
    const int wo = (c.w + 2 * c.pad - c.k) / c.stride + 1, hwo = ho * wo, w_ = c.width;
    const i64 m = (i64)c.n * hw;
    std::vector<T> x(w_ * m), applied(w_ * m);
    for (auto& v : x) v = narrow<T>(normal(rng));
    std::vector<float> stats(2 * w_), gamma(c.channels), beta(c.channels);
    for (int j = 0; j < w_; ++j) stats[j] = normal(rng), stats[w_ + j] = 0.5f + std::fabs(normal(rng));
    for (auto& v : gamma) v = normal(rng);
    for (auto& v : beta) v = normal(rng);
    const float scale = (float)((double)c.channels / w_);
    // bn_relu_apply over each run of the slice: buffer channels [at, at + len) are layer
    // channels [channel, channel + len).
    for (int at = 0; at < w_;) {
        int channel = (c.start + at) % c.channels, len = std::min(w_ - at, c.channels - channel);
        launch(m, len, [&] {
            bn_apply(applied.data() + at * m, x.data() + at * m, stats.data() + at,
                     stats.data() + w_ + at, gamma.data() + channel, beta.data() + channel, m, scale);
        });
        at += len;
    }
    const long cols = (long)c.nc * hwo, len = (long)w_ * c.k * c.k * cols;
    std::vector<T> want(len), got(len);
    FastDiv by_hwo(hwo), by_wo(wo);
    launch(cols / vec, w_, [&] {
        gather(want.data(), applied.data(), c.n, c.h, c.w, c.k, c.stride, c.pad, wo, hwo, by_hwo.magic,
               by_hwo.shift, by_wo.magic, by_wo.shift, c.n0, c.nc, vec);
    });
    launch(cols / vec, w_, [&] {
        gather_folded(got.data(), x.data(), c.n, c.h, c.w, c.k, c.stride, c.pad, wo, hwo, by_hwo.magic,
                      by_hwo.shift, by_wo.magic, by_wo.shift, c.n0, c.nc, vec, stats.data(),
                      stats.data() + w_, gamma.data(), beta.data(), c.start, c.channels, scale);
    });
    // Both against im2col's definition over the applied values.
    long bad = 0, zero = 0;
    for (int ci = 0; ci < w_; ++ci)
        for (int kh = 0; kh < c.k; ++kh)
            for (int kw = 0; kw < c.k; ++kw)
                for (long col = 0; col < cols; ++col) {
                    int i = col / hwo, oh = (col % hwo) / wo, ow = col % wo;
                    int ih = oh * c.stride - c.pad + kh, iw = ow * c.stride - c.pad + kw;
                    T r = narrow<T>(0.0f);
                    if (ih >= 0 && ih < c.h && iw >= 0 && iw < c.w)
                        r = applied[((i64)ci * c.n + c.n0 + i) * hw + ih * c.w + iw];
                    long j = ((long)(ci * c.k + kh) * c.k + kw) * cols + col;
                    bad += std::memcmp(&r, &want[j], sizeof(T)) != 0;
                }
    for (long j = 0; j < len; ++j) {
        bad += std::memcmp(&want[j], &got[j], sizeof(T)) != 0;
        zero += widen(got[j]) == 0.0f;
    }
    if (zero == 0 || zero == len) ++bad;  // ReLU must cut some values and keep others
    return bad;
}

int main() {
    std::mt19937 rng(5);
    // n, h, w, k, stride, pad, channels, start, width, n0, nc
    Case cases[] = {{3, 8, 8, 3, 1, 1, 6, 0, 6, 0, 3},   {3, 8, 8, 3, 1, 1, 6, 4, 4, 1, 2},
                    {3, 8, 12, 3, 2, 1, 6, 2, 3, 0, 3},  {2, 8, 8, 1, 2, 0, 6, 5, 4, 1, 1},
                    {3, 7, 7, 3, 1, 1, 5, 3, 5, 0, 2}};
    int failures = 0;
    for (const Case& c : cases)
        for (int vec : {1, 2, 4}) {
            int wo = (c.w + 2 * c.pad - c.k) / c.stride + 1;
            if (wo % vec) continue;
            long f32 = check<float>(c, vec, rng), b16 = check<bf16>(c, vec, rng);
            std::printf("n %d %dx%d k %d stride %d slice %d+%d of %d images %d+%d vec %d: %s\n", c.n, c.h,
                        c.w, c.k, c.stride, c.start, c.width, c.channels, c.n0, c.nc, vec,
                        f32 == 0 && b16 == 0 ? "ok" : "MISMATCH");
            failures += f32 != 0 || b16 != 0;
        }
    std::printf(failures ? "%d failed\n" : "all passed\n", failures);
    return failures != 0;
}
