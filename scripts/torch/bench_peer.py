"""PyTorch's step time and peak memory for the same training step `sliceout bench` times: a
WRN-d-k (scripts/torch/wrn.py, sliceout's network and SliceOut rules, slices wrapping past the
last channel, starts drawn per block per step) on random CIFAR-shaped batches, cross-entropy,
SGD with momentum 0.9, Nesterov and weight decay 5e-4. For comparison only: sliceout never
depends on PyTorch.

    python3 scripts/torch/bench_peer.py --depth 28 --widen 10 --batch 128 --keep 1.0,0.75,0.5 --math tf32
    python3 scripts/torch/bench_peer.py --depth 28 --widen 10 --batch 128 --keep 1.0,0.5 --precision bf16

`--precision bf16` runs the forward pass and loss under bf16 autocast (PyTorch's mixed
precision: fp32 parameters, bf16 convolutions), the peer of `sliceout bench --precision bf16`.

One line per keep value, which scripts/gpu-check.sh reads:
    torch WRN-28-10 tf32 keep 0.50: median <ms> ms (min <ms>, max <ms>), <n> img/s, peak <MiB> MiB
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from wrn import WideResNet


def step_times(model, opt, x, y, keep, steps, device, bf16):
    """Milliseconds of `steps` training steps after one warm-up step."""
    times = []
    for i in range(steps + 1):
        starts = None
        if keep < 1.0:
            starts = [int(torch.randint(0, b.c, (1,))) for b in model.blocks]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x, starts, keep), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:
            times.append((time.perf_counter() - t0) * 1e3)
        elif device.type == "cuda":
            # The peak of the timed steps: cudnn.benchmark's algorithm search in the warm-up
            # step allocates workspaces no later step needs.
            torch.cuda.reset_peak_memory_stats()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--widen", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--keep", default="1.0,0.75,0.5")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--math", choices=["fp32", "tf32"], default="tf32")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.math == "tf32"
    torch.backends.cudnn.allow_tf32 = args.math == "tf32"
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    for keep in [float(k) for k in args.keep.split(",")]:
        model = WideResNet(args.depth, args.widen).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        x = torch.randn(args.batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        bf16 = args.precision == "bf16"
        times = step_times(model, opt, x, y, keep, args.steps, device, bf16)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
        median = statistics.median(times)
        print(
            f"torch WRN-{args.depth}-{args.widen} {'bf16' if bf16 else args.math} keep {keep:.2f}: median {median:.2f} ms "
            f"(min {min(times):.2f}, max {max(times):.2f}), {args.batch / median * 1e3:.0f} img/s, peak {peak:.1f} MiB",
            flush=True,
        )
        del model, opt, x, y


if __name__ == "__main__":
    main()
