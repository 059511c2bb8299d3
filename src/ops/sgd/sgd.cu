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

// Thread `t` of `threads`' share of one parameter's update (len < 2^31); the gradient is read
// through the slice map: mode 0 full; 1 rows (param [channels, group], gradient [width, group]
// in slice order); 2 columns (param [rows, channels*group], gradient [rows, width*group]).
// Divisions by `group` and by `row_len = channels*group` use the host's (magic, shift) pairs
// (`div_by`); a full gradient whose rows are aligned moves 4 values a load. A non-null `copy`
// receives the updated weight rounded to bf16, element for element.
__device__ __forceinline__ void sgd_tensor(float* param, float* buf, const float* grad, bf16* copy,
                                           int len, int mode, int start, int width, int channels,
                                           int group, unsigned group_magic, unsigned group_shift,
                                           int row_len, unsigned row_magic, unsigned row_shift,
                                           float lr, float momentum, float weight_decay,
                                           int nesterov, int t, int threads) {
    if (mode == 0 && by_fours<float>(len, param, buf, grad)) {
        for (int i = 4 * t; i < len; i += 4 * threads) {
            Lanes<float, 4> p = load_lanes<float, 4>(param + i), b = load_lanes<float, 4>(buf + i);
            Lanes<float, 4> g = load_lanes<float, 4>(grad + i);
#pragma unroll
            for (int j = 0; j < 4; ++j)
                p.v[j] = sgd_step(p.v[j], &b.v[j], g.v[j], lr, momentum, weight_decay, nesterov);
            store_lanes(buf + i, b);
            store_lanes(param + i, p);
            if (copy)
                for (int j = 0; j < 4; ++j) copy[i + j] = narrow<bf16>(p.v[j]);
        }
        return;
    }
    for (int idx = t; idx < len; idx += threads) {
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
        float p = sgd_step(param[idx], &buf[idx], g0, lr, momentum, weight_decay, nesterov);
        param[idx] = p;
        if (copy) copy[idx] = narrow<bf16>(p);
    }
}

// One parameter's update, a grid-stride loop over it.
extern "C" __global__ void sgd(float* param, float* buf, const float* grad, int len, int mode,
                               int start, int width, int channels, int group,
                               unsigned group_magic, unsigned group_shift, int row_len,
                               unsigned row_magic, unsigned row_shift, float lr, float momentum,
                               float weight_decay, int nesterov) {
    sgd_tensor(param, buf, grad, nullptr, len, mode, start, width, channels, group, group_magic,
               group_shift, row_len, row_magic, row_shift, lr, momentum, weight_decay, nesterov,
               (int)global_id(), (int)global_stride());
}

// One tensor of a multi-tensor update, as `ops::sgd::cuda::Entry` lays it out (80 bytes): what
// does not change between steps. `block` names the slice start in `SgdStepArgs::starts` (-1: the
// gradient covers every channel, start 0).
struct SgdEntry {
    float* param;
    float* buf;
    const float* grad;
    bf16* copy;
    int len, mode, block, width;
    int channels, group, row_len;
    unsigned group_magic, group_shift, row_magic, row_shift, unused;
};

// What changes between steps, passed by value: the optimizer settings and every block's start.
#define SGD_MAX_BLOCKS 64
struct SgdStepArgs {
    float lr, momentum, weight_decay;
    int nesterov;
    int starts[SGD_MAX_BLOCKS];
};

// Every tensor of `table` in one launch: block row y updates entry y, its blocks along x
// sharing it in a grid-stride loop (a short tensor leaves most of its row idle).
extern "C" __global__ void sgd_multi(const SgdEntry* table, SgdStepArgs a) {
    const SgdEntry& e = table[blockIdx.y];
    int start = e.block < 0 ? 0 : a.starts[e.block];
    sgd_tensor(e.param, e.buf, e.grad, e.copy, e.len, e.mode, start, e.width, e.channels, e.group,
               e.group_magic, e.group_shift, e.row_len, e.row_magic, e.row_shift, a.lr,
               a.momentum, a.weight_decay, a.nesterov, (int)(blockIdx.x * blockDim.x + threadIdx.x),
               (int)(gridDim.x * blockDim.x));
}
