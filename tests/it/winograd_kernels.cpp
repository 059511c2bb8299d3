// The kernels of src/ops/conv2d/winograd.cu run on the host: a few definitions stand in for
// CUDA's built-ins, every thread of a grid runs in turn (the kernels are grid-stride loops with
// no synchronisation, so any order is a valid schedule), and the 16 products are plain loops.
// The commands follow winograd_cmds.rs (forward; backward with both gradients), on sliced and
// wrapping channel ranges, odd and even images and several chunkings, against a direct f64
// convolution. tests/it/winograd_kernels.rs compiles and runs this with the host's C++ compiler.
#include <cmath>
#include <random>
#include <vector>

#include "cuda_host.h"

typedef long long i64;
inline i64 global_id() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
inline i64 global_stride() { return (i64)gridDim.x * blockDim.x; }
#include "winograd.cu"

// Row-major C[m, n] (+)= op(A)[m, k] op(B)[k, n]: one product of a batch.
void product(long m, long n, long k, const float* a, long lda, bool ta, const float* b, long ldb,
             bool tb, float* c, long ldc, bool accumulate) {
    for (long i = 0; i < m; ++i)
        for (long j = 0; j < n; ++j) {
            double s = 0;
            for (long l = 0; l < k; ++l)
                s += (double)(ta ? a[l * lda + i] : a[i * lda + l]) * (tb ? b[j * ldb + l] : b[l * ldb + j]);
            c[i * ldc + j] = accumulate ? c[i * ldc + j] + (float)s : (float)s;
        }
}

// ||got - want|| / ||want||.
template <class T>
double rel_err(const std::vector<float>& got, const std::vector<T>& want, float offset) {
    double d = 0, s = 0;
    for (size_t j = 0; j < got.size(); ++j) {
        double e = got[j] - offset - (double)want[j];
        d += e * e;
        s += (double)want[j] * want[j];
    }
    return std::sqrt(d / s);
}

struct Case {
    int n, cin, cout, h, w, o0, ow, i0, iw, chunk;
};

