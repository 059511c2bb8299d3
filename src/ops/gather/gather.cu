// Gathers a batch from a resident split (bytes on the device) into the model's channel-major
// (C, N, 32, 32) input, with each image's crop/flip and per-channel normalisation through the
// host-computed byte table (the same 256 numbers per channel as the CPU loader), and writes
// the labels as f32. Mirrors src/data/loader.rs `crop_plane`. The batch is the storage type T
// (`gather_batch` f32, `gather_batch_bf16` bf16: each table value rounded once, as the CPU
// rounds its table); the labels are f32 in every program.

// sel[i] = image index; sel[n + i] = dx | dy << 8 | flip << 16.
template <typename T>
__device__ __forceinline__ void gather_batch_t(T* x, float* y, const unsigned char* images,
                                               const unsigned char* labels, const float* table,
                                               const unsigned int* sel, int channels, int n) {
    i64 total = (i64)channels * n * 1024;
    for (i64 idx = global_id(); idx < total; idx += global_stride()) {
        int px = (int)(idx & 1023);
        i64 plane = idx >> 10;  // c * n + i
        int i = (int)(plane % n), c = (int)(plane / n);
        int yy = px >> 5, xx = px & 31;
        unsigned int image = sel[i], crop = sel[n + i];
        int dx = crop & 255, dy = (crop >> 8) & 255, flip = (crop >> 16) & 1;
        const float* t = table + c * 256;
        float v = t[0];
        int sy = yy + dy, sx = (flip ? 31 - xx : xx) + dx;
        if (sy >= 4 && sy < 36 && sx >= 4 && sx < 36)
            v = t[images[((i64)image * channels + c) * 1024 + (sy - 4) * 32 + (sx - 4)]];
        x[idx] = narrow<T>(v);
        if (idx < n) y[idx] = (float)labels[sel[idx]];
    }
}

extern "C" __global__ void gather_batch(float* x, float* y, const unsigned char* images,
                                        const unsigned char* labels, const float* table,
                                        const unsigned int* sel, int channels, int n) {
    gather_batch_t(x, y, images, labels, table, sel, channels, n);
}

extern "C" __global__ void gather_batch_bf16(bf16* x, float* y, const unsigned char* images,
                                             const unsigned char* labels, const float* table,
                                             const unsigned int* sel, int channels, int n) {
    gather_batch_t(x, y, images, labels, table, sel, channels, n);
}
