"""PyTorch's training step for sliceout's network in four variants, from as written to as a
practitioner would tune it. Each computes the function of `wrn.py` (same parameter names, same
SliceOut rules); `check_peer.py` checks that on the CPU, `bench_peer.py` times them.

- `eager`: `wrn.py` as it is: NCHW, SliceOut by advanced indexing (index vectors, copies of the
  weight rows and columns, the BN statistics gathered then scattered back), PyTorch's default
  SGD.
- `tuned`: model and input channels_last; a slice that does not wrap taken by views (`narrow`
  of the weight's rows for conv1, of its columns for conv2), a wrapping one by `index_select`
  (one gather forward, one index_add backward; two views concatenated would cost a full-size
  zero gradient per piece); bn2's affine parameters and running statistics sliced the same way
  (through a view batch_norm updates the statistics in place); the c / w rescaling folded into
  bn2's affine parameters (k relu(a x + b) = relu(k a x + k b) for k > 0); `SGD(fused=True)`
  where the device has it, else PyTorch's default.
- `compiled`: `tuned` under `torch.compile` (default mode, whole forward as one graph), with
  the slice starts in a device tensor, so every slice goes by `index_select` and every step has
  the same shapes: new starts compile nothing.
- `graphed`: the `compiled` variant's step run eagerly (starts in a device tensor, nothing read
  back to the host) captured as one CUDA graph, forward, backward and SGD: each step writes its
  starts into the captured tensor and replays the graph. CUDA only.
"""
import torch
import torch.nn.functional as F

import wrn

VARIANTS = ("eager", "tuned", "compiled", "graphed")


def selector(start, width, channels, device):
    """How `take` picks channels start, start + 1, ... (mod `channels`): the int `start` itself
    where the slice does not wrap (a view, `narrow`), else an index vector (`index_select`, whose
    backward is an index_add). A tensor `start` always gives an index vector, so that every step
    has the same shapes whatever its value."""
    if isinstance(start, int) and start + width <= channels:
        return start
    return (start + torch.arange(width, device=device)) % channels


def take(t, dim, sel, width):
    """The slice of `t` along `dim` that `selector` describes."""
    if isinstance(sel, int):
        return t.narrow(dim, sel, width)
    return t.index_select(dim, sel)


def put(t, sel, values):
    """Writes `values` back to the slice of the 1-d `t` that `take` read; nothing to do for a
    view, which batch_norm updated in place."""
    if not isinstance(sel, int):
        t.index_copy_(0, sel, values)


class TunedBlock(wrn.Block):
    """wrn.Block's parameters; SliceOut by views or index_select (see `selector`)."""

    def forward(self, h, start=None, keep=1.0):
        o = F.relu(self.bn1(h))
        skip = self.shortcut(o) if self.shortcut is not None else h
        c = self.c
        width = wrn.kept_width(keep, c)
        if start is None or not self.training or width == c:
            return self.conv2(F.relu(self.bn2(self.conv1(o)))) + skip
        bn = self.bn2
        scale = c / width
        sel = selector(start, width, c, h.device)
        t = F.conv2d(o, take(self.conv1.weight, 0, sel, width), None, self.stride, 1)
        with torch.no_grad():
            mean = take(bn.running_mean, 0, sel, width)
            var = take(bn.running_var, 0, sel, width)
        gamma = take(bn.weight, 0, sel, width) * scale
        beta = take(bn.bias, 0, sel, width) * scale
        t = F.relu(F.batch_norm(t, mean, var, gamma, beta, True, bn.momentum, bn.eps))
        with torch.no_grad():
            put(bn.running_mean, sel, mean)
            put(bn.running_var, sel, var)
        return F.conv2d(t, take(self.conv2.weight, 1, sel, width), None, 1, 1) + skip


class TunedWRN(wrn.WideResNet):
    def __init__(self, depth=16, widen=4, classes=10, in_channels=3):
        super().__init__(depth, widen, classes, in_channels, block=TunedBlock)

    def forward(self, x, starts=None, keep=1.0):
        """`starts`: a list of ints (views) or a device tensor of one start per block."""
        h = self.conv0(x)
        for i, block in enumerate(self.blocks):
            h = block(h, None if starts is None else starts[i], keep)
        return self.fc(F.relu(self.bn(h)).mean((2, 3)))


def sgd(params, fused):
    """SGD as sliceout's (momentum 0.9, Nesterov, weight decay 5e-4 on every parameter): fused
    where asked and the device allows it, else PyTorch's default (foreach on CUDA, a for-loop on
    the CPU). Returns (optimizer, what it runs as)."""
    params = list(params)
    kw = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    if fused:
        try:
            return torch.optim.SGD(params, fused=True, **kw), "fused"
        except (RuntimeError, ValueError) as e:
            return torch.optim.SGD(params, **kw), f"default (fused refused: {str(e).splitlines()[0]})"
    return torch.optim.SGD(params, **kw), "default"


def step(model, opt, x, y, starts, keep, bf16, cache=True):
    """One training step: forward under autocast when bf16, backward, SGD. Returns the loss."""
    opt.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=cache):
        loss = F.cross_entropy(model(x, starts, keep), y)
    loss.backward()
    opt.step()
    return loss


def build(variant, depth, widen, device, dtype=torch.float32, classes=10):
    """The model of `variant`, on `device` in `dtype`, in train mode, and whether its input is
    channels_last. `compiled` returns the eager module; `compile` wraps it."""
    if variant == "eager":
        return wrn.WideResNet(depth, widen, classes).to(device, dtype).train(), False
    model = TunedWRN(depth, widen, classes).to(device, dtype).train()
    return model.to(memory_format=torch.channels_last), True


def starts_as(variant, starts, device):
    """Starts as each variant takes them: ints for eager and tuned, a device tensor else."""
    if starts is None or variant in ("eager", "tuned"):
        return starts
    return torch.as_tensor(starts, dtype=torch.int64, device=device)


def compile_model(model, backend="inductor"):
    return torch.compile(model, backend=backend, fullgraph=True)


def graphs_compiled():
    """Graphs dynamo has compiled so far in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


class GraphedStep:
    """A training step captured as one CUDA graph; `starts` is the tensor the graph reads (None
    at keep 1.0)."""

    def __init__(self, model, opt, x, y, starts, keep, bf16, warmup=3):
        self.starts = starts
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                step(model, opt, x, y, starts, keep, bf16, cache=False)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # Gradients are None at capture, so the captured backward writes them rather than adds.
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                self.loss = F.cross_entropy(model(x, starts, keep), y)
            self.loss.backward()
            opt.step()

    def __call__(self, starts):
        if starts is not None:
            self.starts.copy_(starts, non_blocking=True)
        self.graph.replay()
        return self.loss
