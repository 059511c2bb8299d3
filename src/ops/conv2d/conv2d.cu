// im2col / col2im for convolutions over channel-major (C, N, H, W) activations, one chunk of
// images at a time. The column matrix of a chunk is row-major [c*k*k, nc*ho*wo]: row
// (ci, kh, kw), column (image, oh, ow), exactly what the GEMM `W[cout, c*k*k] * col` wants.
// Both are memory-bound: a column index is split with `div_by` (no divisions), and a row's
// (ci, kh, kw) is fixed per block (grid y), so every thread does one load and one store.

// col = columns of images [n0, n0 + nc) of `inp` (n images, h x w). Grid: x over the row's
// nc*ho*wo columns (fewer than 2^31), y = row. `hwo` divides column indices into images.
extern "C" __global__ void im2col(float* col, const float* inp, int n, int h, int w, int k,
                                  int stride, int pad, int wo, int hwo, unsigned hwo_magic,
                                  unsigned hwo_shift, unsigned wo_magic, unsigned wo_shift,
                                  int n0, int nc) {
    int row = blockIdx.y;
    int ci = row / (k * k), r = row - ci * k * k;
    int kh = r / k, kw = r - (r / k) * k;
    int cols = nc * hwo;
    const float* src = inp + ((i64)ci * n + n0) * h * w;
    float* dst = col + (i64)row * cols;
    for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < cols; x += gridDim.x * blockDim.x) {
        int i = (int)div_by(x, hwo_magic, hwo_shift);
        int p = x - i * hwo;
        int oh = (int)div_by(p, wo_magic, wo_shift);
        int ow = p - oh * wo;
        int ih = oh * stride - pad + kh, iw = ow * stride - pad + kw;
        float v = 0.0f;
        if ((unsigned)ih < (unsigned)h && (unsigned)iw < (unsigned)w)
            v = src[((i64)i * h + ih) * w + iw];
        dst[x] = v;
    }
}

// d_inp (+)= col2im(col) for images [n0, n0 + nc): every input pixel gathers the column
// entries that read it, kh then kw (no atomics, deterministic). Pixels no window reads get 0.
// Grid: x over the channel's nc*h*w pixels, y = channel.
extern "C" __global__ void col2im(float* d_inp, const float* col, int n, int h, int w, int k,
                                  int stride, int pad, int ho, int wo, unsigned hw_magic,
                                  unsigned hw_shift, unsigned w_magic, unsigned w_shift, int n0,
                                  int nc, int accumulate) {
    int ci = blockIdx.y;
    int hw = h * w, hwo = ho * wo, cols = nc * hwo, len = nc * hw;
    const float* rows = col + (i64)ci * k * k * cols;
    float* dst = d_inp + ((i64)ci * n + n0) * hw;
    for (int x = blockIdx.x * blockDim.x + threadIdx.x; x < len; x += gridDim.x * blockDim.x) {
        int i = (int)div_by(x, hw_magic, hw_shift);
        int q = x - i * hw;
        int ih = (int)div_by(q, w_magic, w_shift);
        int iw = q - ih * w;
        const float* img = rows + (i64)i * hwo;
        float s = 0.0f;
        for (int kh = 0; kh < k; ++kh) {
            int y = ih + pad - kh;
            if (y < 0 || (stride > 1 && y % stride != 0)) continue;
            int oh = stride == 1 ? y : y / stride;
            if (oh >= ho) continue;
            for (int kw = 0; kw < k; ++kw) {
                int xx = iw + pad - kw;
                if (xx < 0 || (stride > 1 && xx % stride != 0)) continue;
                int ow = stride == 1 ? xx : xx / stride;
                if (ow >= wo) continue;
                s += img[(i64)(kh * k + kw) * cols + oh * wo + ow];
            }
        }
        dst[x] = accumulate ? dst[x] + s : s;
    }
}
