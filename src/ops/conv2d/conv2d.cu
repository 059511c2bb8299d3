// im2col / col2im for convolutions over channel-major (C, N, H, W) activations, one chunk of
// images at a time. The column matrix of a chunk is row-major [c*k*k, nc*ho*wo]: row
// (ci, kh, kw), column (image, oh, ow), exactly what the GEMM `W[cout, c*k*k] * col` wants.

// col = columns of images [n0, n0 + nc) of `inp` (c channels of n images, h x w).
extern "C" __global__ void im2col(float* col, const float* inp, int c, int n, int h, int w,
                                  int k, int stride, int pad, int ho, int wo, int n0, int nc) {
    i64 cols = (i64)nc * ho * wo;
    i64 total = (i64)c * k * k * cols;
    for (i64 idx = global_id(); idx < total; idx += global_stride()) {
        i64 row = idx / cols;
        i64 cx = idx - row * cols;
        int ci = (int)(row / (k * k));
        int r = (int)(row - (i64)ci * k * k);
        int kh = r / k, kw = r - (r / k) * k;
        int i = (int)(cx / ((i64)ho * wo));
        int p = (int)(cx - (i64)i * ho * wo);
        int oh = p / wo, ow = p - (p / wo) * wo;
        int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
        float v = 0.0f;
        if (ih >= 0 && ih < h && iw >= 0 && iw < w)
            v = inp[(((i64)ci * n + n0 + i) * h + ih) * w + iw];
        col[idx] = v;
    }
}

// d_inp (+)= col2im(col) for images [n0, n0 + nc): every input pixel gathers the column
// entries that read it (no atomics, deterministic). Pixels no window reads get 0.
extern "C" __global__ void col2im(float* d_inp, const float* col, int c, int n, int h, int w,
                                  int k, int stride, int pad, int ho, int wo, int n0, int nc,
                                  int accumulate) {
    i64 cols = (i64)nc * ho * wo;
    i64 total = (i64)c * nc * h * w;
    for (i64 idx = global_id(); idx < total; idx += global_stride()) {
        int iw = (int)(idx % w);
        i64 t = idx / w;
        int ih = (int)(t % h);
        t /= h;
        int i = (int)(t % nc);
        int ci = (int)(t / nc);
        float s = 0.0f;
        for (int kh = 0; kh < k; ++kh) {
            int y = ih + pad - kh;
            if (y < 0 || y % stride != 0) continue;
            int oh = y / stride;
            if (oh >= ho) continue;
            for (int kw = 0; kw < k; ++kw) {
                int x = iw + pad - kw;
                if (x < 0 || x % stride != 0) continue;
                int ow = x / stride;
                if (ow >= wo) continue;
                i64 row = ((i64)ci * k + kh) * k + kw;
                s += col[row * cols + ((i64)i * ho + oh) * wo + ow];
            }
        }
        float* dst = d_inp + (((i64)ci * n + n0 + i) * h + ih) * w + iw;
        *dst = accumulate ? *dst + s : s;
    }
}
