"""A plain PyTorch Wide ResNet with SliceOut, written to match sliceout's network exactly.

Its parameter and buffer names are sliceout's tensor names (`conv0.weight`,
`block3.bn2.running_var`, `fc.bias`, ...), so a state dict moves between the two unchanged.
This is for comparison and interchange only; sliceout itself does not use PyTorch.

The network (pre-activation WRN-d-k, n = (d - 4) / 6 blocks per group):
    conv0 3x3 (in -> 16)
    groups of widths 16k, 32k, 64k; the first block of groups 2 and 3 has stride 2
      block: o = relu(bn1(h)); t = relu(bn2(conv1(o))); h' = conv2(t) + shortcut
             shortcut = 1x1 conv (stride) of o when the shape changes, else h
    relu(bn(h)) -> global average pool -> fc
SliceOut (training only): a block of width c keeps w = round(keep * c) channels (at least 1),
the channels start, start + 1, ... taken modulo c. conv1 computes only those output channels,
bn2 normalises them with their own parameters and running statistics, the result is scaled by
c / w, and conv2 reads only those input channels. BN: eps 1e-5, momentum 0.1.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def kept_width(keep, channels):
    """w = round(keep * c), half to even like Python's round, at least 1."""
    return min(channels, max(1, round(keep * channels)))


class Block(nn.Module):
    def __init__(self, cin, c, stride):
        super().__init__()
        self.c, self.stride = c, stride
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, c, 1, stride, 0, bias=False) if (cin != c or stride != 1) else None

    def forward(self, h, start=None, keep=1.0):
        o = F.relu(self.bn1(h))
        skip = self.shortcut(o) if self.shortcut is not None else h
        width = kept_width(keep, self.c)
        if start is None or not self.training or width == self.c:
            return self.conv2(F.relu(self.bn2(self.conv1(o)))) + skip
        kept = (start + torch.arange(width, device=h.device)) % self.c
        # bn2 over the kept channels: their running statistics are updated in place.
        mean, var = self.bn2.running_mean[kept].clone(), self.bn2.running_var[kept].clone()
        t = F.conv2d(o, self.conv1.weight[kept], None, self.stride, 1)
        t = F.batch_norm(t, mean, var, self.bn2.weight[kept], self.bn2.bias[kept], True, 0.1, 1e-5)
        with torch.no_grad():
            self.bn2.running_mean[kept] = mean
            self.bn2.running_var[kept] = var
        t = F.relu(t) * (self.c / width)
        return F.conv2d(t, self.conv2.weight[:, kept], None, 1, 1) + skip


class WideResNet(nn.Module):
    def __init__(self, depth=16, widen=4, classes=10, in_channels=3, block=Block):
        """`block`: the residual block's class (peer.py's tuned variant passes its own)."""
        super().__init__()
        assert depth >= 10 and (depth - 4) % 6 == 0, "depth is 6n + 4"
        n = (depth - 4) // 6
        self.conv0 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.blocks = []
        cin = 16
        for g, c in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for j in range(n):
                b = block(cin, c, 2 if (j == 0 and g > 0) else 1)
                setattr(self, f"block{len(self.blocks)}", b)
                self.blocks.append(b)
                cin = c
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x, starts=None, keep=1.0):
        """`starts`: one slice start per block (training with SliceOut), or None."""
        h = self.conv0(x)
        for i, block in enumerate(self.blocks):
            h = block(h, None if starts is None else int(starts[i]), keep)
        return self.fc(F.relu(self.bn(h)).mean((2, 3)))
