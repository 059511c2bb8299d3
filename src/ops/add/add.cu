// The identity shortcut: out += inp, element-wise. Mirrors ops/add (CPU): the f32 sum of the
// stored values, rounded once. `add` stores f32, `add_bf16` bf16 (common.cu's convention).

template <typename T>
__device__ __forceinline__ void add_t(T* out, const T* inp, i64 len) {
    for (i64 i = global_id(); i < len; i += global_stride())
        out[i] = narrow<T>(widen(out[i]) + widen(inp[i]));
}

extern "C" __global__ void add(float* out, const float* inp, i64 len) { add_t(out, inp, len); }

extern "C" __global__ void add_bf16(bf16* out, const bf16* inp, i64 len) { add_t(out, inp, len); }
