// Winograd F(2x2, 3x3) on the GPU (`--winograd`, fp32 storage only): the transforms around the
// 16 batched products that `winograd_cmds.rs` walks and `cuda.rs` queues. The arithmetic is the
// CPU's (`winograd.rs`): with xi = 4 * row + column of a 4x4 tile,
//   U = G g G^T (weight), V = B^T d B (input tile), Y = A^T M A (output tile),
//   A dY A^T (a 2x2 gradient tile, the adjoint of Y), G^T dU G (the adjoint of U).
// Transformed buffers are [xi][channel][t] (t = image * th * tw + tile row * tw + tile column),
// so each of the 16 products reads one contiguous row-major matrix, and a thread that owns one
// (channel, tile) writes its 16 values 16 planes apart, coalesced along t. Weights are OIHW f32
// (`cout x cin x 3 x 3`); a slice's channel j is (start + j) mod channels.
//
// Every kernel but the weight ones runs on a grid (tiles, channels): blockIdx.y is the channel.

// Layer channel of slice position j (start < channels, j < channels).
__device__ __forceinline__ int wrap_channel(int start, int j, int channels) {
    int c = start + j;
    return c >= channels ? c - channels : c;
}

// The tiles one block row walks: those of channel blockIdx.y over images [n0, n0 + nb) of a
// (channels, n, h, w) tensor, and where that channel's row starts in a [xi][channel][t] buffer.
struct TileRow {
    int count;     // tiles of the chunk, nb * th * tw
    int tiles;     // tiles of one image, th * tw
    int tw;
    i64 image0;    // offset of the channel's first image of the chunk in the tensor
    i64 row;       // offset of the channel's row (xi = 0) in the transformed buffer
    i64 stride;    // between consecutive xi planes of the transformed buffer
};

__device__ __forceinline__ TileRow tile_row(int channels, int n, int h, int w, int th, int tw,
                                            int n0, int nb) {
    TileRow g;
    int c = blockIdx.y;
    g.tiles = th * tw;
    g.count = nb * g.tiles;
    g.tw = tw;
    g.image0 = ((i64)c * n + n0) * h * w;
    g.row = (i64)c * g.count;
    g.stride = (i64)channels * g.count;
    return g;
}

// Image (within the chunk), tile row and tile column of tile t.
__device__ __forceinline__ void locate(const TileRow& g, int t, int* img, int* ty, int* tx) {
    *img = t / g.tiles;
    int r = t - *img * g.tiles;
    *ty = r / g.tw;
    *tx = r - *ty * g.tw;
}

// U of the slice's (o, i) kernels: [xi][o][i], or, `flipped`, the kernel rotated by 180 degrees
// and stored [xi][i][o] (the weight of the input gradient, a convolution of dY).
extern "C" __global__ void winograd_weight(float* __restrict__ u, const float* __restrict__ w,
                                           int cout, int cin, int o0, int ow, int i0, int iw,
                                           int flipped) {
    int total = ow * iw;
    i64 plane = (i64)total;
    for (int x = (int)global_id(); x < total; x += (int)global_stride()) {
        int o = x / iw, i = x - o * iw;
        int co = wrap_channel(o0, o, cout), ci = wrap_channel(i0, i, cin);
        const float* g = w + ((i64)co * cin + ci) * 9;
        float k[9];
#pragma unroll
        for (int j = 0; j < 9; ++j) k[j] = flipped ? g[8 - j] : g[j];
        // G g: 4 rows of 3.
        float gg[4][3];
#pragma unroll
        for (int c = 0; c < 3; ++c) {
            float a = k[c], b = k[3 + c], d = k[6 + c];
            gg[0][c] = a;
            gg[1][c] = 0.5f * (a + b + d);
            gg[2][c] = 0.5f * (a - b + d);
            gg[3][c] = d;
        }
        float* dst = u + (flipped ? (i64)i * ow + o : (i64)o * iw + i);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            float a = gg[r][0], b = gg[r][1], d = gg[r][2];
            dst[(4 * r + 0) * plane] = a;
            dst[(4 * r + 1) * plane] = 0.5f * (a + b + d);
            dst[(4 * r + 2) * plane] = 0.5f * (a - b + d);
            dst[(4 * r + 3) * plane] = d;
        }
    }
}

// B^T d B of every 4x4 input tile of images [n0, n0 + nb) of channel blockIdx.y of `src`
// ((channels, n, h, w); the tile of (ty, tx) starts at (2ty - 1, 2tx - 1), zero outside).
extern "C" __global__ void winograd_input(float* __restrict__ v, const float* __restrict__ src,
                                          int channels, int n, int h, int w, int th, int tw,
                                          int n0, int nb) {
    TileRow g = tile_row(channels, n, h, w, th, tw, n0, nb);
    i64 stride = g.stride;
    float* out = v + g.row;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < g.count; t += gridDim.x * blockDim.x) {
        int img, ty, tx;
        locate(g, t, &img, &ty, &tx);
        const float* at = src + g.image0 + (i64)img * h * w;
        int y0 = 2 * ty - 1, x0 = 2 * tx - 1;
        float d[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            int y = y0 + a;
            bool row_in = (unsigned)y < (unsigned)h;
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                int x = x0 + b;
                d[a][b] = row_in && (unsigned)x < (unsigned)w ? at[y * w + x] : 0.0f;
            }
        }
        // B^T d (rows), then (B^T d) B (columns).
        float e[4][4];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            e[0][b] = d[0][b] - d[2][b];
            e[1][b] = d[1][b] + d[2][b];
            e[2][b] = d[2][b] - d[1][b];
            e[3][b] = d[1][b] - d[3][b];
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            out[(4 * a + 0) * stride + t] = e[a][0] - e[a][2];
            out[(4 * a + 1) * stride + t] = e[a][1] + e[a][2];
            out[(4 * a + 2) * stride + t] = e[a][2] - e[a][1];
            out[(4 * a + 3) * stride + t] = e[a][1] - e[a][3];
        }
    }
}

