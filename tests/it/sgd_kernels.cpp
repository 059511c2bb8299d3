// The multi-tensor SGD kernel of src/ops/sgd/sgd.cu runs on the host: a few definitions stand in
// for CUDA's built-ins (those of common.cu the kernel does not call are never run), and every
// thread of each grid runs in turn (the kernel is a grid-stride loop with no synchronisation, so
// any order is a valid schedule). Reads launches from stdin, runs each as one `sgd_multi` over
// its table, and prints the tensors after it; tests/it/sgd_kernels.rs writes the input and
// compares the output with the CPU's `sgd_update`. Every float travels as its bits in hex.
#include <vector>

#include "cuda_host.h"
#include "../../src/gpu/common.cu"
#include "sgd.cu"

// The layouts the host writes (`ops::sgd::cuda::{Entry, StepArgs}` assert the same sizes).
static_assert(sizeof(SgdEntry) == 80 && offsetof(SgdEntry, len) == 32, "SgdEntry layout");
static_assert(sizeof(SgdStepArgs) == 16 + 4 * SGD_MAX_BLOCKS && SGD_MAX_BLOCKS == 64, "SgdStepArgs layout");

static unsigned word() {
    unsigned v;
    if (std::scanf("%x", &v) != 1) {
        std::fprintf(stderr, "short input\n");
        std::exit(2);
    }
    return v;
}
static int integer() {
    int v;
    if (std::scanf("%d", &v) != 1) {
        std::fprintf(stderr, "short input\n");
        std::exit(2);
    }
    return v;
}
static float real() { return __uint_as_float(word()); }
static void read(std::vector<float>& v, int n) {
    v.resize(n);
    for (float& x : v) x = real();
}
static void print(const std::vector<float>& v) {
    for (float x : v) std::printf("%08x ", __float_as_uint(x));
    std::printf("\n");
}

int main() {
    int launches = integer();
    for (int l = 0; l < launches; ++l) {
        SgdStepArgs a;
        a.lr = real();
        a.momentum = real();
        a.weight_decay = real();
        a.nesterov = integer();
        int starts = integer();
        for (int b = 0; b < starts; ++b) a.starts[b] = integer();
        int tensors = integer();
        std::vector<std::vector<float>> param(tensors), buf(tensors), grad(tensors);
        std::vector<std::vector<bf16>> copy(tensors);
        std::vector<SgdEntry> table(tensors);
        long longest = 0;
        for (int t = 0; t < tensors; ++t) {
            SgdEntry& e = table[t];
            e.len = integer(), e.mode = integer(), e.block = integer(), e.width = integer();
            e.channels = integer(), e.group = integer(), e.row_len = integer();
            e.group_magic = word(), e.group_shift = word(), e.row_magic = word(), e.row_shift = word();
            int copied = integer(), grad_len = integer();
            read(param[t], e.len);
            read(buf[t], e.len);
            read(grad[t], grad_len);
            copy[t].resize(copied ? e.len : 0);
            e.param = param[t].data(), e.buf = buf[t].data(), e.grad = grad[t].data();
            e.copy = copied ? copy[t].data() : nullptr;
            longest = std::max(longest, (long)e.len);
        }
        launch(longest / 4, (unsigned)tensors, [&] { sgd_multi(table.data(), a); });
        for (int t = 0; t < tensors; ++t) {
            print(param[t]);
            print(buf[t]);
            std::vector<float> wide;
            for (bf16 c : copy[t]) wide.push_back(bf16_to_f32(c));
            print(wide);
        }
    }
    return 0;
}
