"""How fast the card's cuBLAS (through PyTorch) runs the GEMMs of a sliceout WRN conv step: the
forward, input-gradient and weight-gradient products of one im2col chunk, in tf32, with the
weight operand at a 16-byte aligned address and at the offset an unaligned slice start gives
(channel * 9 floats), and with the chunk's columns against the whole batch's. It tells how much
of our GEMM time is the shapes and alignment the lowering hands cuBLAS, not cuBLAS itself.
For measurement only: sliceout never depends on PyTorch.

    python3 scripts/torch/gemm_shapes.py

One line per product: shape, TFLOP/s aligned, TFLOP/s unaligned.
"""
import torch


def tflops(m, n, k, run, reps=20):
    for _ in range(3):
        run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        run()
    end.record()
    torch.cuda.synchronize()
    return 2.0 * m * n * k * reps / (start.elapsed_time(end) * 1e-3) / 1e12


def weight_view(rows, cols, offset):
    """A [rows, cols] view of a wider weight at `offset` floats into each row (ld = 2 * cols)."""
    big = torch.randn(rows, 2 * cols + 16, device="cuda")
    return big[:, offset:offset + cols]


def products(cout, cin, hw, images):
    """(name, m, n, k, aligned run, unaligned run) for one chunk of `images` images."""
    n, k = images * hw, cin * 9
    col = torch.randn(k, n, device="cuda")
    dy = torch.randn(cout, n, device="cuda")
    out = torch.empty(cout, n, device="cuda")
    dcol = torch.empty(k, n, device="cuda")
    dw = torch.empty(cout, k, device="cuda")
    w_al, w_un = weight_view(cout, k, 0), weight_view(cout, k, 9)
    return [
        ("forward", cout, n, k, lambda: torch.mm(w_al, col, out=out), lambda: torch.mm(w_un, col, out=out)),
        ("input gradient", k, n, cout, lambda: torch.mm(w_al.t(), dy, out=dcol), lambda: torch.mm(w_un.t(), dy, out=dcol)),
        ("weight gradient", cout, k, n, lambda: torch.mm(dy, col.t(), out=dw), None),
    ]


def main():
    torch.backends.cuda.matmul.allow_tf32 = True
    print(f"{torch.cuda.get_device_name()}, PyTorch {torch.__version__}, tf32")
    # (group, cout, cin, h*w, images per 128 MiB chunk, batch)
    layers = [("group 1 keep 1.0", 160, 160, 1024, 22), ("group 1 conv1 keep 0.5", 80, 160, 1024, 22),
              ("group 3 keep 1.0", 640, 640, 64, 91)]
    for name, cout, cin, hw, chunk in layers:
        for images in (chunk, 128):
            for what, m, n, k, aligned, unaligned in products(cout, cin, hw, images):
                un = f"{tflops(m, n, k, unaligned):6.1f}" if unaligned else "     -"
                print(f"{name:24} {images:4} images {what:16} m {m:5} n {n:6} k {k:6}: "
                      f"{tflops(m, n, k, aligned):6.1f} TFLOP/s aligned, {un} unaligned")


if __name__ == "__main__":
    main()