int main() {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    const long XI = 16;
    const double tol = 1e-5;
    int failures = 0;
    // Full, sliced, wrapping on either side or both; a 1x1 image; one chunk or several.
    Case cases[] = {{3, 5, 7, 7, 6, 0, 7, 0, 5, 2}, {3, 5, 7, 8, 8, 5, 4, 4, 3, 1}, {2, 6, 4, 1, 1, 3, 3, 2, 5, 0},
                    {3, 5, 7, 5, 9, 6, 3, 3, 4, 3}, {4, 8, 8, 4, 4, 0, 8, 7, 8, 3}};
    for (Case c : cases) {
        const int n = c.n, h = c.h, w = c.w, ow = c.ow, iw = c.iw, hw = h * w;
        const int th = (h + 1) / 2, tw = (w + 1) / 2;
        const int chunk = c.chunk == 0 || c.chunk >= n ? n : c.chunk;
        std::vector<float> weight(c.cout * c.cin * 9), x(iw * n * hw), dy(ow * n * hw);
        for (auto& v : weight) v = 0.3f * normal(rng);
        for (auto& v : x) v = normal(rng);
        for (auto& v : dy) v = normal(rng);
        // Tap (ky, kx) of slice positions (o, i).
        auto tap = [&](int o, int i, int ky, int kx) {
            int co = (c.o0 + o) % c.cout, ci = (c.i0 + i) % c.cin;
            return weight[(co * c.cin + ci) * 9 + ky * 3 + kx];
        };
        std::vector<double> y_want(ow * n * hw), dx_want(iw * n * hw), dw_want(ow * iw * 9);
        for (int o = 0; o < ow; ++o)
            for (int i = 0; i < iw; ++i)
                for (int b = 0; b < n; ++b)
                    for (int oy = 0; oy < h; ++oy)
                        for (int ox = 0; ox < w; ++ox)
                            for (int ky = 0; ky < 3; ++ky)
                                for (int kx = 0; kx < 3; ++kx) {
                                    int iy = oy + ky - 1, ix = ox + kx - 1;
                                    if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                                    long at_in = ((long)(i * n + b) * h + iy) * w + ix;
                                    long at_out = ((long)(o * n + b) * h + oy) * w + ox;
                                    y_want[at_out] += tap(o, i, ky, kx) * (double)x[at_in];
                                    dx_want[at_in] += tap(o, i, ky, kx) * (double)dy[at_out];
                                    dw_want[(o * iw + i) * 9 + ky * 3 + kx] += (double)dy[at_out] * x[at_in];
                                }
        const long tmax = (long)chunk * th * tw;
        std::vector<float> workspace(2 * XI * c.cout * iw + XI * tmax * (iw + c.cout), NAN);
        float* ws = workspace.data();
        const float* wt = weight.data();

        // Forward, accumulating onto ones: U at 0, V after it, M after V.
        std::vector<float> y(ow * n * hw, 1.0f);
        const long v = XI * ow * iw;
        launch(ow * iw, 1, [&] { winograd_weight(ws, wt, c.cout, c.cin, c.o0, ow, c.i0, iw, 0); });
        for (int n0 = 0; n0 < n; n0 += chunk) {
            int nb = std::min(chunk, n - n0);
            long t = (long)nb * th * tw, m = v + XI * iw * t;
            launch(t, iw, [&] { winograd_input(ws + v, x.data(), iw, n, h, w, th, tw, n0, nb); });
            for (long xi = 0; xi < XI; ++xi)
                product(ow, t, iw, ws + xi * ow * iw, iw, false, ws + v + xi * iw * t, t, false, ws + m + xi * ow * t, t, false);
            launch(t, ow, [&] { winograd_output(y.data(), ws + m, ow, n, h, w, th, tw, n0, nb, 1); });
        }
        double ey = rel_err(y, y_want, 1.0f);

        // Backward: flipped U' at 0, dU after it, V after dU, G after V.
        std::vector<float> dx(iw * n * hw, NAN), dw(ow * iw * 9, NAN);
        const long du = XI * ow * iw, vb = 2 * XI * ow * iw;
        launch(ow * iw, 1, [&] { winograd_weight(ws, wt, c.cout, c.cin, c.o0, ow, c.i0, iw, 1); });
        for (int n0 = 0; n0 < n; n0 += chunk) {
            int nb = std::min(chunk, n - n0);
            long t = (long)nb * th * tw, g = vb + XI * iw * t;
            launch(t, iw, [&] { winograd_input(ws + vb, x.data(), iw, n, h, w, th, tw, n0, nb); });
            launch(t, ow, [&] { winograd_grad(ws + g, dy.data(), ow, n, h, w, th, tw, n0, nb); });
            for (long xi = 0; xi < XI; ++xi)
                product(ow, iw, t, ws + g + xi * ow * t, t, false, ws + vb + xi * iw * t, t, true, ws + du + xi * ow * iw, iw, n0 > 0);
            launch(t, ow, [&] { winograd_input(ws + g, dy.data(), ow, n, h, w, th, tw, n0, nb); });
            for (long xi = 0; xi < XI; ++xi)
                product(iw, t, ow, ws + xi * iw * ow, ow, false, ws + g + xi * ow * t, t, false, ws + vb + xi * iw * t, t, false);
            launch(t, iw, [&] { winograd_output(dx.data(), ws + vb, iw, n, h, w, th, tw, n0, nb, 0); });
        }
        launch(ow * iw, 1, [&] { winograd_weight_grad(dw.data(), ws + du, ow, iw, 1); });
        double edx = rel_err(dx, dx_want, 0.0f), edw = rel_err(dw, dw_want, 0.0f);

        bool ok = ey < tol && edx < tol && edw < tol;
        failures += !ok;
        std::printf("n %d, %dx%d, out %d+%d of %d, in %d+%d of %d, chunk %d: y %.2e dx %.2e dw %.2e %s\n", n, h, w, c.o0,
                    ow, c.cout, c.i0, iw, c.cin, chunk, ey, edx, edw, ok ? "ok" : "FAIL");
    }
    // No image: the weight gradient is zero whatever dU holds.
    std::vector<float> du(16 * 6, NAN), dw(6 * 9, NAN);
    launch(6, 1, [&] { winograd_weight_grad(dw.data(), du.data(), 2, 3, 0); });
    for (float g : dw) failures += g != 0.0f;
    std::printf("%s\n", failures ? "FAILED" : "all passed");
    return failures != 0;
}
