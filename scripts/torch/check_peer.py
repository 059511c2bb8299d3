"""Checks each variant of peer.py against wrn.py's reference: one training step of a small WRN
for fixed slice starts (none, non-wrapping, wrapping, at keep 1.0, 0.75 and 0.5), comparing the
loss, every parameter's gradient, the BN running statistics after the step and every parameter
after the SGD update. Exits 1 on any mismatch.

    /tmp/torchvenv/bin/python scripts/torch/check_peer.py                  # CPU, float64, every variant
    /tmp/torchvenv/bin/python scripts/torch/check_peer.py --variant tuned,compiled

On the CPU `graphed` checks the step it captures, run eagerly (the capture itself needs CUDA);
with `--device cuda` it captures and replays. `compiled` also asserts that the steps after the
first of each keep, with other starts, compile nothing new.
"""
import argparse
import sys

import torch

import peer
import wrn

# (keep, starts) for the WRN-10-2's three blocks of widths 32, 64, 128: the full network, slices
# inside the channels, slices that each wrap past the last channel, and mixed.
CASES = [
    (1.0, None),
    (0.5, (5, 17, 40)),
    (0.5, (25, 50, 100)),
    (0.5, (0, 63, 64)),
    (0.75, (9, 60, 3)),
    (0.75, (30, 1, 127)),
]
DEPTH, WIDEN = 10, 2


def initial_state(depth, widen, dtype, seed):
    """A reference model's weights, BN affine parameters moved off 1 and 0 so that every term
    reaches the gradients, with running statistics that are not the defaults."""
    torch.manual_seed(seed)
    model = wrn.WideResNet(depth, widen).to(dtype)
    with torch.no_grad():
        for name, t in model.named_parameters():
            if name.endswith(("bn1.weight", "bn2.weight")) or name == "bn.weight":
                t.copy_(1 + 0.1 * torch.randn_like(t))
            elif "bn" in name:
                t.copy_(0.1 * torch.randn_like(t))
        for name, t in model.named_buffers():
            if name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn_like(t))
            elif name.endswith("running_var"):
                t.copy_(1 + 0.1 * torch.rand_like(t))
    return {k: v.clone() for k, v in model.state_dict().items()}


def outcome(model, loss):
    """What a step leaves: loss, gradients, parameters and BN statistics, NCHW and on the CPU."""
    out = {"loss": loss.detach().reshape(1)}
    for name, p in model.named_parameters():
        out[f"grad.{name}"] = p.grad
        out[f"param.{name}"] = p.detach()
    for name, b in model.named_buffers():
        if "running" in name:
            out[f"stat.{name}"] = b
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def reference(state, x, y, keep, starts):
    model = wrn.WideResNet(DEPTH, WIDEN).to(x.dtype)
    model.load_state_dict(state)
    model.train()
    opt, _ = peer.sgd(model.parameters(), fused=False)
    return outcome(model, peer.step(model, opt, x.cpu(), y.cpu(), starts, keep, False))


def worst(got, want):
    """The largest difference over all tensors, each relative to its largest reference value."""
    bad, name = 0.0, ""
    for k, w in want.items():
        g = got[k]
        if g.shape != w.shape:
            return float("inf"), f"{k} shape {tuple(g.shape)} against {tuple(w.shape)}"
        d = ((g - w).abs().max() / w.abs().max().clamp(min=1e-30)).item()
        if not d <= bad:  # NaN counts as the worst
            bad, name = d if d == d else float("inf"), k
    return bad, name


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="all", help="comma-separated among " + ", ".join(peer.VARIANTS) + ", or all")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile's backend for `compiled`")
    args = ap.parse_args()
    variants = peer.VARIANTS if args.variant == "all" else args.variant.split(",")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    state = initial_state(DEPTH, WIDEN, dtype, seed=0)
    x = torch.randn(4, 3, 32, 32, dtype=dtype)
    y = torch.tensor([3, 1, 4, 1])
    want = {case: reference(state, x, y, *case) for case in CASES}
    failed = 0
    for variant in variants:
        if variant not in peer.VARIANTS:
            sys.exit(f"unknown variant {variant!r}: one of {', '.join(peer.VARIANTS)}")
        if variant == "graphed" and device.type != "cuda":
            how = "its step run eagerly (capture needs CUDA)"
        elif variant == "compiled":
            how = f"torch.compile, backend {args.compile_backend}"
        else:
            how = "eager"
        compiled = {}  # keep -> [compiled module, its model, graphs after its first step]
        for (keep, starts), ref in want.items():
            label = f"{variant:8} keep {keep:.2f} starts {list(starts) if starts else '-'}:"
            note = ""
            try:
                if variant == "compiled" and keep in compiled:
                    # One compiled module per keep: later cases load their state into its model.
                    model = compiled[keep][1]
                    channels_last = True
                else:
                    model, channels_last = peer.build(variant, DEPTH, WIDEN, device, dtype)
                model.load_state_dict(state)
                xv = x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
                yv = y.to(device)
                opt, sgd = peer.sgd(model.parameters(), fused=variant != "eager")
                s = peer.starts_as(variant, None if starts is None else list(starts), device)
                if variant == "compiled":
                    if keep not in compiled:
                        torch._dynamo.reset()
                        compiled[keep] = [peer.compile_model(model, args.compile_backend), model, None]
                    loss = peer.step(compiled[keep][0], opt, xv, yv, s, keep, False)
                    if compiled[keep][2] is None:
                        compiled[keep][2] = peer.graphs_compiled()
                    else:
                        new = peer.graphs_compiled() - compiled[keep][2]
                        note = f", {new} graphs compiled for these starts"
                        if new:
                            failed += 1
                            note += " (FAIL: new starts must not recompile)"
                elif variant == "graphed" and device.type == "cuda":
                    if s is None:
                        s = torch.zeros(len(model.blocks), dtype=torch.int64, device=device)
                    g = peer.GraphedStep(model, opt, xv, yv, s.clone(), keep, False)
                    # The capture's warm-up steps moved the weights: put them back, momentum to zero
                    # (a zero buffer makes the next step's momentum the gradient, as a first step).
                    with torch.no_grad():
                        model.load_state_dict(state)
                        for st in opt.state.values():
                            st["momentum_buffer"].zero_()
                    loss = g(s)
                    torch.cuda.synchronize()
                else:
                    loss = peer.step(model, opt, xv, yv, s, keep, False)
            except Exception as e:  # a variant that cannot run fails its case, the others still run
                failed += 1
                print(f"{label} FAIL: {type(e).__name__}: {e}", flush=True)
                continue
            bad, name = worst(outcome(model, loss), ref)
            ok = bad <= args.tol
            failed += not ok
            print(
                f"{label} worst {bad:.2e} ({name}) "
                f"{'ok' if ok else 'FAIL'}; {how}, sgd {sgd}{note}",
                flush=True,
            )
    print(f"check_peer: {'all agree' if not failed else f'{failed} FAILED'} (bar {args.tol:g}, {args.dtype}, {device})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
