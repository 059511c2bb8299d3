"""Writes tests/data/wrn10_2_reference.bin: PyTorch's numbers for a WRN-10-2 (float64 maths,
stored as float32), which sliceout's tests and `sliceout selftest` compare against.

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch
    /tmp/torch/bin/python scripts/torch/gen_reference.py --out tests/data/wrn10_2_reference.bin
    /tmp/torch/bin/python scripts/torch/gen_reference.py --check tests/data/wrn10_2_reference.bin

`--check FILE` takes the batch and initial weights from FILE, recomputes every other tensor
and prints the largest relative difference per case (the stored file came from an earlier run
of the same maths, possibly on another device, so only the inputs are taken from it).

Cases (prefixes in the file): `full` one training step of the whole network; `slice` SliceOut
keep 0.5 with starts 5, 17, 40; `wrap` keep 0.5 with starts 25, 50, 100 (each wraps past the
last channel); `sgd` five SGD steps (lr 0.1, momentum 0.9, Nesterov, weight decay 5e-4 on
every parameter) then eval-mode logits. Each training case records logits, loss, every
parameter's gradient (`grad.*`) and the BN running statistics after the step (`after1.*`).

File format (little-endian): b"SOREF\\0\\0\\0", u32 version 1, u32 count, then per tensor
u32 name length, name, u32 ndim, u32 dims[ndim], f32 data (row-major). Labels and starts are
stored as exact integers in f32.
"""
import argparse
import struct
import sys

import torch
import torch.nn.functional as F

from wrn import WideResNet

BATCH, CLASSES, KEEP = 4, 10, 0.5
SLICE_STARTS, WRAP_STARTS = [5, 17, 40], [25, 50, 100]


def draw_initial_weights(model):
    """The reference's initial weights, drawn in a fixed order from the seeded generator: conv
    weights as PyTorch's default (Kaiming uniform, a = sqrt(5)); BN weight 1 + 0.1 N(0, 1) and
    bias 0.1 N(0, 1), so that gradients reach every term; fc uniform in +-1/sqrt(fan_in)."""
    def conv(w):
        torch.nn.init.kaiming_uniform_(w, a=5 ** 0.5)

    def bn(layer):
        layer.weight.copy_(1 + 0.1 * torch.randn_like(layer.weight))
        layer.bias.copy_(0.1 * torch.randn_like(layer.bias))

    with torch.no_grad():
        conv(model.conv0.weight)
        for block in model.blocks:
            bn(block.bn1)
            conv(block.conv1.weight)
            bn(block.bn2)
            conv(block.conv2.weight)
            conv(block.shortcut.weight)
        bn(model.bn)
        torch.nn.init.kaiming_uniform_(model.fc.weight, a=5 ** 0.5)
        bound = 1 / model.fc.in_features ** 0.5
        model.fc.bias.uniform_(-bound, bound)


def parameters(model):
    return {k: v for k, v in model.named_parameters()}


def running_stats(model):
    return {k: v for k, v in model.state_dict().items() if "running" in k}


def fresh(initial):
    """A float64 WRN-10-2 in train mode holding `initial` (running stats 0 and 1)."""
    model = WideResNet(depth=10, widen=2, classes=CLASSES).double()
    model.load_state_dict(initial, strict=False)
    return model.train()


def one_step(prefix, initial, x, y, starts=None):
    model = fresh(initial)
    logits = model(x, starts, KEEP)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    out = {f"{prefix}.logits": logits, f"{prefix}.loss": loss.reshape(1)}
    if starts is not None:
        out[f"{prefix}.keep"] = torch.tensor([KEEP])
        out[f"{prefix}.starts"] = torch.tensor(starts, dtype=torch.float64)
    for name, p in parameters(model).items():
        out[f"{prefix}.grad.{name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    for name, v in running_stats(model).items():
        out[f"{prefix}.after1.{name}"] = v
    return out


def sgd_steps(initial, x, y):
    model = fresh(initial)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    out = {"sgd.losses": torch.tensor(losses, dtype=torch.float64)}
    for name, p in parameters(model).items():
        out[f"sgd.after5.{name}"] = p
    with torch.no_grad():
        out["sgd.eval_logits"] = model.eval()(x)
    return out


def compute(x, y, initial):
    out = {"x": x, "y": y.double()}
    out.update({f"init.{k}": v for k, v in initial.items()})
    out.update(one_step("full", initial, x, y))
    out.update(one_step("slice", initial, x, y, SLICE_STARTS))
    out.update(one_step("wrap", initial, x, y, WRAP_STARTS))
    out.update(sgd_steps(initial, x, y))
    return out


def write(path, tensors):
    with open(path, "wb") as f:
        f.write(b"SOREF\0\0\0" + struct.pack("<II", 1, len(tensors)))
        for name, t in tensors.items():
            a = t.detach().to(torch.float32).contiguous()
            key = name.encode()
            f.write(struct.pack("<I", len(key)) + key)
            f.write(struct.pack(f"<I{a.dim()}I", a.dim(), *a.shape))
            f.write(struct.pack(f"<{a.numel()}f", *a.flatten().tolist()))


def read(path):
    data = open(path, "rb").read()
    assert data[:8] == b"SOREF\0\0\0", f"{path}: not a reference file"
    version, count = struct.unpack_from("<II", data, 8)
    assert version == 1, f"{path}: version {version}"
    at, tensors = 16, {}
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, at)
        name = data[at + 4 : at + 4 + n].decode()
        at += 4 + n
        (ndim,) = struct.unpack_from("<I", data, at)
        dims = struct.unpack_from(f"<{ndim}I", data, at + 4)
        at += 4 + 4 * ndim
        numel = 1
        for d in dims:
            numel *= d
        values = torch.frombuffer(bytearray(data[at : at + 4 * numel]), dtype=torch.float32)
        tensors[name] = values.reshape(dims).double()
        at += 4 * numel
    return tensors


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the reference file here")
    ap.add_argument("--check", help="recompute from this file's inputs and compare")
    args = ap.parse_args()
    if args.check:
        stored = read(args.check)
        initial = {k[len("init."):]: v for k, v in stored.items() if k.startswith("init.")}
        ours = compute(stored["x"], stored["y"].long(), initial)
        worst = {}
        inputs = {"x", "y"} | {k for k in stored if k.startswith("init.")}
        for name, v in ours.items():
            if name in inputs:
                continue
            ref = stored[name]
            err = ((v.detach() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
            case = name.split(".")[0]
            worst[case] = max(worst.get(case, 0.0), err)
        for case, err in worst.items():
            print(f"{case:6} largest relative difference {err:.2e}")
        missing = set(stored) - set(ours)
        print(f"{len(ours) - len(inputs)} tensors recomputed, {len(missing)} in the file not recomputed")
        sys.exit(1 if max(worst.values()) > 1e-5 or missing else 0)
    torch.manual_seed(1234)
    model = WideResNet(depth=10, widen=2, classes=CLASSES).double()
    draw_initial_weights(model)
    initial = {k: v.clone() for k, v in parameters(model).items()}
    x = torch.randn(BATCH, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (BATCH,))
    tensors = compute(x, y, initial)
    write(args.out or "wrn10_2_reference.bin", tensors)
    print(f"wrote {args.out}: {len(tensors)} tensors; full loss {tensors['full.loss'].item():.6f}")


if __name__ == "__main__":
    main()
