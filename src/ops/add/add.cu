// The identity shortcut: out += inp, element-wise. Mirrors ops/add (CPU): the f32 sum of the
// stored values, rounded once. `add` stores f32, `add_bf16` bf16 (common.cu's convention).

// Four values a load where the buffers allow (`by_fours`), else one.
template <typename T>
__device__ __forceinline__ void add_t(T* out, const T* inp, i64 len) {
    if (by_fours<T>(len, out, inp, inp)) {
        for (i64 i = 4 * global_id(); i < len; i += 4 * global_stride()) {
            Lanes<T, 4> o = load_lanes<T, 4>(out + i), x = load_lanes<T, 4>(inp + i);
#pragma unroll
            for (int j = 0; j < 4; ++j) o.v[j] = narrow<T>(widen(o.v[j]) + widen(x.v[j]));
            store_lanes(out + i, o);
        }
        return;
    }
    for (i64 i = global_id(); i < len; i += global_stride())
        out[i] = narrow<T>(widen(out[i]) + widen(inp[i]));
}

extern "C" __global__ void add(float* out, const float* inp, i64 len) { add_t(out, inp, len); }

extern "C" __global__ void add_bf16(bf16* out, const bf16* inp, i64 len) { add_t(out, inp, len); }
