// Mean softmax cross-entropy and the correct count. Mirrors ops/loss (CPU): f64 log-sum-exp.

// One block: stats = [mean loss, correct count]; d_logits (may be null) = (softmax-onehot)/n.
// A label that is not a class index makes the loss NaN (the CPU op panics instead).
extern "C" __global__ void cross_entropy(float* stats, float* d_logits, const float* logits,
                                         const float* labels, int n, int o) {
    __shared__ double sh[32];
    double total = 0.0, correct = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float* row = logits + (i64)i * o;
        float label = labels[i];
        int y = (label >= 0.0f && label < (float)o) ? (int)label : -1;
        if (y < 0 || (float)y != label) {
            total += __longlong_as_double(0x7ff8000000000000LL);
            continue;
        }
        int best = 0;
        float mx = row[0];
        for (int k = 1; k < o; ++k)
            if (row[k] > mx) {
                best = k;
                mx = row[k];
            }
        double m = (double)mx, se = 0.0;
        for (int k = 0; k < o; ++k) se += exp((double)row[k] - m);
        total += (m - (double)row[y]) + log(se);
        correct += best == y ? 1.0 : 0.0;
        if (d_logits) {
            double inv_n = 1.0 / (double)n;
            for (int k = 0; k < o; ++k) {
                double p = exp((double)row[k] - m) / se;
                d_logits[(i64)i * o + k] = (float)((p - (k == y ? 1.0 : 0.0)) * inv_n);
            }
        }
    }
    total = block_sum(total, sh);
    correct = block_sum(correct, sh);
    if (threadIdx.x == 0) {
        stats[0] = n > 0 ? (float)(total / (double)n) : 0.0f;
        stats[1] = (float)correct;
    }
}
