// Helpers shared by every kernel file; prepended to each one before NVRTC compiles it (a file
// on its own has no kernels). NVRTC has no standard headers, so only built-ins are used.

typedef long long i64;

// Sum of `v` over the block, returned to every thread. `sh` holds at least 32 doubles;
// blockDim.x must be a multiple of 32. Doubles, so that long reductions (BN statistics over
// N*H*W values) match the CPU reference's f64 sums.
__device__ double block_sum(double v, double* sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();  // `sh` may still be read by a previous call
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    int warps = blockDim.x >> 5;
    v = (int)threadIdx.x < warps ? sh[threadIdx.x] : 0.0;
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

__device__ __forceinline__ i64 global_id() { return (i64)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ __forceinline__ i64 global_stride() { return (i64)gridDim.x * blockDim.x; }

// x / d for 0 <= x < 2^31, with (magic, shift) of d computed by the host (gpu::FastDiv).
__device__ __forceinline__ unsigned div_by(unsigned x, unsigned magic, unsigned shift) {
    return (__umulhi(x, magic) + x) >> shift;
}

// Multi-block reductions over channel rows: block (part, channel) of a grid (parts, channels)
// sums a pair of values over its part of the channel and writes them to
// `part[channel * parts + part]`; a per-channel counter tells the last block to finish, which
// resets the counter and adds the parts in order, so the total never depends on which block
// finished last.
__device__ __forceinline__ bool last_block_of(unsigned* count, int channel) {
    __threadfence();  // the partial sums are visible device-wide before the count says so
    bool last = atomicAdd(&count[channel], 1u) == gridDim.x - 1;
    if (last) count[channel] = 0;
    return last;
}

// Sum of the parts' pairs (a, b) of `channel`, in part order (L2 reads: other blocks wrote them).
__device__ __forceinline__ void sum_parts(const double* part, int channel, double* a, double* b) {
    const double* p = part + 2 * (i64)channel * gridDim.x;
    double sa = 0.0, sb = 0.0;
    for (unsigned j = 0; j < gridDim.x; ++j) {
        sa += __ldcg(p + 2 * j);
        sb += __ldcg(p + 2 * j + 1);
    }
    *a = sa;
    *b = sb;
}

// Every thread of a block passes its partial pair (a, b) of `channel`; returns true in exactly
// one thread of the grid, thread 0 of the channel's last block, with (a, b) then the channel's
// totals. `sh` holds 32 doubles.
__device__ __forceinline__ bool channel_totals(double* a, double* b, double* part, unsigned* count,
                                               int channel, double* sh) {
    double sa = block_sum(*a, sh), sb = block_sum(*b, sh);
    if (threadIdx.x != 0) return false;
    double* mine = part + 2 * ((i64)channel * gridDim.x + blockIdx.x);
    mine[0] = sa;
    mine[1] = sb;
    if (!last_block_of(count, channel)) return false;
    sum_parts(part, channel, a, b);
    return true;
}

// This block's range [lo, hi) of a row of m values split into gridDim.x parts, each part's
// length a multiple of `align` (so that a part starts on an aligned value); late parts may be
// empty (lo >= hi).
__device__ __forceinline__ void part_range(i64 m, int align, i64* lo, i64* hi) {
    i64 len = (m + gridDim.x - 1) / gridDim.x;
    len = (len + align - 1) / align * align;
    *lo = (i64)blockIdx.x * len;
    *hi = min(m, *lo + len);
}

// bf16 storage: our own 16-bit type (NVRTC finds no cuda_bf16.h without include paths), f32's
// upper half. Kernels are written once as templates over the storage type T (float or bf16),
// load with `widen`, compute in f32 and store with `narrow<T>`: one rounding per store, the
// CPU's (src/ir/elem.rs). For T = float both are the identity, so an f32 kernel is unchanged.
struct bf16 {
    unsigned short bits;
};

__device__ __forceinline__ float bf16_to_f32(bf16 x) {
    return __uint_as_float((unsigned)x.bits << 16);
}

// Round to nearest, ties to even; a NaN stays a NaN (quiet bit set, sign kept), exactly as
// `ir::elem::f32_to_bf16`: adding 0x7fff plus the lowest kept bit carries into the kept half
// exactly when the dropped half is above 0x8000, or equal to it with an odd kept half.
__device__ __forceinline__ bf16 f32_to_bf16_rne(float x) {
    unsigned b = __float_as_uint(x);
    bf16 r;
    if (x != x)
        r.bits = (unsigned short)((b >> 16) | 0x0040u);
    else
        r.bits = (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    return r;
}

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(bf16 x) { return bf16_to_f32(x); }

template <typename T>
__device__ __forceinline__ T narrow(float x);
template <>
__device__ __forceinline__ float narrow<float>(float x) {
    return x;
}
template <>
__device__ __forceinline__ bf16 narrow<bf16>(float x) {
    return f32_to_bf16_rne(x);
}

// V values of T as one word of V * sizeof(T) bytes (2 to 16), for aligned V-wide loads and
// stores: `Lanes<T, V>::v` are the values, `load_lanes` / `store_lanes` move them at once.
template <int B> struct Word;
template <> struct Word<2> { typedef unsigned short type; };
template <> struct Word<4> { typedef unsigned type; };
template <> struct Word<8> { typedef uint2 type; };
template <> struct Word<16> { typedef uint4 type; };

template <typename T, int V>
union Lanes {
    T v[V];
    typename Word<sizeof(T) * V>::type word;
};

template <typename T, int V>
__device__ __forceinline__ void store_lanes(T* dst, const Lanes<T, V>& x) {
    *reinterpret_cast<typename Word<sizeof(T) * V>::type*>(dst) = x.word;
}

template <typename T, int V>
__device__ __forceinline__ Lanes<T, V> load_lanes(const T* src) {
    Lanes<T, V> x;
    x.word = *reinterpret_cast<const typename Word<sizeof(T) * V>::type*>(src);
    return x;
}

// Whether rows of m values of T at `a`, `b` and `c` can be walked 4 at a time: m a multiple
// of 4 and each base aligned to 4 values. (Channel rows are m apart, so the rows after the
// first are then aligned too.)
template <typename T>
__device__ __forceinline__ bool by_fours(i64 m, const void* a, const void* b, const void* c) {
    unsigned long long bits = (unsigned long long)a | (unsigned long long)b | (unsigned long long)c;
    return (m & 3) == 0 && bits % (4 * sizeof(T)) == 0;
}

// out[i] = f(in[i]) over a row of m values, this thread's share of a grid-stride loop: four
// values a load and a store where `by_fours` allows, else one at a time (the same f either way).
template <typename T, typename F>
__device__ __forceinline__ void map_row(T* out, const T* in, i64 m, F f) {
    if (by_fours<T>(m, in, out, out)) {
        for (i64 i = 4 * global_id(); i < m; i += 4 * global_stride()) {
            Lanes<T, 4> x = load_lanes<T, 4>(in + i), r;
#pragma unroll
            for (int j = 0; j < 4; ++j) r.v[j] = f(x.v[j]);
            store_lanes(out + i, r);
        }
        return;
    }
    for (i64 i = global_id(); i < m; i += global_stride()) out[i] = f(in[i]);
}