// A dY A^T of every 2x2 tile of `dy` ((channels, n, h, w)), images [n0, n0 + nb), channel
// blockIdx.y; values past the edge of an odd image count as 0.
extern "C" __global__ void winograd_grad(float* __restrict__ v, const float* __restrict__ dy,
                                         int channels, int n, int h, int w, int th, int tw,
                                         int n0, int nb) {
    TileRow g = tile_row(channels, n, h, w, th, tw, n0, nb);
    i64 stride = g.stride;
    float* out = v + g.row;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < g.count; t += gridDim.x * blockDim.x) {
        int img, ty, tx;
        locate(g, t, &img, &ty, &tx);
        const float* at = dy + g.image0 + (i64)img * h * w;
        float s[2][2];
#pragma unroll
        for (int a = 0; a < 2; ++a) {
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                int y = 2 * ty + a, x = 2 * tx + b;
                s[a][b] = y < h && x < w ? at[y * w + x] : 0.0f;
            }
        }
        // A s (rows: 4 of 2), then (A s) A^T (columns).
        float e[4][2];
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            e[0][b] = s[0][b];
            e[1][b] = s[0][b] + s[1][b];
            e[2][b] = s[0][b] - s[1][b];
            e[3][b] = -s[1][b];
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            out[(4 * a + 0) * stride + t] = e[a][0];
            out[(4 * a + 1) * stride + t] = e[a][0] + e[a][1];
            out[(4 * a + 2) * stride + t] = e[a][0] - e[a][1];
            out[(4 * a + 3) * stride + t] = -e[a][1];
        }
    }
}

// dst images [n0, n0 + nb) of channel blockIdx.y (+)= A^T M A of its tiles: M is
// [xi][channels][t]; `dst` is (channels, n, h, w); outputs past the edge of an odd image are
// dropped.
extern "C" __global__ void winograd_output(float* __restrict__ dst, const float* __restrict__ m,
                                           int channels, int n, int h, int w, int th, int tw,
                                           int n0, int nb, int accumulate) {
    TileRow g = tile_row(channels, n, h, w, th, tw, n0, nb);
    i64 stride = g.stride;
    const float* in = m + g.row;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < g.count; t += gridDim.x * blockDim.x) {
        int img, ty, tx;
        locate(g, t, &img, &ty, &tx);
        float q[16];
#pragma unroll
        for (int xi = 0; xi < 16; ++xi) q[xi] = in[xi * stride + t];
        // A^T M (2 rows of 4), then (A^T M) A.
        float s[2][4];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            s[0][b] = q[b] + q[4 + b] + q[8 + b];
            s[1][b] = q[4 + b] - q[8 + b] - q[12 + b];
        }
        float* at = dst + g.image0 + (i64)img * h * w;
#pragma unroll
        for (int a = 0; a < 2; ++a) {
            int y = 2 * ty + a;
            if (y >= h) continue;
            float y0 = s[a][0] + s[a][1] + s[a][2];
            float y1 = s[a][1] - s[a][2] - s[a][3];
            int x = 2 * tx;
            float* row = at + y * w;
            row[x] = accumulate ? row[x] + y0 : y0;
            if (x + 1 < w) row[x + 1] = accumulate ? row[x + 1] + y1 : y1;
        }
    }
}

// The weight gradient of the slice, [o][i][3][3] (the slice's block, overwritten): G^T dU G of
// dU ([xi][o][i], summed over every tile by the products); zero when no image ran (`any` 0).
extern "C" __global__ void winograd_weight_grad(float* __restrict__ dw,
                                                const float* __restrict__ du, int ow, int iw,
                                                int any) {
    int total = ow * iw;
    i64 plane = (i64)total;
    for (int x = (int)global_id(); x < total; x += (int)global_stride()) {
        float q[16];
#pragma unroll
        for (int xi = 0; xi < 16; ++xi) q[xi] = any ? du[xi * plane + x] : 0.0f;
        // G^T dU (3 rows of 4), then (G^T dU) G.
        float r[3][4];
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            float a = q[b], bb = q[4 + b], c = q[8 + b], d = q[12 + b];
            r[0][b] = a + 0.5f * (bb + c);
            r[1][b] = 0.5f * (bb - c);
            r[2][b] = 0.5f * (bb + c) + d;
        }
        float* g = dw + (i64)x * 9;
#pragma unroll
        for (int y = 0; y < 3; ++y) {
            float a = r[y][0], b = r[y][1], c = r[y][2], d = r[y][3];
            g[3 * y + 0] = a + 0.5f * (b + c);
            g[3 * y + 1] = 0.5f * (b - c);
            g[3 * y + 2] = 0.5f * (b + c) + d;
        }
    }
}
