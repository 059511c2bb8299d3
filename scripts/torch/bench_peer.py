"""PyTorch's step time and peak memory for the same training step `sliceout bench` times, in each
of peer.py's variants (eager, tuned, compiled, graphed): a WRN-d-k (sliceout's network and
SliceOut rules, slices wrapping past the last channel, starts drawn per block per step) on a
random CIFAR-shaped batch, cross-entropy, SGD with momentum 0.9, Nesterov and weight decay 5e-4.
For comparison only: sliceout never depends on PyTorch.

    python3 scripts/torch/bench_peer.py --depth 28 --widen 10 --batch 128 --keep 1.0,0.5 --precision bf16 --variant all
    python3 scripts/torch/bench_peer.py --depth 16 --widen 4 --keep 1.0,0.75,0.5 --math tf32 --variant eager

`--precision bf16` runs the forward pass and loss under bf16 autocast (PyTorch's mixed
precision: fp32 parameters, bf16 convolutions), the peer of `sliceout bench --precision bf16`.

Each variant warms up (`--warmup`, compiling or capturing first where it does), then times
`--steps` steps: with CUDA events around each step on a GPU (the host may queue the next step
while the device works, as in training), by the wall clock on the CPU. One line per keep and
variant, which scripts/gpu-check.sh reads:
    torch tuned WRN-28-10 bf16 keep 0.50: median <ms> ms (min <ms>, max <ms>, p25 <ms>, p75 <ms>), <n> img/s, peak <MiB> MiB; ...
A variant that cannot run here says `skipped (why)`; one that fails says `failed: why`, and the
script then exits 1 after the others.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import peer


def quantile(sorted_times, q):
    return sorted_times[min(len(sorted_times) - 1, round(q * (len(sorted_times) - 1)))]


def timed(run, warmup, steps, cuda):
    """Milliseconds of each of `steps` calls run(i) after `warmup` untimed ones."""
    for i in range(warmup):
        run(i)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        marks = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for i, (a, b) in enumerate(marks):
            a.record()
            run(warmup + i)
            b.record()
        torch.cuda.synchronize()
        return [a.elapsed_time(b) for a, b in marks]
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        run(warmup + i)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def variant_runner(variant, args, keep, device, bf16, starts):
    """A function running step i of `variant`, and notes for its line (the SGD it uses, the
    compile time and recompiles). `starts`: one list of block starts per step, or None."""
    torch.manual_seed(0)
    model, channels_last = peer.build(variant, args.depth, args.widen, device)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), device=device)
    opt, sgd = peer.sgd(model.parameters(), fused=variant != "eager")
    notes = {"sgd": sgd}
    if starts is not None and variant in ("compiled", "graphed"):
        starts = torch.tensor(starts, dtype=torch.int64, device=device)

    def start(i):
        return None if starts is None else starts[i]

    if variant in ("eager", "tuned"):
        return (lambda i: peer.step(model, opt, x, y, start(i), keep, bf16)), notes
    if variant == "compiled":
        torch._dynamo.reset()
        run = peer.compile_model(model)
        t0 = time.perf_counter()
        peer.step(run, opt, x, y, start(0), keep, bf16)
        if device.type == "cuda":
            torch.cuda.synchronize()
        notes["compile"] = time.perf_counter() - t0
        notes["graphs"] = peer.graphs_compiled()
        return (lambda i: peer.step(run, opt, x, y, start(i), keep, bf16)), notes
    # graphed: the captured starts tensor is rewritten before each replay.
    static = start(0).clone() if starts is not None else None
    t0 = time.perf_counter()
    graph = peer.GraphedStep(model, opt, x, y, static, keep, bf16)
    notes["capture"] = time.perf_counter() - t0
    return (lambda i: graph(start(i))), notes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--widen", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--keep", default="1.0,0.75,0.5")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--variant", default="eager", help="comma-separated among " + ", ".join(peer.VARIANTS) + ", or all")
    ap.add_argument("--math", choices=["fp32", "tf32"], default="tf32")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    variants = peer.VARIANTS if args.variant == "all" else args.variant.split(",")
    for v in variants:
        if v not in peer.VARIANTS:
            ap.error(f"unknown variant {v!r}: one of {', '.join(peer.VARIANTS)}, or all")
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = args.math == "tf32"
    torch.backends.cudnn.allow_tf32 = args.math == "tf32"
    torch.backends.cudnn.benchmark = True
    bf16 = args.precision == "bf16"
    math = "bf16" if bf16 else args.math
    timer = "CUDA events" if cuda else "wall clock"
    failed = False
    for keep in [float(k) for k in args.keep.split(",")]:
        widths = [c for g in (16, 32, 64) for c in [g * args.widen] * ((args.depth - 4) // 6)]
        draw = torch.Generator().manual_seed(1)
        starts = None
        if keep < 1.0:
            starts = [[int(torch.randint(0, c, (1,), generator=draw)) for c in widths]
                      for _ in range(args.warmup + args.steps)]
        for variant in variants:
            head = f"torch {variant} WRN-{args.depth}-{args.widen} {math} keep {keep:.2f}:"
            if variant == "graphed" and not cuda:
                print(f"{head} skipped (CUDA graphs need a CUDA device)", flush=True)
                continue
            if cuda:
                torch.cuda.empty_cache()
            try:
                run, notes = variant_runner(variant, args, keep, device, bf16, starts)
                times = sorted(timed(run, args.warmup, args.steps, cuda))
            except Exception as e:  # one variant's failure must not hide the others' lines
                failed = True
                print(f"{head} failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", flush=True)
                continue
            peak = f"{torch.cuda.max_memory_allocated() / 2**20:.1f} MiB" if cuda else "-"
            median = statistics.median(times)
            extra = f"sgd {notes['sgd']}"
            if "compile" in notes:
                extra += f"; first step with compile {notes['compile']:.1f} s, recompiles {peer.graphs_compiled() - notes['graphs']}"
            if "capture" in notes:
                extra += f"; capture {notes['capture']:.1f} s"
            print(
                f"{head} median {median:.2f} ms (min {times[0]:.2f}, max {times[-1]:.2f}, "
                f"p25 {quantile(times, 0.25):.2f}, p75 {quantile(times, 0.75):.2f}), "
                f"{args.batch / median * 1e3:.0f} img/s, peak {peak}; "
                f"{args.steps} steps after {args.warmup} warm-up, {timer}; {extra}",
                flush=True,
            )
            del run
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
